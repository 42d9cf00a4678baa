"""`cnndsl sweep FILE`: train a family of networks (let bindings and training settings) on
Ray Tune and compare them.

The candidates, their checking, the trials and the results are cnndsl.sweep's; this module
is the command line around them: the flags, the sweep folder (`-o`, `--resume`), the data,
and what is printed.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def add_command(command) -> None:
    from cnndsl import cli

    parser = command(
        "sweep", help="train many variants of a network (grid or random search) on Ray Tune",
        description="Train FILE's network once per candidate: every combination of the "
                    "--grid values, times --random draws from the --range ranges. A name is a "
                    "'let' binding of FILE or a training setting. Every candidate is "
                    "shape-checked first; those that do not check are listed with their "
                    "error and never run. Trials run on Ray Tune (a local Ray started for "
                    "the sweep, one trial per core, unless --address names a cluster), each "
                    "being cnndsl train's own training loop. Results: OUT/results.csv and "
                    ".json, OUT/pareto.png, and the best trial's weights OUT/best.npz. Needs "
                    "the extra: pip install 'cnndsl[sweep]'.")
    cli.add_file_arguments(parser)
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="values to try for a binding or setting (repeatable; every "
                             "combination is tried), e.g. --grid k=1,2,3 --grid "
                             "optimizer=sgd,adam (default: none)")
    parser.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH[:log]",
                        help="a range that --random draws from (repeatable), uniform or "
                             "log-uniform (:log); whole numbers for bindings and whole-number "
                             "settings, e.g. --range lr=1e-4:1e-2:log (default: none)")
    parser.add_argument("--random", type=int, default=0, metavar="N",
                        help="draws from the --range ranges per --grid combination (seeded "
                             "by --seed)")
    parser.add_argument("--metric", choices=("val_acc", "val_loss", "acc", "loss"),
                        default=None, help="what trials are ranked by, at their best epoch "
                                           "(default val_acc)")
    parser.add_argument("--early-stop", action="store_true", default=None,
                        help="stop poor trials early (Ray Tune's ASHA scheduler, one rung "
                             "per epoch)")
    parser.add_argument("--data",
                        help="dataset, as cnndsl train takes it (default fashion-mnist)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="a seeded random N of the training and N of the test images "
                             "(the same for every trial; default all)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the sweep's folder (default: FILE's name with .sweep, here)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep saved in OUT: run only the trials that did "
                             "not finish (its flags are kept; a different one is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if OUT holds a sweep")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="join an existing Ray cluster: auto (the one started here with "
                             "`ray start`) or ray://HOST:PORT (default: start a local Ray "
                             "for the sweep)")
    parser.add_argument("--storage", metavar="PATH|URI",
                        help="where Ray Tune keeps trial folders and checkpoints: on a "
                             "cluster, a folder every node can reach or a cloud URI "
                             "(default: OUT/ray)")
    parser.add_argument("--threads-per-trial", type=int, default=None, metavar="T",
                        help="CPU threads of each trial (default 1: one trial per core, "
                             "measured fastest; T = cores runs trials one after another)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar over the trials")
    cli.add_setting_flags(parser, prefix="every trial: ")
    parser.add_argument("--nesterov", action="store_true", default=None,
                        help="every trial: Nesterov momentum (sgd)")
    parser.add_argument("--flip", action="store_true", default=None,
                        help="every trial: augmentation, mirror half the training images")
    parser.set_defaults(run=run_sweep)


#: flags whose values make up a sweep's spec (what --resume keeps and compares)
SPEC_FLAGS = ("grid", "range", "random", "metric", "early_stop", "data", "limit")
SPEC_DEFAULTS = {"grid": [], "range": [], "random": 0, "metric": "val_acc",
                 "early_stop": False, "data": "fashion-mnist", "limit": None}


#: threads per trial: one trial per core (measured fastest: README, Scaling out)
DEFAULT_THREADS = 1


def run_sweep(args, context: dict) -> int:
    from cnndsl import cli
    from cnndsl.source import read_source
    from cnndsl.sweep import space
    from cnndsl.sweep.results import SweepRecord, check_spec

    context["path"] = args.file
    text = read_source(args.file)
    out = Path(args.output or f"{Path(args.file).stem}.sweep")
    if out.exists() and not out.is_dir():
        cli._usage_error(f"-o {out} is a file; the sweep's results go to a folder")
    saved = out / "results.json"
    if args.resume and not saved.exists():
        print(f"cnndsl: error: --resume: '{out}' holds no sweep\nhint: run it without "
              "--resume first, or name its folder with -o", file=sys.stderr)
        return 1
    if saved.exists() and not (args.resume or args.overwrite):
        print(f"cnndsl: error: '{out}' holds a sweep\nhint: --resume continues it, "
              "--overwrite starts afresh, -o names another folder", file=sys.stderr)
        return 1

    given = _given(args, text, cli)
    if args.resume:
        record = SweepRecord.load(out)
        check_spec(record.spec, {k: v for k, v in given.items() if k != "file_sha256"}, out)
        spec = dict(record.spec)
        if spec.get("file_sha256") != given["file_sha256"]:
            raise _changed_file(args.file, out)
    else:
        spec = {**SPEC_DEFAULTS, "settings": {}, "set": {}, **given}

    try:
        grids = [space.parse_grid(g) for g in spec["grid"]]
        ranges = [space.parse_range(r) for r in spec["range"]]
        candidates = space.candidates(grids, ranges, spec["random"],
                                      spec["settings"].get("seed", 0), _let_names(text))
    except space.SweepUsage as error:
        cli._usage_error(str(error))
    if not candidates[0].values:
        cli._usage_error("nothing to sweep: give --grid NAME=V1,V2 or --random N with "
                         "--range NAME=LOW:HIGH")
    _check_values(args, spec, cli)
    return _sweep(args, text, out, spec, candidates, record if args.resume else None)


def _given(args, text: str, cli) -> dict:
    """The sweep's flags as given (what --resume compares with the saved sweep), and the
    file's text as a hash."""
    given = {name: getattr(args, name) for name in SPEC_FLAGS
             if getattr(args, name) not in (None, [], 0)}
    settings = cli.setting_flags(args)
    if settings:
        given["settings"] = settings
    if args.bindings:
        given["set"] = dict(args.bindings)
    given["file_sha256"] = _sha(text)
    return given


#: what a sweep writes in its folder (an --overwrite removes them first, so no result,
#: plot or weights file of the previous sweep is left to be taken for this one's)
OUTPUTS = ("results.json", "results.csv", "pareto.png", "best.npz", "trials")


def _clear(out: Path, own_storage: bool) -> None:
    import shutil

    for name in OUTPUTS + (("ray",) if own_storage else ()):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _changed_file(path: str, out: Path):
    from cnndsl.errors import CnnDslError

    return CnnDslError(f"--resume: {path} changed since the sweep in '{out}' began",
                       hint="its finished trials trained another network: start a new sweep "
                            "with -o OTHER or --overwrite")


def _check_values(args, spec: dict, cli) -> None:
    if spec["random"] < 0:
        cli._usage_error(f"--random must be at least 1, got {spec['random']}")
    if spec["limit"] is not None and spec["limit"] < 0:
        cli._usage_error(f"--limit must be 0 (all) or a number of images, got {spec['limit']}")
    if args.threads_per_trial is not None and args.threads_per_trial < 1:
        cli._usage_error(f"--threads-per-trial must be at least 1, got "
                         f"{args.threads_per_trial}")
    if spec["metric"].startswith("val_") and spec["settings"].get("val") == 0:
        cli._usage_error(f"--metric {spec['metric']} needs a validation split, but --val is 0")


def _let_names(text: str) -> list[str]:
    from cnndsl import ast
    from cnndsl.parser import parse

    return [b.name for s in parse(text).statements if isinstance(s, ast.LetStmt)
            for b in s.bindings]


def _sweep(args, text: str, out: Path, spec: dict, candidates, record) -> int:
    from cnndsl.sweep import space, trials
    from cnndsl.sweep.results import METRICS, SweepRecord

    trials.import_tune()  # before any data is loaded: say how to install Ray first
    dataset, data_bindings = _dataset(spec, candidates)
    space.check_candidates(candidates, text, args.file, spec["set"], spec["settings"],
                           data_bindings, fits=_fits(dataset))
    if record is None:  # a new sweep (--overwrite: the previous one's files go first)
        _clear(out, own_storage=not args.storage)
        record = SweepRecord(out, {**spec, "file": args.file}, spec["metric"])
    record.add_candidates(candidates)
    record.save()
    infeasible = [c for c in candidates if not c.feasible]
    for candidate in infeasible:
        print(f"infeasible, not run: #{candidate.number} {candidate.label}\n"
              f"{_indent(candidate.error)}", file=sys.stderr)
    todo = [c for c in candidates if c.feasible and not record.finished(c.number)]
    done = len(candidates) - len(infeasible) - len(todo)
    column, mode = METRICS[spec["metric"]]
    threads = args.threads_per_trial or DEFAULT_THREADS
    print(f"sweep of {args.file}: {len(candidates)} candidates, {len(infeasible)} infeasible"
          + (f", {done} already done" if done else "") + f"; running {len(todo)} on "
          + (f"the Ray cluster at {args.address}" if args.address else
             f"a local Ray ({_cores()} cores, {threads} thread{'s' if threads > 1 else ''} "
             "per trial)")
          + f", ranked by {spec['metric']}", flush=True)
    settings = spec["settings"]
    job = trials.Job(text=text, path=args.file, fixed=spec["set"], settings=settings,
                     data_bindings=data_bindings, classes=list(dataset.classes),
                     data=spec["data"], limit=spec["limit"], metric=column, mode=mode,
                     threads=threads,
                     candidates={c.number: (c.bindings, c.settings, c.values) for c in todo})
    if todo:
        _run(args, job, dataset, todo, record, spec, candidates)
    return _report(record, out, len(candidates))


def _run(args, job, dataset, todo, record, spec, candidates) -> None:
    from cnndsl.sweep import trials
    from cnndsl.train import progress_bar, progress_shown

    epochs = todo[0].epochs  # the same for all (--epochs, else the file's): not swept
    bar = progress_bar(len(todo), "trials", "trial") if progress_shown(
        False if args.no_progress else None) else None
    labels = {c.number: c.label for c in candidates}

    def record_one(number, status, result, weights, error):
        entry = record.record(number, status, result, weights, error)
        figure = f"{entry['best']:.4f}" if entry.get("best") is not None else "-"
        line = (f"trial #{number} {labels[number]}: {status}, best {spec['metric']} {figure} "
                f"(epoch {entry.get('best_epoch') or '-'})"
                + (f", test_acc {entry['test_accuracy']:.4f}"
                   if entry.get("test_accuracy") is not None else "")
                + (f": {error}" if error else ""))
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            print(line, flush=True)

    x_train, y_train = dataset.x_train, dataset.y_train
    data = (x_train, y_train, dataset.x_test, dataset.y_test)
    storage = Path(args.storage or record.folder / "ray")
    if not args.storage:
        storage = storage.resolve()
    try:
        trials.run(job, data, [c.number for c in todo], trials.Recorder(record_one, epochs),
                   epochs=epochs, storage=str(storage), address=args.address,
                   early_stop=bool(spec["early_stop"]))
    finally:
        if bar is not None:
            bar.close()


def _report(record, out: Path, total: int) -> int:
    from cnndsl.sweep.results import format_table, write_pareto
    from cnndsl.sweep.space import values_label

    print()
    print(format_table(record))
    record.save()
    drew = write_pareto(record, out / "pareto.png")
    best = record.keep_best()
    missing = [e for e in record.entries.values() if e["status"] in ("not run", "error")]
    written = [out / "results.csv", out / "results.json"]
    if drew:
        written.append(out / "pareto.png")
    if best is not None:
        entry = record.best()
        written.append(best)
        print(f"\nbest: trial #{entry['trial']} {values_label(entry['values'])} -> {best} "
              f"(cnndsl eval --weights {best})")
    print("wrote " + ", ".join(str(p) for p in written))
    if missing:
        interrupted = any(e["status"] == "not run" for e in missing)
        print(f"{'interrupted: ' if interrupted else ''}{len(missing)} of {total} trials did "
              f"not finish (the finished ones are kept); run them with: cnndsl sweep "
              f"{record.spec.get('file')} -o {out} --resume", file=sys.stderr)
        return 130 if interrupted else 1
    return 0


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def _dataset(spec: dict, candidates):
    """The dataset (the --limit subset seeded by the sweep's seed, the same for every
    trial) and the bindings it gives ({"classes": K})."""
    from cnndsl.data import load_dataset
    from cnndsl.datasets import limited

    dataset = load_dataset(spec["data"])
    dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test = limited(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, spec["limit"],
        spec["settings"].get("seed", 0))
    return dataset, {"classes": len(dataset.classes)}


def _fits(dataset):
    """A check that the data fit a candidate's network (its error text, or None)."""
    from cnndsl.data import DataError, check_against

    def fits(graph) -> str | None:
        try:
            output = graph.nodes[graph.graph["output"]]["shape"]
            check_against(dataset, graph.graph["input_shape"], output)
        except DataError as error:
            return f"error: {error}"
        return None

    return fits
