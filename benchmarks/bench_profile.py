"""Do `cnndsl profile`'s rows add up to a measured whole step? (issue 12: within 10%)

For each network, several rounds of `cnndsl.profile.profile` in one process; per round:
the sum of the layer times, the loss and the optimizer update (the rows), the whole step
measured without the per-layer clock (same way of running: the batch whole), their
ratio, the share of each clocked step that its rows account for (the rest: the runtime's
work outside the layers and the update), a step with the clock on over one without (the
clock's own cost, within the noise), and the step as `cnndsl train` runs it (cut into
shards). Ratios are taken within one round,
whose steps are interleaved, so a busy machine slows both sides alike. Prints, never asserts.

    python benchmarks/bench_profile.py                      # lecture, fashion_2conv, vgg
    python benchmarks/bench_profile.py vgg --rounds 5 --steps 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy  # noqa: F401  (first, as users import it)

import cnndsl

VGG = ("network VGGStyle\ninput 32x32x3\n"
       "def stage(c) = (Conv(c, 3) -> ReLU) * 2 -> MaxPool(2)\n"
       "stage(64) -> stage(128) -> stage(256) -> FC(256) -> ReLU -> FC(10) -> Softmax\n")
NETS = {
    "lecture": lambda: cnndsl.load(ROOT / "examples" / "lecture.cnn"),
    "fashion_2conv": lambda: cnndsl.load(ROOT / "examples" / "fashion_2conv.cnn"),
    "vgg": lambda: cnndsl.compile(VGG),
}
STEPS = {"lecture": 20, "fashion_2conv": 12, "vgg": 8}


def clock_sees(model, batch: int, steps: int) -> float:
    """Median over clocked steps of (layers + loss + optimizer) / that same step's wall time:
    how much of a step the clock accounts for, free of step-to-step noise."""
    import statistics

    from cnndsl.optim import Adam
    from cnndsl.profile import LayerClock, _random_batch, _step

    x, labels = _random_batch(model, batch, 0)
    optimizer, fractions = Adam(model.parameters()), []
    model.data_parallel = False
    try:
        for _ in range(steps):
            clock = LayerClock()
            seconds, update = _step(model, optimizer, x, labels, clock)
            forward, backward, loss = clock.durations()
            seen = sum(forward.values()) + sum(backward.values()) + loss + update
            fractions.append(seen / seconds)
    finally:
        model.data_parallel = True
    return statistics.median(fractions)


def bench(name: str, rounds: int, steps: int | None, batch: int) -> list[float]:
    from cnndsl.profile import profile

    model = NETS[name]()
    steps = steps or STEPS[name]
    print(f"\n{name} ({model.name}), batch {batch}, {steps} timed steps per round")
    header = (f"{'round':>5}  {'layers':>9}  {'loss':>7}  {'adam':>7}  {'rows':>9}  "
              f"{'step':>9}  {'rows/step':>9}  {'clock sees':>10}  {'clock on/off':>12}  "
              f"{'normal step':>11}")
    print(header)
    print("-" * len(header))
    ratios = []
    for index in range(rounds):
        result = profile(model, batch, steps)
        ratio = result.profiled_ms / result.step_ms
        ratios.append(ratio)
        shards = f" ({result.shards} shards)" if result.cuts else " (same)"
        print(f"{index + 1:>5}  {result.layers_ms:9.2f}  {result.loss_ms:7.3f}  "
              f"{result.optimizer_ms:7.3f}  {result.profiled_ms:9.2f}  {result.step_ms:9.2f}  "
              f"{100 * ratio:8.1f}%  {100 * clock_sees(model, batch, steps):9.1f}%  "
              f"{100 * result.timed_step_ms / result.step_ms:11.1f}%  "
              f"{result.normal_step_ms:11.2f}{shards}")
    print(f"rows / measured step: {100 * min(ratios):.1f}% .. {100 * max(ratios):.1f}% "
          f"over {rounds} rounds (times in ms, medians per round)")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="*", help=f"some of {', '.join(NETS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per round (default: per net)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    unknown = [net for net in args.nets if net not in NETS]
    if unknown:
        parser.error(f"unknown network {unknown[0]}: choose from {', '.join(NETS)}")
    args.nets = args.nets or list(NETS)
    summary = {net: bench(net, args.rounds, args.steps, args.batch) for net in args.nets}
    print("\nsummary: sum of the rows / measured whole step")
    for net, ratios in summary.items():
        print(f"  {net:<14} {100 * min(ratios):6.1f}% .. {100 * max(ratios):6.1f}%")


if __name__ == "__main__":
    main()
