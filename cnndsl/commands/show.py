"""`cnndsl show`: a network's first-layer filters, its feature maps for one input, and the
input that maximises a unit, as PNG files in a folder (pictures: cnndsl.show)."""

from __future__ import annotations

import os
import re
import sys

DESCRIPTION = (
    "Write PNGs into DIR: filters.png (the first conv layer's filters); with an input "
    "(IMAGE, or --index N --data D), input.png and features_NN_LAYER.png for every conv "
    "and pool layer (a conv's output is shown before the ReLU after it); with --maximize, "
    "maximize_LAYER_CHANNEL.png, the input that maximises that unit. Without --weights, "
    "the initial weights (seed 0).")


def add_command(command) -> None:
    from cnndsl import cli

    parser = command("show", help="draw filters, feature maps and maximising inputs as PNGs",
                     description=DESCRIPTION)
    cli.add_file_arguments(parser)
    add_input_arguments(parser, "trained weights (default: the initial weights, seed 0)")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="folder for the PNGs, made if missing (default: FILE's name "
                             "with _show, here)")
    parser.add_argument("--maximize", metavar="LAYER[:CHANNEL]",
                        help="also draw the input that maximises the mean of CHANNEL "
                             "(default 0) of LAYER's output (a flat layer: that unit)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="--maximize: gradient-ascent steps (default 64)")
    parser.add_argument("--lr", type=float,
                        help="--maximize: step size, in input units per step (default 0.2)")
    cli.add_force_argument(parser, "show")
    parser.set_defaults(run=run_show)


def add_input_arguments(parser, weights_help: str) -> None:
    """IMAGE, --weights, --index and --data, as `show` and `report` take them."""
    parser.add_argument("image", nargs="?", metavar="IMAGE",
                        help="the input whose feature maps are drawn: a PNG/JPEG image "
                             "(resized and converted like predict does), or a .npy array of "
                             "the input's shape")
    parser.add_argument("--weights", metavar="W.npz", help=weights_help)
    parser.add_argument("--index", type=int, metavar="N",
                        help="use test example N of --data (default 0 when --data is given)")
    parser.add_argument("--data", metavar="D",
                        help="the dataset of --index (default: the one the weights were "
                             "trained on)")


def run_show(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl import cli
    from cnndsl.checkpoint import write_atomically
    from cnndsl.memory import check_fits

    context["path"] = args.file
    _check_flags(args)
    folder = Path(args.output or f"{Path(args.file).stem}_show")
    if folder.exists() and not folder.is_dir():
        cli._usage_error(f"-o {folder} is a file; name a folder for the PNGs")
    model, meta = _model(args)
    target = _maximize_target(args.maximize, model) if args.maximize else None
    x, source = _input(args, model, meta)
    check_fits(model.graph, model.dtype.itemsize, 1, train=target is not None)
    if x is not None or target is not None:
        cli._compile_kernels(model, 1, train=target is not None)
    pictures, lines = _pictures(model, x, source, target, args)
    if not args.weights:
        print("cnndsl: note: no --weights: showing the initial weights (seed 0); the filters "
              "are untrained", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in pictures:
        path = folder / name
        write_atomically(path, lambda handle, data=data: handle.write(data), "picture")
        print(f"wrote {path}")
    for line in lines:
        print(line)
    return 0


def _check_flags(args) -> None:
    from cnndsl import cli

    if args.image and (args.index is not None or args.data):
        cli._usage_error("give either IMAGE or --index N --data D, not both")
    if args.index is not None and args.index < 0:
        cli._usage_error(f"--index must be 0 or more, got {args.index}")
    if args.steps is not None and args.steps < 0:
        cli._usage_error(f"--steps must be 0 or more, got {args.steps}")
    if args.lr is not None and not args.lr > 0:
        cli._usage_error(f"--lr must be positive, got {args.lr}")
    if (args.steps is not None or args.lr is not None) and not args.maximize:
        cli._usage_error("--steps and --lr set the gradient ascent of --maximize")
    if args.maximize:
        _split_target(args.maximize)


def _model(args):
    """(model, weights metadata): FILE with --weights, else its initial weights."""
    from cnndsl import cli
    from cnndsl.model import Model

    if args.weights:
        return cli._trained_model(args, args.weights)
    return Model(cli.Loaded(args).graph, seed=0), {}


def _split_target(text: str) -> tuple[str, int]:
    """`LAYER[:CHANNEL]` -> (layer, channel); a usage error if it is not that."""
    from cnndsl import cli

    layer, colon, channel = text.rpartition(":")
    if not colon:
        layer, channel = text, "0"
    if not layer or not re.fullmatch(r"\d+", channel.strip()):
        cli._usage_error(f"--maximize {text}: expected LAYER or LAYER:CHANNEL, CHANNEL a "
                         f"whole number, e.g. {layer or 'conv1'}:0")
    return layer, int(channel)


def _maximize_target(text: str, model) -> tuple[str, int]:
    """`LAYER[:CHANNEL]` -> (layer, channel), checked against the model."""
    from cnndsl import show

    layer, channel = _split_target(text)
    show.check_unit(model, layer, channel)
    return layer, channel


def _input(args, model, meta):
    """(x: (1, *input) or None, what it is): IMAGE, a .npy, or a test example of --data."""
    if args.image:
        if args.image.lower().endswith(".npy"):
            return _npy_input(args.image, model), os.path.basename(args.image)
        return _image_input(args.image, model), os.path.basename(args.image)
    if args.index is None and not args.data:
        return None, None
    return _dataset_input(args, model, meta)


def _image_input(path: str, model):
    from cnndsl.data import DataError, load_images

    shape = model.input_shape
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise DataError(f"{path}: an image cannot be the input of {model.name}, whose input "
                        f"is {_fmt(shape)}",
                        hint=f"give a .npy file holding an array of shape {_fmt(shape)}, or "
                             "--index N --data D", path=path)
    images, notes = load_images([path], shape)
    for note in notes:
        print(f"cnndsl: note: {note}", file=sys.stderr)
    return images


def _npy_input(path: str, model):
    """One input from a .npy file: shape (*input) or (1, *input); a trailing channel axis
    of 1 may be left out, as datasets may."""
    import numpy as np

    from cnndsl.data import DataError
    from cnndsl.source import open_regular, printable

    want = tuple(model.input_shape)
    try:
        with open_regular(path) as handle:
            array = np.load(handle, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{printable(path)}: no such file", path=path) from None
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{printable(path)}: not a readable .npy file ({error})",
                        hint="save it with numpy.save(path, array)", path=path) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise DataError(f"{printable(path)}: holds {array.dtype}, not numbers", path=path)
    shape = array.shape[1:] if array.ndim == len(want) + 1 and array.shape[0] == 1 \
        else array.shape
    if shape + (1,) == want:
        shape = want
    if shape != want:
        raise DataError(f"{printable(path)}: holds an array of shape {_fmt(array.shape)}, but "
                        f"{model.name}'s input is {_fmt(want)}",
                        hint=f"save one input of shape {_fmt(want)}", path=path)
    x = array.reshape(1, *want).astype(model.dtype)
    if not np.isfinite(x).all():
        raise DataError(f"{printable(path)}: holds NaN or infinite values", path=path)
    return x


def _dataset_input(args, model, meta):
    from cnndsl import cli
    from cnndsl.data import DataError, load_dataset

    spec = args.data or meta.get("data")
    if not spec:
        cli._usage_error("--index needs --data D (the dataset to take test example N from)")
    data = load_dataset(spec)
    x, want = data.x_test, tuple(model.input_shape)
    if tuple(x.shape[1:]) + (1,) == want:
        x = x[..., None]
    name = data.name or data.source
    if tuple(x.shape[1:]) != want:
        raise DataError(f"{name} examples are {_fmt(x.shape[1:])} but {model.name}'s input "
                        f"is {_fmt(want)}", hint="choose a dataset of the network's input "
                        "shape, or give IMAGE", path=data.source)
    index = args.index or 0
    if index >= len(x):
        raise DataError(f"--index {index}: {name} has {len(x):,} test examples, 0.."
                        f"{len(x) - 1}", path=data.source)
    label = int(data.y_test[index])
    classes = data.classes
    what = f"{name} test example {index} ({classes[label] if label < len(classes) else label})"
    return x[index:index + 1].astype(model.dtype), what


def _pictures(model, x, source, target, args) -> tuple[list, list]:
    """([(file name, PNG bytes)], [lines to print]): everything, before anything is
    written."""
    from cnndsl import show

    pictures, lines = [], []
    grid = show.filter_grid_png(model)
    if grid is None:
        print(f"cnndsl: note: {model.name} has no conv layer: no filters.png",
              file=sys.stderr)
    else:
        pictures.append(("filters.png", grid))
    if x is None:
        print("cnndsl: note: feature maps need an input: give IMAGE (PNG/JPEG, or a .npy of "
              f"shape {_fmt(model.input_shape)}) or --index N --data D", file=sys.stderr)
    else:
        title = f"input: {source} ({_fmt(model.input_shape)})"
        pictures.append(("input.png", show.input_png(model, x, title=title)))
        maps = show.feature_map_pngs(model, x)
        digits = max(2, len(str(len(maps))))
        for number, (name, _, png) in enumerate(maps, 1):
            pictures.append((f"features_{number:0{digits}d}_{_safe(name)}.png", png))
    if target is not None:
        layer, channel = target
        steps = show.DEFAULT_STEPS if args.steps is None else args.steps
        lr = show.DEFAULT_LR if args.lr is None else args.lr
        start = show.maximize(model, layer, channel, steps=0)
        best = show.maximize(model, layer, channel, steps=steps, lr=lr)
        before, after = (show.unit_activation(model, layer, channel, v) for v in (start, best))
        title = (f"input maximising {layer} channel {channel} ({_call(model, layer)})\n"
                 f"mean activation {before:.3g} -> {after:.3g} ({steps} steps, lr {lr:g})")
        pictures.append((f"maximize_{_safe(layer)}_{channel}.png",
                         show.input_png(model, best[None], title=title, stretch=True)))
        lines.append(f"maximize {layer}:{channel}: mean activation {before:.4g} -> {after:.4g} "
                     f"in {steps} steps")
    return pictures, lines


def _call(model, layer: str) -> str:
    from cnndsl import show

    return show._call(model.graph.nodes[layer])


def _safe(name: str) -> str:
    """A layer name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
