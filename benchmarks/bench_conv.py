"""Conv kernels vs PyTorch on the conv layers of benchmark nets B and C (batch 64, float32).

    python benchmarks/bench_conv.py [--repeat 9] [--batch 64]

Prints, per layer, the median forward and backward time of `cnndsl.kernels.conv` and its ratio
to PyTorch (NCHW and channels_last, 2 threads, run in the same process), plus cnndsl's GFLOP/s.
The first layer of each net needs no dx (its input is the image), as in training. Never asserts.
The three implementations are timed in interleaved rounds, since this VM's speed drifts.

Two thread pools share the 2 cores: Numba's (OpenMP) and OpenBLAS's. Their default busy-waiting
makes each slow the other down 2x or more, so this script sets, unless already set,
OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 (both read when the libraries load).
To see the defaults: OMP_WAIT_POLICY= OPENBLAS_THREAD_TIMEOUT= python benchmarks/bench_conv.py
"""

from __future__ import annotations

import os

THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
for _key, _value in THREAD_ENV.items():
    os.environ.setdefault(_key, _value)

import argparse
import statistics
import time
from itertools import product

import numpy as np

from cnndsl.kernels import conv as K

# (name, H=W, C, F): 3×3 convs, pad 1 ("same"), stride 1
NETS = {
    "B": [("conv1", 28, 1, 32), ("conv2", 28, 32, 32), ("conv3", 14, 32, 32),
          ("conv4", 14, 32, 32)],
    "C": [("conv1", 32, 3, 64), ("conv2", 32, 64, 64), ("conv3", 16, 64, 128),
          ("conv4", 16, 128, 128), ("conv5", 8, 128, 256), ("conv6", 8, 256, 256)],
}
ONE, PAD = (1, 1, 1), (0, 1, 1)


def interleaved_medians(fns: dict, repeat: int) -> dict:
    """Median seconds of each function, timed in `repeat` rounds that call each once."""
    for fn in fns.values():
        fn()
        fn()
    times = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(ts) for key, ts in times.items()}


def ours(n, hw, c, f, need_dx):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, hw, hw, c), dtype=np.float32)
    w = rng.standard_normal((f, c, 1, 3, 3), dtype=np.float32) * 0.1
    b = rng.standard_normal(f, dtype=np.float32)
    dy = rng.standard_normal((n, 1, hw, hw, f), dtype=np.float32)
    return {"fwd": lambda: K.conv_forward(x, w, b, ONE, ONE, PAD, PAD, 1),
            "bwd": lambda: K.conv_backward(x, w, dy, ONE, ONE, PAD, PAD, 1, need_dx)}


def theirs(torch, n, hw, c, f, need_dx, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, hw, hw, generator=g).contiguous(memory_format=fmt)
    w = (torch.randn(f, c, 3, 3, generator=g) * 0.1).contiguous(memory_format=fmt)
    b = torch.randn(f, generator=g)
    dy = torch.randn(n, f, hw, hw, generator=g).contiguous(memory_format=fmt)
    conv_bwd = torch.ops.aten.convolution_backward
    mask = [need_dx, True, True]

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, b, 1, 1)

    def bwd():
        conv_bwd(dy, x, w, [f], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
    return {"fwd": fwd, "bwd": bwd}


def bench_layer(torch, n, hw, c, f, need_dx, repeat):
    """{(impl, 'fwd'|'bwd'): seconds} for impl in ours, nchw, cl (torch ones NaN without torch)."""
    fns = {("ours", k): fn for k, fn in ours(n, hw, c, f, need_dx).items()}
    if torch is not None:
        for impl, channels_last in (("nchw", False), ("cl", True)):
            fns.update({(impl, k): fn for k, fn
                        in theirs(torch, n, hw, c, f, need_dx, channels_last).items()})
    times = interleaved_medians(fns, repeat)
    return {(impl, k): times.get((impl, k), float("nan"))
            for impl in ("ours", "nchw", "cl") for k in ("fwd", "bwd")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
        print("torch not installed: cnndsl times only")

    n = args.batch
    print(f"3x3 same convs, batch {n}, float32, median of {args.repeat} after warm-up; "
          "ratio = cnndsl time / torch time (lower is better)")
    head = (f"{'layer':<9} {'in -> out':<16} {'fwd ms':>7} {'/NCHW':>6} {'/CL':>6} "
            f"{'bwd ms':>7} {'/NCHW':>6} {'/CL':>6} {'f+b /CL':>8} {'GFLOP/s':>8}")
    print(", ".join(f"{key}={os.environ[key]!r}" for key in THREAD_ENV))
    for layers in NETS.values():  # warm up caches, thread pools and scratch buffers
        for name, hw, c, f in layers:
            bench_layer(torch, n, hw, c, f, True, 1)
    for net, layers in NETS.items():
        print(f"\nnet {net}\n{head}")
        total = dict.fromkeys(product(("ours", "nchw", "cl"), ("fwd", "bwd")), 0.0)
        flops_total = 0
        for i, (name, hw, c, f) in enumerate(layers):
            need_dx = i > 0
            t = bench_layer(torch, n, hw, c, f, need_dx, args.repeat)
            flops = 2 * n * hw * hw * f * 9 * c * (1 + 1 + need_dx)
            flops_total += flops
            for key in total:
                total[key] += t[key]
            print(row(name, f"{hw}x{hw}x{c}->{f}", t, flops))
        print(row("total", "", total, flops_total))


def row(name, shape, t, flops) -> str:
    fb = t["ours", "fwd"] + t["ours", "bwd"]
    return (f"{name:<9} {shape:<16} "
            + " ".join(f"{t['ours', k] * 1e3:7.2f} {t['ours', k] / t['nchw', k]:6.2f} "
                       f"{t['ours', k] / t['cl', k]:6.2f}" for k in ("fwd", "bwd"))
            + f" {fb / (t['cl', 'fwd'] + t['cl', 'bwd']):8.2f} {flops / fb / 1e9:8.1f}")


if __name__ == "__main__":
    main()
