"""Training and inference throughput of cnndsl vs PyTorch CPU, same machine, same run.

Nets (PERF.md): A = the lecture MNIST classifier, B = [(Conv(32,3)->ReLU)*2->MaxPool(2)]*2 ->
FC(128)->ReLU->FC(10) on 28x28x1, C = a VGG-style net on 32x32x3. Training = forward,
backward and an SGD-momentum step at batch 64; inference = forward at batch 256.
Every measurement runs in its own process (so peak memory is per engine); the table shows
images/s (median of timed steps after warm-up), the ratio to PyTorch's best layout, GFLOP/s
and the peak RSS growth during the run. Prints, never asserts.

    python benchmarks/bench_train.py            # all nets
    python benchmarks/bench_train.py A B        # some
    python benchmarks/bench_train.py --import-order cnndsl B   # `import cnndsl` before numpy

Each cnndsl process imports numpy before cnndsl, as users do (`--import-order numpy`, the
default); `--import-order cnndsl` is for the A/B: speed must not depend on it (issue 16).
OpenBLAS is run with its best kernels here (OPENBLAS_CORETYPE/L2_SIZE unset, see env notes).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

# the environment as given: each engine's process starts from it
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}

NETS = {
    "A": ("input 28x28x1\nConv(10, 5, pad=valid) -> ReLU -> MaxPool(2) -> Conv(20, 5, pad=valid)"
          " -> ReLU -> MaxPool(2) -> FC(50) -> ReLU -> FC(10) -> Softmax"),
    "B": ("input 28x28x1\n[(Conv(32, 3) -> ReLU) * 2 -> MaxPool(2)] * 2 -> FC(128) -> ReLU -> "
          "FC(10) -> Softmax"),
    "C": ("input 32x32x3\n"
          "def stage(c) = (Conv(c, 3) -> ReLU) * 2 -> MaxPool(2)\n"
          "stage(64) -> stage(128) -> stage(256) -> FC(256) -> ReLU -> FC(10) -> Softmax"),
}
STEPS = {"A": 60, "B": 20, "C": 6}
TRAIN_BATCH, INFER_BATCH = 64, 256


def torch_net(net: str):
    from torch import nn

    if net == "A":
        return nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(10, 20, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(320, 50),
                             nn.ReLU(), nn.Linear(50, 10))
    layers, cin = [], 1 if net == "B" else 3
    widths = [32, 32] if net == "B" else [64, 128, 256]
    for c in widths:
        layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                   nn.ReLU(), nn.MaxPool2d(2)]
        cin = c
    flat, hidden = (32 * 7 * 7, 128) if net == "B" else (256 * 4 * 4, 256)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, count: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cnndsl(net: str, mode: str, import_order: str) -> dict:
    import importlib

    first, second = ("numpy", "cnndsl") if import_order == "numpy" else ("cnndsl", "numpy")
    importlib.import_module(first)  # (a user's script imports numpy first)
    importlib.import_module(second)
    import numpy as np

    import cnndsl
    from cnndsl.optim import SGD

    start = time.perf_counter()
    model = cnndsl.compile(NETS[net])
    batch = TRAIN_BATCH if mode == "train" else INFER_BATCH
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *model.input_shape)).astype(np.float32)
    labels = rng.integers(0, 10, size=batch)
    model.forward(x[:1])
    first_call = time.perf_counter() - start
    base = peak_rss_mb()
    if mode == "train":
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            _, _, grads = model.loss_and_grads(x, labels)
            optimizer.step(grads)
    else:
        def step():
            model.forward(x, train=False)
    seconds = timed(step, STEPS[net] if mode == "train" else max(STEPS[net] // 2, 3))
    return {"images_per_s": batch / seconds, "rss_growth_mb": peak_rss_mb() - base,
            "first_call_s": first_call}


def run_torch(net: str, mode: str, layout: str) -> dict:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torch_net(net)
    batch = TRAIN_BATCH if mode == "train" else INFER_BATCH
    shape = (batch, 1, 28, 28) if net in "AB" else (batch, 3, 32, 32)
    x = torch.randn(shape)
    labels = torch.randint(0, 10, (batch,))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    base = peak_rss_mb()
    if mode == "train":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            optimizer.zero_grad()
            loss_fn(model(x), labels).backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    seconds = timed(step, STEPS[net] if mode == "train" else max(STEPS[net] // 2, 3))
    return {"images_per_s": batch / seconds, "rss_growth_mb": peak_rss_mb() - base}


def measure(engine: str, net: str, mode: str, layout: str = "",
            import_order: str = "numpy") -> dict | None:
    command = [sys.executable, __file__, "--one", engine, net, mode, layout, import_order]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, check=False)
    if result.returncode != 0:
        print(f"  ({engine} {net} {mode} {layout} failed: {result.stderr.strip()[-300:]})")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(nets, import_order: str = "numpy") -> None:
    import cnndsl

    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        print("PyTorch is not installed: cnndsl figures only (pip install torch==2.13.0)")
    header = (f"{'net':3} {'mode':6} {'cnndsl img/s':>12} {'torch NCHW':>11} {'torch CL':>9} "
              f"{'ratio':>6} {'GFLOP/s':>8} {'cnndsl MB':>9} {'torch MB':>8} {'1st call':>8}")
    print(header)
    print("-" * len(header))
    for net in nets:
        graph = cnndsl.check_text(NETS[net])
        forward_macs = sum(n["macs"] for n in graph.nodes.values())  # per image
        for mode in ("train", "infer"):
            ours = measure("cnndsl", net, mode, import_order=import_order)
            nchw = measure("torch", net, mode, "nchw") if have_torch else None
            cl = measure("torch", net, mode, "channels_last") if have_torch else None
            best = max((r for r in (nchw, cl) if r), key=lambda r: r["images_per_s"],
                       default=None)
            flops = 2 * forward_macs * (3 if mode == "train" else 1)
            if ours is None:
                continue
            gflops = ours["images_per_s"] * flops / 1e9
            ratio = ours["images_per_s"] / best["images_per_s"] if best else float("nan")
            print(f"{net:3} {mode:6} {ours['images_per_s']:12,.0f} "
                  f"{nchw['images_per_s'] if nchw else float('nan'):11,.0f} "
                  f"{cl['images_per_s'] if cl else float('nan'):9,.0f} {ratio:6.2f} "
                  f"{gflops:8.1f} {ours['rss_growth_mb']:9.0f} "
                  f"{best['rss_growth_mb'] if best else float('nan'):8.0f} "
                  f"{ours['first_call_s']:7.2f}s")
    print(f"cnndsl processes imported {import_order} first; "
          "ratio = cnndsl / PyTorch's faster layout; MB = peak RSS growth during the run; "
          "1st call = compile + first forward in a fresh process (numba cache warm); "
          f"for scale, numpy's float32 matmul (2048²) reaches {matmul_gflops():.0f} GFLOP/s "
          "here now")


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """NumPy's float32 matmul throughput on this machine, measured now (best of `repeats`):
    the BLAS ceiling the GFLOP/s column can be read against."""
    import numpy as np

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    best = min(_seconds(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def parse_arguments(argv):
    import argparse

    parser = argparse.ArgumentParser(description="cnndsl vs PyTorch training and inference "
                                     "throughput (see the module docstring)")
    parser.add_argument("nets", nargs="*", metavar="NET",
                        help=f"nets to measure, of {', '.join(NETS)} (default: all)")
    parser.add_argument("--import-order", choices=("numpy", "cnndsl"), default="numpy",
                        help="which the cnndsl processes import first (default: numpy, as "
                        "users do)")
    arguments = parser.parse_args(argv)
    unknown = [net for net in arguments.nets if net not in NETS]
    if unknown:
        parser.error(f"unknown net {unknown[0]!r} (choose from {', '.join(NETS)})")
    return arguments


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        engine, net, mode, layout, order = sys.argv[2:7]
        out = (run_cnndsl(net, mode, order) if engine == "cnndsl"
               else run_torch(net, mode, layout))
        print(json.dumps(out))
    else:
        arguments = parse_arguments(sys.argv[1:])
        main(arguments.nets or list(NETS), arguments.import_order)
