"""The `cnndsl` command line (docs/language.md, "Command line").

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


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already gives it or it
    is an on/off flag (off by default) or has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        no_default = action.default is None or action.default is False or \
            action.default == [] or action.default == argparse.SUPPRESS
        if "default" in text or no_default or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_file_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        parser.add_argument("file", nargs="?",
                            help="the .cnn network description (default: the network stored "
                                 "in the weights file)")
    else:
        parser.add_argument("file", help="the .cnn network description")
    parser.add_argument("--set", dest="bindings", metavar="NAME=VALUE", action="append",
                        type=parse_binding, default=[],
                        help="override a 'let' binding (repeatable), e.g. --set k=3; "
                             "default: the file's own values")


def add_force_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"{what} even if the weights file was trained on a different "
                             "network (a warning names the first difference)")


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser whose positionals may follow its options, as in `show FILE
    --weights W IMAGE` or `eval --weights W FILE`: argparse's plain parse lets an optional
    positional match nothing before the first option, then refuses it after them."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls this itself
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    from cnndsl import __version__

    parser = argparse.ArgumentParser(
        prog="cnndsl", formatter_class=HelpFormatter,
        description="Check, draw, train and export convolutional networks written as text "
                    "(.cnn files). The reference: docs/language.md.")
    parser.add_argument("--version", action="version", version=f"cnndsl {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=IntermixedParser)

    def command(name, **kwargs):
        return commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)

    check = command("check", help="parse and shape-check a file; print its layers")
    add_file_arguments(check)
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (docs/language.md) instead of the table")
    check.add_argument("--rf", action="store_true",
                       help="add columns for each layer's resolved padding (before+after per "
                            "axis) and jump (input pixels between neighbouring outputs); "
                            "the receptive field (RF) is always shown")
    check.add_argument("--memory", action="store_true",
                       help="add a column for each layer's activation memory per example")
    check.add_argument("--batch", type=int, metavar="B",
                       help="batch size for the training-step activation memory and the "
                            "plan (default: the file's train block, else 64)")
    check.add_argument("--plan", action="store_true",
                       help="also print the execution plan: fused steps, buffers and their "
                            "places in one reused arena, and the planned peak memory of a "
                            "training step and of inference at --batch")
    check.add_argument("--dump-ir", action="store_true",
                       help="also print every IR node with its attributes (debugging)")
    check.set_defaults(run=run_check)

    render = command(
        "render", help="draw the network with graphviz (svg, png, pdf or dot)",
        description="Draw the network: one node per layer, the tensor shape on every edge, "
                    "repetitions and macro calls as clusters.")
    add_file_arguments(render)
    render.add_argument("-o", "--output", metavar="OUT",
                        help="output file (default: the file's name with the format's suffix, "
                             "in the current folder); the suffix picks the format")
    render.add_argument("--format", choices=FORMATS,
                        help="svg, png, pdf or dot (default: -o's suffix, else svg)")
    render.add_argument("--collapse", action="store_true",
                        help="draw each repetition once, with a ×k badge")
    render.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                        help="top to bottom (TB) or left to right (LR)")
    render.set_defaults(run=run_render)

    train = command(
        "train", help="train a network on a dataset, with a progress bar and checkpoints",
        description="Train FILE's network. Settings come from the defaults, then the file's "
                    "train { ... } block, then these flags. With --resume, the saved run's "
                    "settings and data are kept: a flag that changes one is refused unless "
                    "it is --epochs or --allow-changes is given.")
    add_file_arguments(train)
    train.add_argument("--data",
                       help="fashion-mnist, mnist, a folder of IDX files or of images per "
                            "class, or an .npz file (default: fashion-mnist; with --resume, "
                            "the saved run's)")
    train.add_argument("-o", "--output", metavar="W.npz",
                       help="weights file (default: FILE's name with .npz, here)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in the weights file exactly")
    train.add_argument("--allow-changes", action="store_true",
                       help="with --resume: accept changed settings or data (recorded in "
                            "the metrics JSON under 'changes')")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh even if the weights file exists")
    add_force_argument(train, "--resume")
    add_setting_flags(train)
    train.add_argument("--nesterov", action="store_true", default=None,
                       help="Nesterov momentum (sgd; default: off)")
    train.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="augmentation: mirror half the training images left to right "
                            "(default: off)")
    train.add_argument("--no-augment", action="store_true",
                       help="no augmentation, whatever the file's train block says")
    train.add_argument("--limit", type=int, metavar="N",
                       help="use a seeded random N of the training images and N of the test "
                            "images, for quick runs (default: all; 0 means all)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_arguments(train)
    train.set_defaults(run=run_train)

    evaluate = command("eval", help="accuracy, per-class accuracy and confusion matrix of "
                                    "trained weights on a test set")
    add_file_arguments(evaluate, optional=True)
    evaluate.add_argument("--weights", required=True, metavar="W.npz",
                          help="the trained weights (a file written by cnndsl train)")
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on)")
    add_force_argument(evaluate, "evaluate")
    evaluate.set_defaults(run=run_eval)

    predict = command("predict", help="classify image files (PNG/JPEG)")
    add_file_arguments(predict)
    predict.add_argument("--weights", required=True, metavar="W.npz",
                         help="the trained weights (a file written by cnndsl train)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    predict.add_argument("--top", type=int, default=3, help="classes shown per image")
    add_force_argument(predict, "predict")
    predict.set_defaults(run=run_predict)

    export = command(
        "export", help="write the network (and weights) as ONNX or as PyTorch source",
        description="ONNX: one file with the weights, dynamic batch axis, channels-last "
                    "input named 'input'. PyTorch: a readable nn.Module source file plus a "
                    "state_dict (.pt) beside it.")
    add_file_arguments(export)
    export.add_argument("--weights", metavar="W.npz",
                        help="trained weights (default: freshly initialised, --seed)")
    export.add_argument("--to", required=True, choices=("onnx", "pytorch"),
                        help="onnx (one .onnx file) or pytorch (OUT.py and OUT.pt)")
    export.add_argument("-o", "--output", metavar="OUT",
                        help="output file (default: FILE's name with .onnx or .py)")
    export.add_argument("--seed", type=int, default=0, help="initial weights without --weights")
    add_force_argument(export, "export")
    export.set_defaults(run=run_export)

    from importlib import import_module

    from cnndsl.commands import COMMANDS

    for name in COMMANDS:
        module = import_module(f"cnndsl.commands.{name}")
        if hasattr(module, "add_command"):
            module.add_command(command)
    return parser


TRAIN_FLAGS = [
    ("epochs", int, ("number of epochs (default 5); with --resume, a higher number extends "
                    "the run")),
    ("batch", int, "batch size (default 64)"),
    ("lr", float, "learning rate (default 0.001 for adam/adamw, 0.01 for sgd)"),
    ("optimizer", str, "sgd, adam or adamw (default adam)"),
    ("momentum", float, "SGD momentum (default 0.9)"),
    ("weight_decay", float, "L2 penalty (sgd, adam) or decoupled decay (adamw) (default 0)"),
    ("schedule", str, "learning-rate schedule per epoch: none, step or cosine (default none)"),
    ("step_size", int, "step schedule: epochs between decays (default 2)"),
    ("gamma", float, "step schedule: decay factor (default 0.1)"),
    ("seed", int, "seed of initial weights, shuffling and dropout (default 0)"),
    ("val", float, ("fraction of training images held out for validation; 0 for none "
                   "(default 0.1)")),
    # data augmentation of the training batches (cnndsl.augment)
    ("shift", int, ("augmentation: move each training image by up to N pixels along each "
                   "axis (default 0: off)")),
    ("rotate", float, ("augmentation: rotate each training image by up to DEG degrees either "
                      "way (2-D; default 0: off)")),
    ("scale", float, ("augmentation: zoom each training image by a factor in [1-S, 1+S] "
                     "(2-D; default 0: off)")),
    ("shear", float, ("augmentation: shear each training image by up to DEG degrees either way "
                     "(2-D; default 0: off)")),
    ("elastic", float, ("augmentation: elastic distortion of strength ALPHA (Simard et al. "
                       "2003: 34 for MNIST; 2-D; default 0: off)")),
    ("elastic_sigma", float, ("augmentation: smoothness of the elastic distortion in pixels "
                             "(default 4)")),
    ("fill", str, ("augmentation: what enters from outside the image: zero or edge "
                  "(default zero)")),
]
TRAIN_METAVARS = {"shift": "N", "rotate": "DEG", "scale": "S", "shear": "DEG",
                  "elastic": "ALPHA", "elastic_sigma": "SIGMA", "fill": "zero|edge"}
#: flags that are switches (on, or --no-X off)
TRAIN_SWITCHES = ("nesterov", "flip")


def add_setting_flags(parser, prefix: str = "") -> None:
    """The training-setting flags of TRAIN_FLAGS (`--epochs`, `--lr`, ...), each help text
    after `prefix` (`cnndsl sweep` says they set every trial)."""
    for flag, kind, text in TRAIN_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind,
                            help=prefix + text, metavar=TRAIN_METAVARS.get(flag))


def setting_flags(args) -> dict:
    """The training settings given as flags (TRAIN_FLAGS and TRAIN_SWITCHES), each value
    checked (`trainconfig.convert`): a usage error naming the flag if one is bad."""
    from cnndsl.trainconfig import convert

    flags = {}
    for flag in [f for f, _, _ in TRAIN_FLAGS] + list(TRAIN_SWITCHES):
        value = getattr(args, flag, None)
        if value is not None:
            try:
                flags[flag] = convert(flag, value)
            except ValueError as error:
                _usage_error(f"--{flag.replace('_', '-')}: {error}")
    return flags


class Loaded:
    """A file read and checked, with what error reporting needs."""

    def __init__(self, args, text: str | None = None, bindings: dict | None = None,
                 data: dict | None = None):
        """FILE of `args`, or (`text`, `bindings`) when given (a network stored in a
        weights file); `args.bindings` override either. `data` binds names from the data
        (`{"classes": 10}`) where nothing else does; `.data` is what it bound."""
        from cnndsl.frontend import check_text
        from cnndsl.source import read_source

        self.path = args.file
        self.text = read_source(args.file) if text is None else text
        self.bindings = {**(bindings or {}), **dict(args.bindings)}
        self.graph = check_text(self.text, self.bindings, self.path or "<string>", data)
        self.data = dict(self.graph.graph.get("data_bindings") or {})
        used = self.graph.graph.get("used_bindings", [])
        for name in dict(args.bindings):
            if name not in used:
                print(f"cnndsl: warning: --set {name}={self.bindings[name]} is not used by "
                      f"{self.path}", file=sys.stderr)


def run_check(args, context: dict) -> int:
    from cnndsl.summary import (
        Columns,
        dump_ir,
        error_json,
        format_partial_table,
        format_table,
        to_json,
    )

    context["path"] = args.file
    if args.batch is not None and args.batch < 1:
        _usage_error(f"--batch must be at least 1, got {args.batch}")
    columns = Columns(rf=args.rf, memory=args.memory)
    try:
        loaded = Loaded(args)
    except CnnDslError as error:
        # the error itself goes to stderr (main); stdout gets what did check
        partial = getattr(error, "graph", None)
        if args.json:
            print(json.dumps(error_json(error)))
        elif partial is not None:
            print(format_partial_table(partial, columns))
        raise
    if args.json:
        report = to_json(loaded.graph, args.batch)
        if args.plan:
            from cnndsl.plan.show import plan_json

            report["plan"] = plan_json(loaded.graph, report["memory"]["batch"])
        print(json.dumps(report))
    else:
        print(format_table(loaded.graph, columns, args.batch))
        if args.plan:
            from cnndsl.plan.show import format_plans
            from cnndsl.summary import training_batch

            print()
            print(format_plans(loaded.graph, training_batch(loaded.graph, args.batch)))
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
    out = _output_file(args.output or f"{Path(args.file).stem}.{fmt}")
    return out, fmt


def _output_file(path: str, make_folder: bool = False) -> str:
    """`path` if a file may be written there (its folder is made later if `make_folder`);
    a usage error naming the problem if not."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        _usage_error(f"-o {path} is a folder; name a file in it, e.g. -o "
                     f"{target / 'NAME'}{target.suffix or ''}")
    if not make_folder and not target.parent.is_dir():
        _usage_error(f"-o {path}: the folder {target.parent} does not exist")
    return path


def _add_engine_arguments(train) -> None:
    """`cnndsl train`'s engine flags (docs/language.md): the torch engine's own are None
    unless given, so the numba engine can refuse them by name."""
    train.add_argument("--engine", choices=("numba", "torch"), default="numba",
                       help="numba: cnndsl's own kernels, in this process; torch: the "
                            "generated PyTorch module, with DistributedDataParallel for "
                            "--nproc > 1 (needs 'cnndsl[torch]') (default numba)")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="torch engine: N training processes on this machine, each "
                            "with cores/N threads (default 1: one process, no "
                            "torch.distributed)")
    train.add_argument("--device", choices=("cpu", "cuda"),
                       help="torch engine: cpu (gloo between processes) or cuda (one GPU "
                            "per process, NCCL) (default cpu)")
    train.add_argument("--nnodes", type=int, metavar="N",
                       help="torch engine: machines in the job, each running this command "
                            "with the same --rdzv-endpoint (default 1)")
    train.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="torch engine: where the machines meet (torchrun's c10d "
                            "rendezvous: a port on one of them; default: a free local port)")
    train.add_argument("--rdzv-id", metavar="ID",
                       help="torch engine: the job's name at the rendezvous, the same on "
                            "every machine (default: cnndsl)")


def _usage_error(message: str):
    print(f"cnndsl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _loaded_with_classes(args, class_count, text: str | None = None,
                         bindings: dict | None = None) -> Loaded:
    """`Loaded(args, text, bindings)`; where the network uses `classes` and neither a `let`
    nor --set binds it, bound to `class_count()` (called only then: it may load a dataset)."""
    from cnndsl.evaluate import UnboundClasses

    try:
        return Loaded(args, text, bindings)
    except UnboundClasses:
        count = class_count()
    return Loaded(args, text, bindings, data={"classes": count})


class _DataClasses:
    """The class count of the dataset `spec()` names, loaded on the first call only (a
    network that binds `classes` itself never loads it here); `.dataset` keeps it."""

    def __init__(self, spec):
        self.spec, self.dataset, self.name = spec, None, None

    def __call__(self) -> int:
        return self.count(self.spec())

    def count(self, name: str) -> int:
        """The class count of the dataset `name` names (loading it)."""
        from cnndsl.data import load_dataset

        self.name, self.dataset = name, load_dataset(name)
        return len(self.dataset.classes)

    def loaded(self, name: str):
        """The dataset if it is the one `name` names (else None: load it)."""
        return self.dataset if self.name == name else None


def _train_data_spec(args) -> str:
    """The dataset `cnndsl train` will use: --data, else the resumed run's, else
    Fashion-MNIST (as run_train decides it later)."""
    from pathlib import Path

    if args.data:
        return args.data
    out = args.output or f"{Path(args.file).stem}.npz"
    if args.resume and Path(out).is_file():
        from cnndsl import checkpoint

        meta = checkpoint.load(out)[1]
        stored = meta.get("run_data") or {"data": meta.get("data")}
        return stored.get("data") or "fashion-mnist"
    return "fashion-mnist"


def run_train(args, context: dict) -> int:
    """`cnndsl train`: prepare the run (settings, data, resume), then train it on the
    chosen engine: Numba in this process, or torch here (--nproc 1) or on launched
    workers (cnndsl.ddp), each of which runs this function again as one rank."""
    from cnndsl import ddp

    if not _engine_usable(args):
        return 1
    context["path"] = args.file
    ranks = ddp.worker_ranks()  # None: this process launches the run, or is all of it
    writes = ranks is None or ranks.rank == 0
    run = _prepare_training(args, context, say=_said if ranks is None else _unsaid,
                            writes=writes)
    if isinstance(run, int):
        return run
    if args.engine == "torch" and ranks is None and ddp.is_distributed(args):
        print(_engine_line(args, args.nproc or 1, args.nnodes or 1), flush=True)
        del run  # the workers load the data themselves
        return ddp.launch(args)
    if args.engine == "torch":
        _use_torch_engine(run.trainer, args, ranks)
    else:
        _compile_kernels(run.trainer.model, run.trainer.config.batch, train=True,
                         bar=not args.no_progress)
    return _train(run, args, writes)


def _said(*lines, error: bool = False) -> None:
    for line in lines:
        print(line, file=sys.stderr if error else sys.stdout, flush=True)


def _unsaid(*lines, error: bool = False) -> None:
    """A worker of a launched run: the launcher said the run's preamble already."""


def _engine_usable(args) -> bool:
    """Refuse the torch engine's flags with the Numba engine (a usage error naming the
    flag), and say so (`cnndsl: error: ...`, False: exit 1) when the torch engine cannot
    run here (no torch; --device cuda without a GPU), before any data is loaded."""
    given = [flag for flag, dest in ENGINE_FLAGS if getattr(args, dest) is not None]
    if args.engine == "numba":
        if given:
            _usage_error(f"{given[0]} needs --engine torch (the numba engine runs in this "
                         "process, on its cores)")
        return True
    for flag, dest in (("--nproc", "nproc"), ("--nnodes", "nnodes")):
        value = getattr(args, dest)
        if value is not None and value < 1:
            _usage_error(f"{flag} must be 1 or more, got {value}")
    from cnndsl.torchengine import check_device

    try:
        check_device(args.device or "cpu")
    except CnnDslError as error:  # about this machine, not about FILE
        print(error.format(None, "cnndsl"), file=sys.stderr)
        return False
    return True


#: (flag, argparse dest) of the torch engine's own flags
ENGINE_FLAGS = [("--nproc", "nproc"), ("--device", "device"), ("--nnodes", "nnodes"),
                ("--rdzv-endpoint", "rdzv_endpoint"), ("--rdzv-id", "rdzv_id")]


class _TrainRun:
    """A prepared `cnndsl train` run: its Trainer (resumed if asked), weights file, splits."""

    def __init__(self, trainer, out: str, splits: tuple):
        self.trainer, self.out, self.splits = trainer, out, splits


def _prepare_training(args, context: dict, say=None, writes: bool = True):
    """The run `args` describe, as a _TrainRun, or an exit status (1) when the weights
    file is in the way. `say(*lines, error=)` tells the user what was decided (the
    description of the run, notes, warnings); `writes`: this process writes the weights
    and metrics files and shows progress (a launched run's rank 0 only)."""
    from pathlib import Path

    from cnndsl import checkpoint
    from cnndsl.model import Model
    from cnndsl.parser import parse
    from cnndsl.train import Trainer, check_memory, checkpoint_meta, describe_run
    from cnndsl.trainconfig import TrainConfig, program_settings

    say = say or _said
    data_classes = _DataClasses(lambda: _train_data_spec(args))
    loaded = _loaded_with_classes(args, data_classes)
    in_file = program_settings(parse(loaded.text), loaded.bindings, loaded.data)
    flags = setting_flags(args)
    if args.no_augment:
        flags.update(_augmentation_off(flags))
    if args.limit is not None and args.limit < 0:
        _usage_error(f"--limit must be 0 (all) or a number of images, got {args.limit}")
    out = _output_file(args.output or f"{Path(args.file).stem}.npz", make_folder=True)
    if Path(out).exists() and not (args.resume or args.overwrite):
        print(f"cnndsl: error: '{out}' exists; it may hold a run's weights\n"
              "hint: --resume continues it, --overwrite starts afresh, -o names another file",
              file=sys.stderr)
        return 1
    if args.resume and not Path(out).exists():
        print(f"cnndsl: error: --resume: '{out}' does not exist\n"
              "hint: name the weights file to continue with -o", file=sys.stderr)
        return 1
    if args.allow_changes and not args.resume:
        _usage_error("--allow-changes only applies with --resume")

    saved = None
    data_request = {"data": args.data, "limit": args.limit or None}
    requested = {**in_file, **flags}
    if args.resume:  # the saved run's settings and data, unless a flag or the file's
        arrays, meta = checkpoint.load(out)  # train block (edited since) changes them
        saved = (arrays, meta)
        config = TrainConfig.from_dict(meta.get("config", {}))
        saved_file = meta.get("train_block")
        requested = {**{k: v for k, v in in_file.items()
                        if saved_file is None or saved_file.get(k) != v}, **flags}
        stored_data = meta.get("run_data") or {"data": meta.get("data")}
        if args.data is None:
            data_request["data"] = stored_data.get("data")
        if args.limit is None:
            data_request["limit"] = stored_data.get("limit")
    else:
        config = TrainConfig()
    for name, value in requested.items():
        setattr(config, name, value)
    data_request["data"] = data_request["data"] or "fashion-mnist"

    _check_augmentation(config, loaded.graph, flags)
    model = Model(loaded.graph, seed=config.seed)
    data, splits, limited = _training_data(data_request, config, model,
                                           data_classes.loaded(data_request["data"]))
    say(*(f"cnndsl: warning: {warning}" for warning in data.warnings), error=True)
    if loaded.data:
        say(f"cnndsl: note: classes = {loaded.data['classes']}, the class count of "
            f"{data.dataset.name or data.dataset.source}", error=True)
    # what the data bound is kept with the bindings: `eval --weights` rebuilds this network
    meta = checkpoint_meta(model, text=loaded.text, bindings={**loaded.data, **loaded.bindings},
                           classes=data.dataset.classes, data=data_request["data"],
                           limit=data_request["limit"], fingerprint=data.fingerprint)
    progress = False if args.no_progress or not writes else None  # None: a bar on a terminal
    # the checkpoint at `out` and the metrics beside it: ModelCheckpoint and MetricsFiles
    trainer = Trainer(model, config, splits, out if writes else None, meta,
                      progress_bar=progress,
                      log=(lambda line: print(line, flush=True)) if writes else None)
    if saved is not None:
        changes = _resume_changes(saved[1], config, meta["run_data"], out, args)
        trainer.resume(out, *saved, changes=changes, force=args.force, warn=_warn)
        say(f"resuming {out}: {trainer.state.epoch} of {config.epochs} epochs done"
            + (f", batch {trainer.state.step} of the next" if trainer.state.step else ""))
        say(*(f"cnndsl: note: {change['setting']} changed from {change['from']} to "
              f"{change['to']} (recorded in the metrics)" for change in changes), error=True)
    x_tr, x_val = splits[0], splits[2]
    check_memory(model, min(config.batch, max(1, len(x_tr))), train=True)
    say(describe_run(model, config, f"{data.dataset.source}{limited}", len(x_tr), len(x_val)))
    return _TrainRun(trainer, out, splits)


def _engine_line(args, processes: int, nodes: int) -> str:
    """What the torch engine will run on, said before training."""
    device = args.device or "cpu"
    backend = ("nccl" if device == "cuda" else "gloo") if processes * nodes > 1 else None
    where = f"{processes} process{'es' if processes != 1 else ''}" + (
        f" on each of {nodes} nodes" if nodes > 1 else "")
    return f"engine: torch on {device}, {where}" + (f" ({backend})" if backend else "")


def _use_torch_engine(trainer, args, ranks) -> None:
    """Put the trainer's steps on the torch engine: this process alone (`ranks` None) or
    as one rank of a launched job."""
    from cnndsl.torchengine import TorchEngine

    if ranks is None:
        print(_engine_line(args, 1, 1), flush=True)
    trainer.use_engine(TorchEngine(trainer.model, trainer.optimizer, trainer.config,
                                   device=args.device or "cpu", ranks=ranks))


def _train(run: _TrainRun, args, writes: bool) -> int:
    """Run the prepared trainer; say how it ended (if this process `writes`)."""
    from cnndsl.train import Interrupted, metrics_paths

    trainer, out = run.trainer, run.out
    try:
        state = trainer.run()
    except Interrupted as interrupt:
        if writes:
            print(f"\ninterrupted: saved to {out} (epoch {trainer.state.epoch + 1}, batch "
                  f"{trainer.state.step}); continue with: cnndsl train {args.file} -o {out} "
                  "--resume", file=sys.stderr)
        return 128 + interrupt.signum  # 130 for Ctrl-C, 143 for SIGTERM, as shells report
    if not writes:
        return 0
    paths = metrics_paths(out)
    if state.test:
        top5 = f", top-5 {state.test['top5']:.4f}" if "top5" in state.test else ""
        print(f"test accuracy {state.test['accuracy']:.4f}{top5} (loss "
              f"{state.test['loss']:.4f}) on {len(run.splits[4]):,} images")
    print(f"wrote {out}, {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


def _augmentation_off(flags: dict) -> dict:
    """--no-augment: every augmentation setting off; a usage error beside one that is on."""
    from cnndsl.augment import OFF

    given = [name for name in OFF if name in flags and flags[name] != OFF[name]]
    if given:
        _usage_error(f"--no-augment and --{given[0].replace('_', '-')} contradict each other")
    return dict(OFF)


def _check_augmentation(config, graph, flags: dict) -> None:
    """Refuse augmentation the network's input cannot take (the file's train block was
    checked with its location already): a usage error naming the flag that asked."""
    from cnndsl.augment import unsupported

    refused = unsupported(config, graph.graph["input_shape"])
    if refused is None:
        return
    name, message, hint = refused
    if name in flags:
        _usage_error(f"--{name.replace('_', '-')}: {message}; {hint}")
    raise CnnDslError(message, hint=hint)  # a resumed run's setting


class _TrainingData:
    """A dataset checked against the network, with its loading warnings and fingerprint."""

    def __init__(self, dataset, warnings: list[str], fingerprint: str):
        self.dataset, self.warnings, self.fingerprint = dataset, warnings, fingerprint


def _training_data(request: dict, config, model, dataset=None) -> tuple:
    """(data, (x_tr, y_tr, x_val, y_val, x_test, y_test), note): the dataset (loaded
    unless given) checked against `model`, `--limit` applied to the training and the test
    images (seeded, as `cnndsl.datasets.load(limit=)` does), the validation part held out."""
    from cnndsl.data import check_against, fingerprint, load_dataset, split_validation
    from cnndsl.datasets import limited

    dataset = dataset if dataset is not None else load_dataset(request["data"])
    warnings = check_against(dataset, model.input_shape, model.output_shape)
    x_train, y_train = dataset.x_train, dataset.y_train
    x_test, y_test = dataset.x_test, dataset.y_test
    note = ""
    limit = request["limit"]
    if limit:
        x_train, y_train, x_test, y_test = limited(x_train, y_train, x_test, y_test, limit,
                                                   config.seed)
        note = f" (--limit {limit}: {len(x_train):,} training, {len(x_test):,} test images)"
    splits = (*split_validation(x_train, y_train, config.val, config.seed), x_test, y_test)
    data = _TrainingData(dataset, warnings, fingerprint(*splits))
    return data, splits, note


def _resume_changes(meta: dict, config, run_data: dict, out: str, args) -> list[dict]:
    """The settings and data of this command that differ from the saved run's, as
    {"setting", "from", "to"}; raises a located refusal unless every one is allowed
    (`--epochs` upwards always, anything else with --allow-changes)."""
    from cnndsl.checkpoint import CheckpointError
    from cnndsl.trainconfig import TrainConfig

    saved = TrainConfig.from_dict(meta.get("config", {}))
    # the learning rate as used (a default lr depends on the optimizer)
    saved_config = {**saved.as_dict(), "lr": saved.learning_rate}
    saved_data = meta.get("run_data") or {"data": meta.get("data")}
    current = {**config.as_dict(), "lr": config.learning_rate}
    changes = []
    for name, value in current.items():
        if name in saved_config and saved_config[name] != value:
            changes.append({"setting": name, "from": saved_config[name], "to": value})
    for name in ("data", "limit"):
        if name in saved_data and saved_data[name] != run_data[name]:
            changes.append({"setting": name, "from": saved_data[name], "to": run_data[name]})
    reshuffled = any(c["setting"] in ("data", "limit", "val", "seed") for c in changes)
    if saved_data.get("fingerprint") not in (None, run_data["fingerprint"]) and not reshuffled:
        changes.append({"setting": "fingerprint", "from": saved_data["fingerprint"],
                        "to": run_data["fingerprint"]})
    progress = meta.get("progress", {})
    done, step = progress.get("epoch", 0), progress.get("step", 0)
    refused = [c for c in changes if not (c["setting"] == "epochs" and c["to"] > done)]
    if refused and not args.allow_changes:
        listed = "; ".join(_describe_change(c) for c in refused)
        raise CheckpointError(
            f"--resume: this command differs from the run saved in '{out}': {listed}",
            hint="resume with the saved settings (leave the flags out: --resume keeps them), "
                 "or add --allow-changes to continue with the new ones (recorded in the "
                 "metrics); only a higher --epochs is accepted without it")
    mid_epoch = [c for c in refused if c["setting"] in ("batch", "seed", "val", "data", "limit",
                                                        "fingerprint")]
    if mid_epoch and step:
        raise CheckpointError(
            f"--resume: '{out}' stopped in the middle of epoch {done + 1}, and "
            f"{_describe_change(mid_epoch[0])} would change that epoch's batches",
            hint="resume without that change to finish the epoch, then change it")
    return changes


def _describe_change(change: dict) -> str:
    setting = change["setting"]
    if setting == "fingerprint":
        return "the data changed since the run began (same name, other contents)"
    flag = "--" + setting.replace("_", "-")
    return f"{flag} {_show_setting(change['to'])} (saved: {_show_setting(change['from'])})"


def _show_setting(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compile_kernels(model, batch: int, train: bool, bar: bool = True) -> None:
    """Compile (or load from Numba's cache) the kernels `model` needs before its first
    batch, saying so on stderr when that takes seconds (cnndsl.train.compile_kernels, as
    `Model.fit` does), with a progress bar on a terminal unless `bar` is False."""
    from cnndsl.train import compile_kernels

    compile_kernels(model, batch, train, progress=None if bar else False)


def _warn(message: str) -> None:
    print(f"cnndsl: warning: {message}", file=sys.stderr)


def _trained_model(args, weights_path: str, class_count=None):
    """The model of FILE (or of the network stored in the weights file when FILE is not
    given) with the weights of `weights_path`, checked to be its own. A `classes` the
    network leaves unbound is `class_count(meta)` (default: the class count the weights
    were trained with, when they record it)."""
    from cnndsl import checkpoint
    from cnndsl.model import Model

    arrays, meta = checkpoint.load(weights_path)
    count = (lambda: class_count(meta)) if class_count else lambda: _trained_classes(meta)
    if args.file is None:
        text = meta.get("architecture")
        if not isinstance(text, str):
            raise checkpoint.CheckpointError(
                f"'{weights_path}' does not hold the text of its network",
                hint="name the .cnn file it was trained with: cnndsl eval FILE --weights W.npz")
        loaded = _loaded_with_classes(args, count, text, meta.get("bindings") or {})
    else:
        loaded = _loaded_with_classes(args, count)
    model = Model(loaded.graph)
    checkpoint.restore_model(model, arrays, meta, weights_path, args.force, _warn)
    return model, meta


def _trained_classes(meta: dict) -> int:
    """The class count weights were trained with (their run's `classes`, else the number of
    class names they keep); a located UnboundClasses error when they record neither."""
    from cnndsl.evaluate import CLASSES_HINT, UnboundClasses

    bound = (meta.get("bindings") or {}).get("classes")
    if bound is None and meta.get("classes"):
        bound = len(meta["classes"])
    if bound is None:
        raise UnboundClasses("unbound name 'classes' (the number of classes): the weights "
                             "do not record their class count", hint=CLASSES_HINT)
    return bound


def run_eval(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl.data import check_against, load_dataset
    from cnndsl.report import format_evaluation, plot_confusion
    from cnndsl.train import EVAL_BATCH, check_memory, evaluate

    context["path"] = args.file
    test_data = _DataClasses(None)
    # `classes` is the test data's class count where the network leaves it unbound
    model, meta = _trained_model(args, args.weights, lambda stored: test_data.count(
        args.data or stored.get("data") or "fashion-mnist"))
    spec = args.data or meta.get("data") or "fashion-mnist"
    data = test_data.loaded(spec) or load_dataset(spec)
    check_against(data, model.input_shape, model.output_shape)
    check_memory(model, min(EVAL_BATCH, max(1, len(data.x_test))), train=False)
    _compile_kernels(model, EVAL_BATCH, train=False)
    # what Model.evaluate(dataset) returns
    result = evaluate(model, data.x_test, data.y_test, EVAL_BATCH, classes=len(data.classes))
    matrix = result["confusion"]
    print(format_evaluation(matrix, data.classes, source=data.source,
                            top5=result.get("top5")))
    picture = f"{Path(args.weights).with_suffix('')}.confusion.png"
    plot_confusion(matrix, data.classes, picture)
    print(f"wrote {picture}")
    return 0


def run_predict(args, context: dict) -> int:
    import numpy as np

    from cnndsl.data import load_images
    from cnndsl.source import printable
    from cnndsl.train import EVAL_BATCH, check_memory, predict

    context["path"] = args.file
    model, meta = _trained_model(args, args.weights)
    images, notes = load_images(args.images, model.input_shape)
    for note in notes:
        print(f"cnndsl: note: {note}", file=sys.stderr)
    batch = min(EVAL_BATCH, len(images))
    check_memory(model, batch, train=False)
    _compile_kernels(model, batch, train=False)
    probs = predict(model, images, batch)  # what Model.predict returns
    classes = meta.get("classes") or [str(i) for i in range(probs.shape[1])]
    for path, row in zip(args.images, probs):
        best = np.argsort(-row)[:max(1, args.top)]
        shown = ", ".join(f"{printable(_class_name(classes, k))} {row[k]:.3f}" for k in best)
        print(f"{printable(path)}: {shown}")  # never a terminal escape from a file
    return 0


def run_export(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl import checkpoint
    from cnndsl.model import Model

    context["path"] = args.file
    loaded = Loaded(args)
    model = Model(loaded.graph, seed=args.seed)
    if args.weights:
        arrays, meta = checkpoint.load(args.weights)
        checkpoint.restore_model(model, arrays, meta, args.weights, args.force, _warn)
    suffix = ".onnx" if args.to == "onnx" else ".py"
    out = _output_file(args.output or f"{Path(args.file).stem}{suffix}")
    try:
        if args.to == "onnx":
            from cnndsl.export.onnx import to_onnx

            to_onnx(model, out)
            print(f"wrote {out}")
        else:
            from cnndsl.export.pytorch import to_pytorch

            to_pytorch(model, out)
            print(f"wrote {out} and {Path(out).with_suffix('.pt')}")
            if model.logits_name != model.output_name:
                print("note: its forward() returns the logits (for nn.CrossEntropyLoss); "
                      "predict_proba() returns the probabilities", file=sys.stderr)
    except ImportError as error:
        package = "onnx" if args.to == "onnx" else "torch==2.13.0"
        print(f"cnndsl: error: exporting to {args.to} needs the '{error.name}' package\n"
              f"hint: pip install {package}", file=sys.stderr)
        return 1
    return 0


def _class_name(classes, index) -> str:
    return str(classes[index]) if index < len(classes) else f"output {index}"


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
    except MemoryError:
        print("cnndsl: error: out of memory\nhint: a smaller --batch, a smaller network, or "
              "--limit for a quick run", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as error:  # the machine's, not cnndsl's: a full disk, a read-only folder
        print(_os_error(error), file=sys.stderr)
        return 1
    except Exception as error:  # a bug in cnndsl, not in the user's file
        if os.environ.get("CNNDSL_DEBUG"):
            raise
        print(f"cnndsl: internal error: {type(error).__name__}: {error}\n"
              "This is a bug in cnndsl; please report it with the file that caused it "
              "(CNNDSL_DEBUG=1 shows the traceback).", file=sys.stderr)
        return 3


def _os_error(error: OSError) -> str:
    """`cnndsl: error: cannot write 'out.png': No space left on device` and a hint."""
    import errno

    where = f" '{error.filename}'" if error.filename else ""
    text = f"cnndsl: error: cannot use{where}: {error.strerror or error}"
    hints = {errno.ENOSPC: "the disk is full: free some space or write elsewhere (-o)",
             errno.EACCES: "you may not write there: choose another folder (-o)",
             errno.EROFS: "the file system is read-only: write elsewhere (-o)",
             errno.EISDIR: "that is a folder: name a file (-o FOLDER/NAME)",
             errno.ENOENT: "the folder does not exist: create it or choose another"}
    hint = hints.get(error.errno)
    return text + (f"\nhint: {hint}" if hint else "")


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
