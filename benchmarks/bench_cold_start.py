"""Time to the first training step with an empty Numba cache, and with a warm one.

Each run gets a fresh NUMBA_CACHE_DIR (so nothing from cnndsl/kernels/__pycache__ or an
earlier run is reused) and starts two processes on it in turn: the first compiles every
kernel it needs from scratch ("cold"), the second loads them from the cache it left ("warm").
Each process times `import cnndsl` (+ cnndsl.model, cnndsl.optim, numba), building the model
(examples/fashion_small.cnn by default) and its first training step (loss_and_grads + an
Adam step at batch 64 on random data), then the median of a few more steps (so that fewer
specialisations can be seen to cost no speed). With `--warmup` the process calls
`cnndsl.warmup.prepare` before its first step (a phase of its own), as the CLI does.

Columns: `compiled` = cnndsl kernels and helpers compiled in the process (`before` = by the
import and the model's construction: should be 0), `sigs` = signatures of cnndsl
dispatchers in memory at the end (compiled or loaded), `files` = Numba cache files in the
cache directory before -> after. `--kernels` lists what the first cold run compiled, with
signatures and inclusive compile times, and the kernels it did not need (helpers
inlined into a kernel have no signatures of their own and are left out).

`--strategies` instead compares ways of compiling the kernels `cnndsl.warmup` finds missing,
each on a fresh cache: one after another (`prepare(processes=1)`), from 2 threads (Numba's
compiler lock serialises them), and split with a helper process (`prepare(processes=2)`,
which writes its share to the shared disk cache, where this one then loads it).
Prints, never asserts.

    python benchmarks/bench_cold_start.py              # 3 cold/warm pairs
    python benchmarks/bench_cold_start.py --runs 5 --kernels --warmup
    python benchmarks/bench_cold_start.py --net examples/lenet5.cnn
    python benchmarks/bench_cold_start.py --strategies
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NET = ROOT / "examples" / "fashion_small.cnn"
BATCH = 64
PHASES = ("import", "model", "warmup", "first step", "to first step")
STRATEGIES = ("sequential", "2 threads", "2 processes")


def cache_files(directory: str) -> int:
    """Numba cache files (index .nbi and data .nbc) under `directory`."""
    return sum(1 for p in Path(directory).rglob("*") if p.suffix in (".nbi", ".nbc"))


def _name(dispatcher) -> str:
    """module.function of a dispatcher (`.serial` marks a kernel's serial twin)."""
    func = dispatcher.py_func
    return f"{func.__module__.rsplit('.', 1)[-1]}.{func.__qualname__}"


def _ours(dispatcher) -> bool:
    return getattr(dispatcher.py_func, "__module__", "").startswith("cnndsl.")


def child(net: str, warmup: bool) -> None:
    """One process: time the phases, print a JSON line."""
    times, compiles = {}, []
    start = time.perf_counter()
    # cnndsl first, as the CLI does: it sets thread defaults before numpy loads OpenBLAS
    import cnndsl  # isort: skip
    import cnndsl.model  # isort: skip
    import numba
    import numpy as np
    from numba.core import event

    from cnndsl.optim import Adam

    class CompileTimes(event.Listener):
        """Inclusive wall time of each of our dispatchers' compilations."""

        def __init__(self):
            self.started = []

        def on_start(self, e):
            self.started.append(time.perf_counter())

        def on_end(self, e):
            seconds = time.perf_counter() - self.started.pop()
            if _ours(e.data["dispatcher"]):
                compiles.append((_name(e.data["dispatcher"]), str(e.data["args"]), seconds))

    event.register("numba:compile", CompileTimes())
    times["import"] = time.perf_counter() - start

    t = time.perf_counter()
    model = cnndsl.load(net)
    optimizer = Adam(model.parameters())
    times["model"] = time.perf_counter() - t
    before = len(compiles)

    rng = np.random.default_rng(0)
    x = rng.random((BATCH, *model.input_shape), dtype=np.float32)
    labels = rng.integers(0, int(np.prod(model.output_shape)), BATCH)

    t = time.perf_counter()
    if warmup:
        from cnndsl.warmup import prepare

        prepare(model, BATCH)
    times["warmup"] = time.perf_counter() - t

    t = time.perf_counter()
    _, _, grads = model.loss_and_grads(x, labels)
    optimizer.step(grads)
    times["first step"] = time.perf_counter() - t
    times["to first step"] = time.perf_counter() - start

    steps = []
    for _ in range(7):
        t = time.perf_counter()
        _, _, grads = model.loss_and_grads(x, labels)
        optimizer.step(grads)
        steps.append(time.perf_counter() - t)

    signatures, unused = {}, []
    for name, module in list(sys.modules.items()):
        if not name.startswith("cnndsl.kernels."):
            continue
        for attr, value in vars(module).items():
            # a Kernel (cnndsl.kernels.jit) holds two dispatchers; older code had plain ones
            ds = [value.parallel, value.serial] if hasattr(value, "serial") else [value]
            ds = [d for d in ds if isinstance(d, numba.core.registry.CPUDispatcher)
                  and d.py_func.__module__ == name]
            for d in ds:
                if d.signatures:
                    signatures[_name(d)] = [str(sig) for sig in d.signatures]
            inlined = any(d.targetoptions.get("inline") == "always" for d in ds)
            if ds and not inlined and not any(d.signatures for d in ds):
                unused.append(f"{name.rsplit('.', 1)[-1]}.{attr}")
    print(json.dumps({"times": times, "step_ms": 1000 * statistics.median(steps),
                      "before": before, "signatures": signatures, "compiles": compiles,
                      "unused": unused}))


def strategy_child(net: str, strategy: str) -> None:
    """One process on an empty cache: prepare the model's kernels by `strategy`."""
    start = time.perf_counter()
    import cnndsl  # isort: skip
    from cnndsl.warmup import MISSING, needed, prepare

    model = cnndsl.load(net)
    loaded = time.perf_counter()
    if strategy == "2 threads":  # not in cnndsl.warmup: measured no faster than sequential
        from concurrent.futures import ThreadPoolExecutor

        missing = [use for use in needed(model, BATCH) if use.state == MISSING]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda use: use.dispatcher.compile(use.argtypes), missing))
        count = len(missing)
    else:
        count = len(prepare(model, BATCH, processes=1 if strategy == "sequential" else 2))
    done = time.perf_counter()
    print(json.dumps({"prepare": done - loaded, "total": done - start, "kernels": count}))


def run_child(cache_dir: str, *args: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_strategies(net: str, runs: int) -> None:
    print(f"{'run':>3} {'strategy':12} {'kernels':>7} {'prepare s':>10} {'total s':>8}")
    results = {strategy: [] for strategy in STRATEGIES}
    for run in range(1, runs + 1):
        for strategy in STRATEGIES:
            with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache_dir:
                r = run_child(cache_dir, "--net", net, "--strategy", strategy)
            results[strategy].append(r["prepare"])
            print(f"{run:3} {strategy:12} {r['kernels']:7} {r['prepare']:10.2f} "
                  f"{r['total']:8.2f}")
    print("\nprepare (trace + compile), min-max over runs (s): " + ", ".join(
        f"{s} {min(v):.2f}-{max(v):.2f}" for s, v in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--net", default=str(NET), help="the .cnn file (default: %(default)s)")
    parser.add_argument("--warmup", action="store_true",
                        help="call cnndsl.warmup.prepare before the first step")
    parser.add_argument("--kernels", action="store_true",
                        help="list the compiled kernels and signatures of the first cold run")
    parser.add_argument("--strategies", action="store_true",
                        help="compare sequential, threaded and two-process compilation")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    net = str(Path(args.net).resolve())
    if args.child:
        if args.strategy:
            strategy_child(net, args.strategy)
        else:
            child(net, args.warmup)
        return

    print(f"{args.net}, batch {BATCH}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}, warmup={args.warmup}")
    if args.strategies:
        compare_strategies(net, args.runs)
        return
    print(f"{'run':>3} {'cache':5} " + " ".join(f"{p:>13}" for p in PHASES)
          + f" {'step ms':>8} {'before':>6} {'compiled':>8} {'sigs':>5} {'files':>11}")
    rows = {"cold": [], "warm": []}
    first_cold = None
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache_dir:
            for kind in ("cold", "warm"):
                before = cache_files(cache_dir)
                r = run_child(cache_dir, "--net", net, *(["--warmup"] * args.warmup))
                rows[kind].append(r)
                first_cold = first_cold or r
                sigs = sum(len(s) for s in r["signatures"].values())
                print(f"{run:3} {kind:5} " + " ".join(f"{r['times'][p]:13.2f}" for p in PHASES)
                      + f" {r['step_ms']:8.1f} {r['before']:6} {len(r['compiles']):8}"
                      f" {sigs:5} {before:4} ->{cache_files(cache_dir):4}")
    print("\nranges (min-max, s):")
    for kind, results in rows.items():
        cells = []
        for p in PHASES:
            values = [r["times"][p] for r in results]
            cells.append(f"{p} {min(values):.2f}-{max(values):.2f}")
        steps = [r["step_ms"] for r in results]
        print(f"  {kind}: " + ", ".join(cells) + f", step {min(steps):.1f}-{max(steps):.1f} ms")

    if args.kernels:
        print("\ncompiled by the first cold run (signatures; inclusive compile s):")
        total = {}
        for name, _, seconds in first_cold["compiles"]:
            total[name] = total.get(name, 0.0) + seconds
        for name, sigs in sorted(first_cold["signatures"].items()):
            print(f"  {name:42} {len(sigs)} sig  {total.get(name, 0.0):6.2f} s")
            for sig in sigs:
                print(f"      {sig}")
        print(f"not needed ({len(first_cold['unused'])}): " + ", ".join(first_cold["unused"]))


if __name__ == "__main__":
    main()
