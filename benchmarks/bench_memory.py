"""Peak memory of one training step: planned (cnndsl check --plan) vs measured (cnndsl) vs
PyTorch, for examples/resnet18.cnn at batch 32 on 224x224x3 by default.

Each engine runs in a process of its own (`import numpy` first, as users do): cnndsl layer
by layer as `cnndsl train` runs it, cnndsl executing the plan (cnndsl.plan.run.PlanRunner),
and PyTorch. The network is built, a seeded batch made, then the RSS is read; two training steps run (forward,
backward, SGD-momentum update: the second one has the momentum buffers too), and the peak
RSS of the process (VmHWM, reset to the present RSS after a 2-image warm-up step that
compiles the kernels) minus that baseline is the step's growth. PyTorch runs the
module cnndsl generates for the same network (the same layers and weights, channels-last
input permuted inside, as `cnndsl export --to pytorch` writes it) in training mode with
nn.CrossEntropyLoss and torch.optim.SGD. The plan's figure is the arena of activations,
kept tensors and gradients (`cnndsl.plan`), to which the table adds the parameter gradients
and the momentum buffers that a step also allocates. Prints, never asserts.

    python benchmarks/bench_memory.py                       # ResNet-18, batch 32
    python benchmarks/bench_memory.py examples/vgg16.cnn --batch 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset the process's peak RSS (VmHWM) to its present RSS (Linux: clear_refs 5), so the
    peak of a warm-up step (and of compiling kernels in it) does not count; the RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_bytes() -> int:
    return _status("VmHWM")


def batch_of(model, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, int(np.prod(model.output_shape)), batch)
    return x, y


def run_cnndsl(path: str, batch: int) -> dict:
    import numpy  # noqa: F401 - a user's import order

    import cnndsl
    from cnndsl.optim import SGD

    model = cnndsl.load(path, seed=0, classes=1000)
    x, y = batch_of(model, batch)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.loss_and_grads(x[:2], y[:2])  # compiles (or loads) the kernels: not measured
    return {**two_steps(model.loss_and_grads, optimizer, x, y), "params": model.num_params}


def two_steps(loss_and_grads, optimizer, x, y) -> dict:
    """Peak RSS growth and seconds per step of two training steps, after a reset."""
    base = reset_peak()
    started = time.perf_counter()
    for _ in range(2):
        _, _, grads = loss_and_grads(x, y)
        optimizer.step(grads)
        del grads
    return {"growth": peak_bytes() - base, "seconds": (time.perf_counter() - started) / 2}


def run_plan(path: str, batch: int) -> dict:
    """The step executed from the plan (cnndsl.plan.run.PlanRunner): values in the arena."""
    import numpy  # noqa: F401

    import cnndsl
    from cnndsl.optim import SGD
    from cnndsl.plan import lower
    from cnndsl.plan.run import PlanRunner

    model = cnndsl.load(path, seed=0, classes=1000)
    x, y = batch_of(model, batch)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    PlanRunner(model, lower(model.graph, 2, train=True)).loss_and_grads(x[:2], y[:2])
    runner = PlanRunner(model, lower(model.graph, batch, train=True))  # untouched pages
    return two_steps(runner.loss_and_grads, optimizer, x, y)


def run_torch(path: str, batch: int) -> dict:
    import numpy  # noqa: F401
    import torch

    import cnndsl
    from cnndsl.export.pytorch import state_dict
    from cnndsl.torchengine import module_class

    model = cnndsl.load(path, seed=0, classes=1000)
    x, y = batch_of(model, batch)
    module = module_class(model)()
    module.load_state_dict(state_dict(model))
    module.train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_fn(module(xt[:2]), yt[:2]).backward()  # as cnndsl's: a small warm-up step
    optimizer.zero_grad(set_to_none=True)
    base = reset_peak()
    started = time.perf_counter()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(module(xt), yt).backward()
        optimizer.step()
    return {"growth": peak_bytes() - base, "seconds": (time.perf_counter() - started) / 2}


def planned(path: str, batch: int) -> dict:
    import cnndsl
    from cnndsl.plan import lower

    graph = cnndsl.check_file(path, classes=1000)
    params = sum(node["params_count"] for node in graph.nodes.values())
    return {"training": lower(graph, batch, train=True).planned_bytes,
            "no_reuse": lower(graph, batch, train=True).unplanned_bytes,
            "inference": lower(graph, batch, train=False).planned_bytes,
            "params": params}


def in_process(engine: str, path: str, batch: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import bench_memory as b; "
            f"print(json.dumps(b.run_{engine}({path!r}, {batch})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(f"{engine} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="examples/resnet18.cnn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    plan = planned(args.file, args.batch)
    runs = {"cnndsl": [], "plan": [], "torch": []}
    for index in range(args.runs):
        order = ["cnndsl", "plan", "torch"]
        for engine in (order if index % 2 == 0 else order[::-1]):
            runs[engine].append(in_process(engine, args.file, args.batch))
            print(f"run {index + 1} {engine}: {runs[engine][-1]['growth'] / MB:,.0f} MB, "
                  f"{runs[engine][-1]['seconds']:.1f} s/step", file=sys.stderr, flush=True)
    weights = plan["params"] * 4
    print(f"\n{args.file}, one training step at batch {args.batch} (SGD with momentum); "
          f"{plan['params']:,} parameters = {weights / MB:,.0f} MB\n")
    print(f"{'':34} {'MB':>14}")
    print(f"{'planned: activations + gradients':34} {plan['training'] / MB:>14,.0f}"
          f"   (without reuse {plan['no_reuse'] / MB:,.0f})")
    print(f"{'  + parameter gradients, momentum':34} {(plan['training'] + 2 * weights) / MB:>14,.0f}")
    for engine, label in (("cnndsl", "measured: cnndsl (layer by layer)"),
                          ("plan", "measured: cnndsl, plan executed"),
                          ("torch", "measured: PyTorch 2.13")):
        growth = [r["growth"] / MB for r in runs[engine]]
        seconds = [r["seconds"] for r in runs[engine]]
        print(f"{label:34} {min(growth):>6,.0f}-{max(growth):<7,.0f}"
              f"   ({min(seconds):.1f}-{max(seconds):.1f} s per step)")
    print(f"{'planned inference (activations)':34} {plan['inference'] / MB:>14,.0f}")
    print("\nmeasured = peak RSS (VmHWM, reset after a warm-up step on 2 images) minus the RSS "
          "before the two measured steps")


if __name__ == "__main__":
    main()
