"""`cnndsl report FILE [--weights W] [IMAGE | --index N --data D] [-o OUT.html]`.

Writes one self-contained HTML page (cnndsl.htmlreport): the diagram with a tooltip per
layer, the layer table, the first conv layer's filters (trained, or initial and labelled
so) and, for one input, the feature maps of every conv and pool layer. A file that does
not check is a user error: exit 1 and nothing written.
"""

from __future__ import annotations

import sys

DESCRIPTION = (
    "Write one HTML page that shows the network: the diagram (rest the pointer on a layer "
    "for its arguments, shape, receptive field, parameters and MACs), the layer table, the "
    "first conv layer's filters and, for an input (IMAGE, or --index N of --data), the "
    "feature maps of every conv and pool layer. The page is one file: it opens without a "
    "server and loads nothing from the network.")


def add_command(command) -> None:
    import argparse

    from cnndsl import cli
    from cnndsl.commands.show import add_input_arguments

    parser = command("report", help="write one self-contained HTML page: diagram, layer "
                                     "table, filters, feature maps",
                     description=DESCRIPTION)
    cli.add_file_arguments(parser)
    add_input_arguments(parser, "trained weights (default: the initial weights of --seed, "
                                "labelled untrained on the page)")
    parser.add_argument("-o", "--output", metavar="OUT.html",
                        help="the page (default: FILE's name with .html, in the current "
                             "folder)")
    parser.add_argument("--collapse", action=argparse.BooleanOptionalAction, default=None,
                        help="draw each repetition once (default: when the network has "
                             "more than 150 layers)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights without --weights")
    cli.add_force_argument(parser, "report")
    parser.set_defaults(run=run_report)


def run_report(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl import cli
    from cnndsl.checkpoint import write_atomically
    from cnndsl.htmlreport import build_report

    context["path"] = args.file
    _check_flags(args)
    out = cli._output_file(args.output or f"{Path(args.file).stem}.html")
    loaded = cli.Loaded(args)  # a file that does not check stops here: nothing written
    pictures = _pictures(args, loaded)
    page = build_report(loaded.graph, args.file, pictures, collapse=args.collapse)
    write_atomically(out, lambda handle: handle.write(page.encode("utf-8")),
                     what="the report")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _check_flags(args) -> None:
    """The input flags as `cnndsl show` takes them: IMAGE, or --index N of --data D."""
    from cnndsl import cli

    if args.image is not None and (args.index is not None or args.data):
        cli._usage_error("give either IMAGE or --index N --data D, not both")
    if args.index is not None and args.index < 0:
        cli._usage_error(f"--index must be 0 or more, got {args.index}")


def _pictures(args, loaded):
    """The filters and feature maps, with a line saying where the weights come from."""
    from cnndsl import cli, show
    from cnndsl.commands.show import _input
    from cnndsl.htmlreport import Pictures
    from cnndsl.memory import check_fits
    from cnndsl.model import Model

    if args.weights:
        model, meta = cli._trained_model(args, args.weights)
        weights = f"Trained weights from {args.weights}{_trained_on(meta)}."
    else:
        model, meta = Model(loaded.graph, seed=args.seed), {}
        weights = (f"Initial weights (untrained, seed {args.seed}): give --weights W.npz "
                   "for what training made of them.")
    pictures = Pictures(weights=weights, trained=bool(args.weights))
    pictures.filters = show.filter_grid_png(model)
    pictures.filters_layer = show.first_conv_layer(model) or ""
    x, source = _input(args, model, meta)  # IMAGE, a .npy, or a test example, as show reads
    if x is not None:
        check_fits(model.graph, model.dtype.itemsize, 1)
        cli._compile_kernels(model, 1, train=False)
        pictures.input_label = source
        pictures.input_image = show.input_png(
            model, x, title=f"input: {source} ({'x'.join(map(str, model.input_shape))})")
        pictures.feature_maps = show.feature_map_pngs(model, x)
    return pictures


def _trained_on(meta: dict) -> str:
    data = meta.get("data")
    return f" (trained on {data})" if isinstance(data, str) and data else ""
