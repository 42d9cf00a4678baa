"""A sweep's record and what is made of it: `results.json` (the spec it ran with and one
entry per candidate, rewritten atomically after every finished trial), `results.csv`, the
table on screen, `pareto.png` (accuracy against MACs and against parameters, the Pareto
front marked) and `best.npz` (the best trial's weights with its bindings).

An entry's status: `done`, `stopped early` (ASHA), `error`, `infeasible` (its network or
settings did not check: never launched), or `not run` (interrupted before it ran).
"""

from __future__ import annotations

import json
from pathlib import Path

from cnndsl.checkpoint import CheckpointError, write_atomically
from cnndsl.errors import CnnDslError
from cnndsl.sweep.space import Candidate, show_value, values_label

FORMAT = "cnndsl-sweep-1"
FINISHED = ("done", "stopped early", "infeasible")
#: --metric words and the history column each names (and whether higher is better)
METRICS = {"val_acc": ("val_accuracy", "max"), "val_loss": ("val_loss", "min"),
           "acc": ("accuracy", "max"), "loss": ("loss", "min")}


class SweepRecord:
    """The entries of one sweep folder, by candidate number, and the spec they ran with."""

    def __init__(self, folder: Path, spec: dict, metric: str):
        self.folder, self.spec, self.metric = Path(folder), spec, metric
        self.entries: dict[int, dict] = {}

    # ---- files -------------------------------------------------------------------------
    @property
    def json_path(self) -> Path:
        return self.folder / "results.json"

    def weights_path(self, number: int) -> Path:
        return self.folder / "trials" / f"trial{number}.npz"

    @classmethod
    def load(cls, folder: Path) -> SweepRecord:
        """The record saved in `folder` (a CheckpointError when it is not one)."""
        path = Path(folder) / "results.json"
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"--resume: '{folder}' holds no sweep (no results.json)",
                                  hint="run the sweep without --resume first") from None
        except (OSError, ValueError) as error:
            raise CheckpointError(f"--resume: cannot read '{path}': {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"--resume: '{path}' is not a cnndsl sweep record")
        record = cls(folder, document.get("spec") or {}, document.get("metric", "val_acc"))
        for entry in document.get("trials") or []:
            record.entries[int(entry["trial"])] = entry
        return record

    def save(self) -> None:
        entries = [self.entries[n] for n in sorted(self.entries)]
        document = {"format": FORMAT, "metric": self.metric, "spec": self.spec,
                    "trials": entries}
        text = json.dumps(document, indent=2).encode("utf-8")
        write_atomically(self.json_path, lambda handle: handle.write(text), "sweep results")
        from cnndsl.history import write_csv

        write_csv(self.folder / "results.csv", [csv_row(e) for e in self.ranked()],
                  "sweep results")

    # ---- entries -----------------------------------------------------------------------
    def add_candidates(self, candidates: list[Candidate]) -> None:
        """An entry per candidate not yet recorded as finished (status 'not run', or
        'infeasible' with its error)."""
        for candidate in candidates:
            saved = self.entries.get(candidate.number)
            if saved is not None and saved["values"] != candidate.values:
                raise CnnDslError(
                    f"--resume: trial #{candidate.number} of '{self.folder}' was "
                    f"{saved['values']}, this sweep's is {candidate.values}",
                    hint="the sweep was written by another version of cnndsl; start afresh "
                         "with --overwrite or -o OTHER")
            if self.finished(candidate.number):
                continue
            self.entries[candidate.number] = {
                "trial": candidate.number, "values": candidate.values,
                "bindings": candidate.bindings, "settings": candidate.settings,
                "params": candidate.params, "macs": candidate.macs,
                "status": "not run" if candidate.feasible else "infeasible",
                "error": candidate.error}

    def finished(self, number: int) -> bool:
        return self.entries.get(number, {}).get("status") in FINISHED

    def record(self, number: int, status: str, result: dict, weights: Path | None,
               error: str | None) -> dict:
        """A trial that ended: its figures, its best epoch's weights kept in trials/."""
        entry = self.entries[number]
        column, _ = METRICS[self.metric]
        entry.update(status=status, error=error, epochs=result.get("epoch"),
                     best=result.get("best_value"), best_epoch=result.get("best_epoch"),
                     test_accuracy=result.get("best_test_accuracy"),
                     last=result.get(column), seconds=result.get("time_total_s"))
        if weights is not None:
            target = self.weights_path(number)
            write_atomically(target, lambda handle: handle.write(Path(weights).read_bytes()),
                             "trial weights")
            entry["weights"] = str(target.relative_to(self.folder))
        self.save()
        return entry

    def ranked(self) -> list[dict]:
        """Entries best first by the metric; those without a figure after, by number."""
        _, mode = METRICS[self.metric]
        scored = [e for e in self.entries.values() if e.get("best") is not None]
        scored.sort(key=lambda e: (-e["best"] if mode == "max" else e["best"], e["trial"]))
        rest = sorted((e for e in self.entries.values() if e.get("best") is None),
                      key=lambda e: e["trial"])
        return scored + rest

    def best(self) -> dict | None:
        ranked = [e for e in self.ranked() if e.get("best") is not None and e.get("weights")]
        return ranked[0] if ranked else None

    def keep_best(self) -> Path | None:
        """Copy the best trial's weights to best.npz (atomically); its path, or None."""
        best = self.best()
        if best is None:
            return None
        data, target = (self.folder / best["weights"]).read_bytes(), self.folder / "best.npz"
        write_atomically(target, lambda handle: handle.write(data), "best weights")
        return target


# ---- the table and the CSV -------------------------------------------------------------

def csv_row(entry: dict) -> dict:
    row = {"trial": entry["trial"]}
    row.update(entry["values"])
    row.update(params=entry.get("params"), macs=entry.get("macs"),
               best=entry.get("best"), best_epoch=entry.get("best_epoch"),
               test_accuracy=entry.get("test_accuracy"), epochs=entry.get("epochs"),
               seconds=entry.get("seconds"), status=entry["status"],
               error=first_line(entry.get("error")))
    return row


def first_line(text: str | None) -> str | None:
    """The error's headline (`FILE:LINE:COL: error: ...`) without the source excerpt."""
    return text.strip().splitlines()[0] if text else None


def format_table(record: SweepRecord) -> str:
    """The entries best first: values, params, MACs, the metric's best, its epoch, the
    test accuracy at that epoch, the time and the status; errors below the table."""
    entries = record.ranked()
    names = list(dict.fromkeys(name for e in entries for name in e["values"]))
    heading = ["trial", *names, "params", "MACs", record.metric, "epoch", "test_acc", "time",
               "status"]
    rows = []
    for e in entries:
        rows.append([f"#{e['trial']}", *(show_value(e["values"].get(n, "")) for n in names),
                     _count(e.get("params")), _count(e.get("macs")), _figure(e.get("best")),
                     str(e.get("best_epoch") or "-"), _figure(e.get("test_accuracy")),
                     f"{e['seconds']:.0f} s" if e.get("seconds") is not None else "-",
                     e["status"]])
    widths = [max(len(str(c)) for c in column) for column in zip(heading, *rows, strict=True)]
    numeric = set(range(1 + len(names), len(heading) - 1))
    lines = []
    for cells in [heading, *rows]:
        lines.append("  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                     .rstrip())
    failed = [e for e in entries if e.get("error")]
    if failed:
        lines.append("")
        lines.extend(f"#{e['trial']} {e['status']}: {first_line(e['error'])}" for e in failed)
    return "\n".join(lines)


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def _figure(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---- the Pareto plot -----------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]], mode: str = "max") -> list[int]:
    """Indices of the points (cost, score) no other point beats: another with cost <= and
    score >= (<= for mode 'min'), one of them strictly. In order of cost."""
    def better_or_equal(a, b):
        return a >= b if mode == "max" else a <= b

    front = []
    for i, (cost, score) in enumerate(points):
        beaten = any(
            c <= cost and better_or_equal(s, score) and (c < cost or s != score)
            for j, (c, s) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], i))


def write_pareto(record: SweepRecord, path: Path) -> bool:
    """The metric of every trial with a figure against its MACs (left) and parameters
    (right), log axes, each point labelled with its trial number, the Pareto front drawn as
    a line through its points. False (nothing written) when no trial has a figure."""
    entries = [e for e in record.ranked() if e.get("best") is not None and e.get("macs")]
    if not entries:
        return False
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    from cnndsl.history import write_png

    column, mode = METRICS[record.metric]
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    for axis, key, label in zip(figure.subplots(1, 2), ("macs", "params"),
                                ("multiply-accumulates per image", "parameters"),
                                strict=True):
        points = [(e[key], e["best"]) for e in entries]
        front = pareto_front(points, mode)
        others = [i for i in range(len(points)) if i not in front]
        axis.scatter([points[i][0] for i in others], [points[i][1] for i in others],
                     color="0.55", label="trial", zorder=3)
        axis.step([points[i][0] for i in front], [points[i][1] for i in front], "-o",
                  where="post", color="tab:red", label="Pareto front", zorder=4)
        for e, (x, y) in zip(entries, points, strict=True):
            axis.annotate(_point_label(e), (x, y), textcoords="offset points",
                          xytext=(5, 4), fontsize=8, zorder=5,
                          bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                "alpha": 0.8})
        axis.set_xscale("log")
        # 1-2-5 steps with k/M/G: readable whatever span the sweep covers
        axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(EngFormatter(sep=""))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.margins(x=0.25, y=0.15)  # room for the labels beside the outermost points
        axis.set(xlabel=label, ylabel=f"best {column}", title=f"{record.metric} against "
                 f"{'MACs' if key == 'macs' else 'parameters'} ({len(entries)} trials)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(loc="best")
    write_png(figure, path)
    return True


def _point_label(entry: dict) -> str:
    """'#3 k=2 n=0': the trial and its values while short, else the trial alone."""
    values = values_label(entry["values"])
    return f"#{entry['trial']} {values}" if len(values) <= 24 else f"#{entry['trial']}"


def check_spec(saved: dict, current: dict, folder: Path) -> None:
    """Refuse to resume a sweep with other flags than it ran with: the first difference,
    named as its flag (`--epochs 2 (saved: 1)`, `--set k=3 (saved: not given)`)."""
    for name, value in current.items():
        if isinstance(value, dict):  # the training settings, the --set bindings
            stored = saved.get(name) or {}
            for key, item in value.items():
                if stored.get(key, _MISSING) != item:
                    _differs(folder, _flag(name, key, item), _shown(stored.get(key, _MISSING)))
        elif name in saved and saved[name] != value:
            _differs(folder, _flag(name, None, value), _shown(saved[name]))


_MISSING = object()


def _flag(name: str, key: str | None, value) -> str:
    if name == "set":
        return f"--set {key}={value}"
    if name == "settings":
        return f"--{key.replace('_', '-')} {_shown(value)}"
    if name == "file_sha256":
        return "the file's text"
    return f"--{name.replace('_', '-')} {_shown(value)}"


def _shown(value) -> str:
    if value is _MISSING or value is None:
        return "not given"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "none"
    return show_value(value)


def _differs(folder: Path, flag: str, saved: str):
    raise CnnDslError(
        f"--resume: this sweep differs from the one in '{folder}': {flag} (saved: {saved})",
        hint="resume with the flags it ran with (leave them out: --resume keeps the saved "
             "ones), or start another sweep with -o OTHER or --overwrite")
