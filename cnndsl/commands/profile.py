"""`cnndsl profile FILE`: measured per-layer time, GFLOP/s and memory of a training step.

The measuring is cnndsl.profile's; this module is the command line around it.
"""

from __future__ import annotations

import json
import sys


def add_command(command) -> None:
    from cnndsl import cli

    parser = command(
        "profile", help="measure each layer's forward and backward time in a training step",
        description="Run training steps of FILE's network on random data (seeded) and print, "
                    "per layer, the median forward and backward time, its share of the step, "
                    "GFLOP/s and activation memory; then the loss, the optimizer update, and "
                    "a whole step measured without the per-layer clock. The weights are "
                    "freshly initialised and no file is written.")
    cli.add_file_arguments(parser)
    parser.add_argument("--batch", type=int, default=64, metavar="B",
                        help="examples per step")
    parser.add_argument("--steps", type=int, default=10, metavar="N",
                        help="timed steps (after 2 untimed warm-up steps); the table shows "
                             "medians")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (docs/language.md) instead of the table")
    parser.set_defaults(run=run_profile)


def run_profile(args, context: dict) -> int:
    from cnndsl import cli

    context["path"] = args.file
    if args.batch < 1:
        cli._usage_error(f"--batch must be at least 1, got {args.batch}")
    if args.steps < 1:
        cli._usage_error(f"--steps must be at least 1, got {args.steps}")
    loaded = cli.Loaded(args)

    from cnndsl.memory import check_fits
    from cnndsl.model import Model
    from cnndsl.profile import WARMUP_STEPS, profile

    model = Model(loaded.graph)
    # refused with its size, before the first step, if a step cannot fit in memory
    check_fits(model.graph, model.dtype.itemsize, args.batch, train=True)
    print(f"profiling {model.name} at batch {args.batch}: {WARMUP_STEPS} warm-up steps, then "
          f"{args.steps} timed ...", file=sys.stderr, flush=True)
    result = profile(model, args.batch, args.steps,
                     prepare=lambda m, batch: cli._compile_kernels(m, batch, train=True))
    print(json.dumps(result.to_json()) if args.json else result.format_table())
    return 0
