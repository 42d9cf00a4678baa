"""The `cnndsl` command line (LANGUAGE.md §6).

Exit status: 0 valid, 1 an error in the user's file or data, 2 a usage error.
A user never sees a traceback: errors in their file are printed as
`FILE:LINE:COL: error: ...` with the source line and a caret; anything else is reported
as an internal error (set CNNDSL_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from cnndsl.errors import CnnDslError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_binding(text: str) -> tuple[str, int]:
    """`k=2` -> ("k", 2); used as an argparse type, so a bad one is a usage error."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not NAME_RE.match(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{name}' must be bound to a whole number, got '{value}'") from None


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the .cnn network description")
    parser.add_argument("--set", dest="bindings", metavar="NAME=VALUE", action="append",
                        type=parse_binding, default=[],
                        help="override a 'let' binding (repeatable), e.g. --set k=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnndsl", description="Check, draw, train and export convolutional networks "
                                   "written as text (.cnn files).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="parse and shape-check a file; print its layers")
    add_file_arguments(check)
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (LANGUAGE.md §6) instead of the table")
    check.add_argument("--dump-ir", action="store_true",
                       help="also print every IR node with its attributes (debugging)")
    check.set_defaults(run=run_check)

    render = commands.add_parser(
        "render", help="draw the network with graphviz (svg, png, pdf or dot)",
        description="Draw the network: one node per layer, the tensor shape on every edge, "
                    "repetitions and macro calls as clusters.")
    add_file_arguments(render)
    render.add_argument("-o", "--output", metavar="OUT",
                        help="output file (default: the file's name with the format's suffix, "
                             "in the current folder); the suffix picks the format")
    render.add_argument("--format", choices=FORMATS, help="svg (default), png, pdf or dot")
    render.add_argument("--collapse", action="store_true",
                        help="draw each repetition once, with a ×k badge")
    render.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                        help="top to bottom (default) or left to right")
    render.set_defaults(run=run_render)

    train = commands.add_parser(
        "train", help="train a network on a dataset, with a progress bar and checkpoints",
        description="Train FILE's network. Settings come from the defaults, then the file's "
                    "train { ... } block, then these flags.")
    add_file_arguments(train)
    train.add_argument("--data", default="fashion-mnist",
                       help="fashion-mnist, mnist, a folder of IDX files or of images per "
                            "class, or an .npz file (default: fashion-mnist)")
    train.add_argument("-o", "--output", metavar="W.npz",
                       help="weights file (default: FILE's name with .npz, here)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in the weights file exactly")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh even if the weights file exists")
    for flag, kind, text in TRAIN_FLAGS:
        train.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    train.add_argument("--nesterov", action="store_true", default=None,
                       help="Nesterov momentum (sgd)")
    train.add_argument("--limit", type=int, metavar="N",
                       help="train on a seeded random N of the training images (quick runs)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser("eval", help="accuracy, per-class accuracy and confusion "
                                                "matrix of trained weights on a test set")
    add_file_arguments(evaluate)
    evaluate.add_argument("--weights", required=True, metavar="W.npz")
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on)")
    evaluate.set_defaults(run=run_eval)

    predict = commands.add_parser("predict", help="classify image files (PNG/JPEG)")
    add_file_arguments(predict)
    predict.add_argument("--weights", required=True, metavar="W.npz")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top", type=int, default=3, help="classes shown per image")
    predict.set_defaults(run=run_predict)

    export = commands.add_parser(
        "export", help="write the network (and weights) as ONNX or as PyTorch source",
        description="ONNX: one file with the weights, dynamic batch axis, channels-last "
                    "input named 'input'. PyTorch: a readable nn.Module source file plus a "
                    "state_dict (.pt) beside it.")
    add_file_arguments(export)
    export.add_argument("--weights", metavar="W.npz",
                        help="trained weights (default: freshly initialised, --seed)")
    export.add_argument("--to", required=True, choices=("onnx", "pytorch"))
    export.add_argument("-o", "--output", metavar="OUT",
                        help="output file (default: FILE's name with .onnx or .py)")
    export.add_argument("--seed", type=int, default=0, help="initial weights without --weights")
    export.set_defaults(run=run_export)
    return parser


TRAIN_FLAGS = [
    ("epochs", int, "number of epochs"), ("batch", int, "batch size"),
    ("lr", float, "learning rate (default 0.001 for adam/adamw, 0.01 for sgd)"),
    ("optimizer", str, "sgd, adam or adamw (default adam)"),
    ("momentum", float, "SGD momentum (default 0.9)"),
    ("weight_decay", float, "L2 penalty (sgd, adam) or decoupled decay (adamw)"),
    ("schedule", str, "learning-rate schedule per epoch: none, step or cosine"),
    ("step_size", int, "step schedule: epochs between decays (default 2)"),
    ("gamma", float, "step schedule: decay factor (default 0.1)"),
    ("seed", int, "seed of initial weights, shuffling and dropout (default 0)"),
    ("val", float, "fraction of training images held out for validation (default 0.1)"),
]


class Loaded:
    """A file read and checked, with what error reporting needs."""

    def __init__(self, args):
        from cnndsl.frontend import check_text
        from cnndsl.source import read_source

        self.path = args.file
        self.text = None
        self.text = read_source(args.file)
        self.bindings = dict(args.bindings)
        self.graph = check_text(self.text, self.bindings)
        used = self.graph.graph.get("used_bindings", [])
        for name in self.bindings:
            if name not in used:
                print(f"cnndsl: warning: --set {name}={self.bindings[name]} is not used by "
                      f"{self.path}", file=sys.stderr)


def run_check(args, context: dict) -> int:
    from cnndsl.summary import dump_ir, format_table, to_json

    context["path"] = args.file
    loaded = Loaded(args)
    if args.json:
        print(json.dumps(to_json(loaded.graph)))
    else:
        print(format_table(loaded.graph))
        if args.dump_ir:
            print()
            print(dump_ir(loaded.graph))
    return 0


FORMATS = ("svg", "png", "pdf", "dot")


def run_render(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl.render import render_to_file

    context["path"] = args.file
    out, fmt = _render_target(args)
    outcome = render_to_file(args.file, args.bindings, out, fmt, collapse=args.collapse,
                             rankdir=args.rankdir)
    if outcome.missing_dot:
        print(f"cnndsl: error: the graphviz 'dot' program is not installed, so {fmt.upper()} "
              f"cannot be made; wrote the diagram's source to {outcome.written}\n"
              "hint: install graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
              f"install graphviz), then run again, or run: dot -T{fmt} {outcome.written} -o "
              f"{Path(out).name}", file=sys.stderr)
        return 1
    if outcome.error is not None:
        print(outcome.error.format(outcome.text, args.file), file=sys.stderr)
        print(f"cnndsl: wrote {outcome.written}, drawn up to the error", file=sys.stderr)
        return 1
    print(f"wrote {outcome.written}", file=sys.stderr)
    return 0


def _render_target(args) -> tuple[str, str]:
    from pathlib import Path

    suffix = Path(args.output).suffix.lstrip(".").lower() if args.output else ""
    if args.format and suffix in FORMATS and suffix != args.format:
        _usage_error(f"-o {args.output} has the suffix .{suffix} but --format is {args.format}")
    if args.output and not args.format and suffix not in FORMATS:
        _usage_error(f"cannot tell the format of -o {args.output}: use a .svg, .png, .pdf or "
                     ".dot suffix, or --format")
    fmt = args.format or suffix or "svg"
    out = args.output or f"{Path(args.file).stem}.{fmt}"
    return out, fmt


def _usage_error(message: str):
    print(f"cnndsl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_train(args, context: dict) -> int:
    from pathlib import Path

    import numpy as np

    from cnndsl.data import check_against, load_dataset, split_validation
    from cnndsl.model import Model
    from cnndsl.parser import parse
    from cnndsl.train import Interrupted, Trainer, metrics_paths
    from cnndsl.trainconfig import convert, from_program

    context["path"] = args.file
    loaded = Loaded(args)
    config = from_program(parse(loaded.text), loaded.bindings)
    for flag in [f for f, _, _ in TRAIN_FLAGS] + ["nesterov"]:
        value = getattr(args, flag)
        if value is not None:
            try:
                setattr(config, flag, convert(flag, value))
            except ValueError as error:
                _usage_error(f"--{flag.replace('_', '-')}: {error}")
    out = args.output or f"{Path(args.file).stem}.npz"
    if Path(out).exists() and not (args.resume or args.overwrite):
        print(f"cnndsl: error: '{out}' exists; it may hold a run's weights\n"
              "hint: --resume continues it, --overwrite starts afresh, -o names another file",
              file=sys.stderr)
        return 1
    if args.resume and not Path(out).exists():
        print(f"cnndsl: error: --resume: '{out}' does not exist\n"
              "hint: name the weights file to continue with -o", file=sys.stderr)
        return 1

    data = load_dataset(args.data)
    model = Model(loaded.graph, seed=config.seed)
    for warning in check_against(data, model.input_shape, model.output_shape):
        print(f"cnndsl: warning: {warning}", file=sys.stderr)
    x_train, y_train = data.x_train, data.y_train
    if args.limit:
        keep = np.random.default_rng(config.seed).permutation(len(x_train))[:args.limit]
        x_train, y_train = x_train[np.sort(keep)], y_train[np.sort(keep)]
    x_tr, y_tr, x_val, y_val = split_validation(x_train, y_train, config.val, config.seed)
    meta = {"architecture": loaded.text, "bindings": loaded.bindings, "name": model.name,
            "classes": list(data.classes), "data": args.data,
            "input_shape": list(model.input_shape)}
    trainer = Trainer(model, config, (x_tr, y_tr, x_val, y_val, data.x_test, data.y_test),
                      out, meta, progress_bar=not args.no_progress and sys.stderr.isatty(),
                      log=lambda line: print(line, flush=True))
    if args.resume:
        trainer.resume(out)
        print(f"resuming {out}: {trainer.state.epoch} of {config.epochs} epochs done"
              + (f", batch {trainer.state.step} of the next" if trainer.state.step else ""))
    print(f"training {model.name} ({model.num_params:,} parameters) on {data.source}: "
          f"{len(x_tr):,} images, {len(x_val):,} held out, {config.epochs} epochs, "
          f"{config.optimizer} lr {config.learning_rate:g}, batch {config.batch}, "
          f"seed {config.seed}", flush=True)
    try:
        state = trainer.run()
    except Interrupted:
        print(f"\ninterrupted: saved to {out} (epoch {trainer.state.epoch + 1}, batch "
              f"{trainer.state.step}); continue with: cnndsl train {args.file} -o {out} "
              "--resume", file=sys.stderr)
        return 130
    paths = metrics_paths(out)
    if state.test:
        print(f"test accuracy {state.test['accuracy']:.4f} (loss {state.test['loss']:.4f}) "
              f"on {len(data.x_test):,} images")
    print(f"wrote {out}, {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def _trained_model(args):
    """The model of FILE with the weights of --weights (checked to be its own)."""
    from cnndsl import checkpoint
    from cnndsl.model import Model

    loaded = Loaded(args)
    arrays, meta = checkpoint.load(args.weights)
    model = Model(loaded.graph)
    checkpoint.restore_model(model, arrays, args.weights)
    return model, meta


def run_eval(args, context: dict) -> int:
    from pathlib import Path

    import numpy as np

    from cnndsl.data import check_against, load_dataset
    from cnndsl.report import confusion_matrix, format_evaluation, plot_confusion
    from cnndsl.train import predict_proba

    context["path"] = args.file
    model, meta = _trained_model(args)
    data = load_dataset(args.data or meta.get("data") or "fashion-mnist")
    check_against(data, model.input_shape, model.output_shape)
    probs = np.concatenate([predict_proba(model, data.x_test[i:i + 500])
                            for i in range(0, len(data.x_test), 500)])
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(data.y_test, predicted, len(data.classes))
    print(format_evaluation(matrix, data.classes, source=data.source))
    picture = f"{Path(args.weights).with_suffix('')}.confusion.png"
    plot_confusion(matrix, data.classes, picture)
    print(f"wrote {picture}")
    return 0


def run_predict(args, context: dict) -> int:
    import numpy as np

    from cnndsl.data import load_images
    from cnndsl.train import predict_proba

    context["path"] = args.file
    model, meta = _trained_model(args)
    images, notes = load_images(args.images, model.input_shape)
    for note in notes:
        print(f"cnndsl: note: {note}", file=sys.stderr)
    probs = predict_proba(model, images)
    classes = meta.get("classes") or [str(i) for i in range(probs.shape[1])]
    for path, row in zip(args.images, probs):
        best = np.argsort(-row)[:max(1, args.top)]
        shown = ", ".join(f"{_class_name(classes, k)} {row[k]:.3f}" for k in best)
        print(f"{path}: {shown}")
    return 0


def run_export(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl import checkpoint
    from cnndsl.model import Model

    context["path"] = args.file
    loaded = Loaded(args)
    model = Model(loaded.graph, seed=args.seed)
    if args.weights:
        arrays, _ = checkpoint.load(args.weights)
        checkpoint.restore_model(model, arrays, args.weights)
    suffix = ".onnx" if args.to == "onnx" else ".py"
    out = args.output or f"{Path(args.file).stem}{suffix}"
    try:
        if args.to == "onnx":
            from cnndsl.export.onnx import to_onnx

            to_onnx(model, out)
            print(f"wrote {out}")
        else:
            from cnndsl.export.pytorch import to_pytorch

            to_pytorch(model, out)
            print(f"wrote {out} and {Path(out).with_suffix('.pt')}")
    except ImportError as error:
        package = "onnx" if args.to == "onnx" else "torch==2.13.0"
        print(f"cnndsl: error: exporting to {args.to} needs the '{error.name}' package\n"
              f"hint: pip install {package}", file=sys.stderr)
        return 1
    return 0


def _class_name(classes, index) -> str:
    return classes[index] if index < len(classes) else f"output {index}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    context: dict = {}
    try:
        return args.run(args, context)
    except CnnDslError as error:
        from cnndsl.checkpoint import CheckpointError
        from cnndsl.data import DataError
        from cnndsl.source import FileError

        path = context.get("path") or "<input>"
        if isinstance(error, (DataError, CheckpointError)):
            path = "cnndsl"  # data and weights errors name their file in the message
        text = None if isinstance(error, FileError) else _source_for(context.get("path"))
        print(error.format(text, path), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnndsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug in cnndsl, not in the user's file
        if os.environ.get("CNNDSL_DEBUG"):
            raise
        print(f"cnndsl: internal error: {type(error).__name__}: {error}\n"
              "This is a bug in cnndsl; please report it with the file that caused it "
              "(CNNDSL_DEBUG=1 shows the traceback).", file=sys.stderr)
        return 3


def _source_for(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
