"""What a sweep tries: `--grid` / `--range` / `--random` read into candidates, each
shape-checked before anything runs.

A swept name is either one of the file's `let` bindings (a whole number: `k`, `m`, and
`classes`) or a training setting (`lr`, `batch`, `optimizer`, ... — cnndsl.trainconfig's).
`--grid k=1,2,3` lists values; `--range lr=1e-4:1e-2:log` gives a range that `--random N`
draws from (N draws per grid point, seeded by the sweep's `--seed`): uniform, or
log-uniform with `:log`; whole numbers for a binding and for whole-number settings (`batch`).
Candidates come in a fixed order (the first `--grid` varies slowest) and are numbered from 1.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

from cnndsl.errors import CnnDslError, did_you_mean
from cnndsl.trainconfig import KINDS as SETTINGS
from cnndsl.trainconfig import TrainConfig, convert, program_settings


class SweepUsage(ValueError):
    """A sweep flag that cannot be read (the CLI prints it as a usage error, exit 2)."""


@dataclass
class Grid:
    name: str
    values: list


@dataclass
class Range:
    name: str
    low: float
    high: float
    log: bool = False


@dataclass
class Candidate:
    """One point of the sweep: `values` by name in flag order, split into the network's
    `bindings` and the training `settings`; `params`, `macs` and the `epochs` it trains
    once it checked, `error` (the located report) when it did not."""

    number: int
    values: dict
    bindings: dict
    settings: dict
    params: int | None = None
    macs: int | None = None
    error: str | None = None
    epochs: int | None = None

    @property
    def key(self) -> str:
        """The same for the same values whatever their order (how `--resume` finds it)."""
        return json.dumps(self.values, sort_keys=True)

    @property
    def label(self) -> str:
        return values_label(self.values)

    @property
    def feasible(self) -> bool:
        return self.error is None


def values_label(values: dict) -> str:
    """`k=2 lr=0.001`: a candidate's values as the table, the plot and the log name it."""
    return " ".join(f"{name}={show_value(value)}" for name, value in values.items())


def show_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---- reading the flags ---------------------------------------------------------------------

def literal(text: str):
    """A flag's value: true/false, a whole number, a number, else the word itself."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split(flag: str, text: str, example: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise SweepUsage(f"--{flag} {text}: expected NAME=VALUES, e.g. --{flag} {example}")
    if not name.isidentifier():
        raise SweepUsage(f"--{flag} {text}: '{name}' is not a name")
    return name, rest


def parse_grid(text: str) -> Grid:
    """`k=1,2,3` -> Grid('k', [1, 2, 3])."""
    name, rest = _split("grid", text, "k=1,2,3")
    values = [literal(part) for part in rest.split(",")]
    if any(value == "" for value in values):
        raise SweepUsage(f"--grid {text}: an empty value")
    if len(set(map(repr, values))) != len(values):
        raise SweepUsage(f"--grid {text}: a value is listed twice")
    return Grid(name, values)


def parse_range(text: str) -> Range:
    """`lr=1e-4:1e-2:log` -> Range('lr', 1e-4, 1e-2, log=True); `k=1:4` -> whole numbers."""
    name, rest = _split("range", text, "lr=1e-4:1e-2:log")
    parts = rest.split(":")
    log = len(parts) == 3 and parts[2].strip() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise SweepUsage(f"--range {text}: expected NAME=LOW:HIGH or NAME=LOW:HIGH:log")
    low, high = literal(parts[0]), literal(parts[1])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise SweepUsage(f"--range {text}: LOW and HIGH must be numbers")
    if not low < high:
        raise SweepUsage(f"--range {text}: LOW must be below HIGH")
    if log and low <= 0:
        raise SweepUsage(f"--range {text}: a log range needs LOW > 0")
    return Range(name, low, high, log)


def classify(name: str, let_names: list[str]) -> str:
    """'binding' or 'setting'; a SweepUsage naming the closest names otherwise."""
    if name == "epochs":
        raise SweepUsage("epochs is not swept: every trial runs --epochs (ASHA's --early-stop "
                         "stops the poor ones early)")
    if name in SETTINGS:
        return "setting"
    if name in let_names or name == "classes":
        return "binding"
    known = [*let_names, *[s for s in SETTINGS if s != "epochs"]]
    close = did_you_mean(name, known)
    raise SweepUsage(f"'{name}' is neither a let binding of the file nor a training setting"
                     + (f"; {close}" if close else f" (lets: {', '.join(let_names) or 'none'})"))


def _value_for(name: str, kind: str, value, flag: str):
    """`value` checked for `name`: a whole number for a binding, the setting's rule else."""
    if kind == "binding":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SweepUsage(f"{flag}: the binding {name} takes whole numbers, got "
                             f"{show_value(value)}")
        return value
    if _whole_setting(name) and isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return convert(name, value)
    except ValueError as error:
        raise SweepUsage(f"{flag}: {error}") from None


def _whole_setting(name: str) -> bool:
    return SETTINGS.get(name) == "int"


def candidates(grids: list[Grid], ranges: list[Range], random: int, seed: int,
               let_names: list[str]) -> list[Candidate]:
    """Every candidate, numbered from 1: the grid's product (first flag slowest), times
    `random` draws of the ranges per grid point; a repeated one is kept once."""
    names = [axis.name for axis in [*grids, *ranges]]
    repeated = [name for name in names if names.count(name) > 1]
    if repeated:
        raise SweepUsage(f"{repeated[0]} is swept twice")
    if ranges and not random:
        raise SweepUsage("--range needs --random N (how many draws)")
    if random and not ranges:
        raise SweepUsage("--random needs at least one --range to draw from")
    if random < 0:
        raise SweepUsage(f"--random must be at least 1, got {random}")
    kinds = {name: classify(name, let_names) for name in names}
    grid_values = [[_value_for(g.name, kinds[g.name], v, f"--grid {g.name}") for v in g.values]
                   for g in grids]
    for r in ranges:
        if kinds[r.name] == "binding" or _whole_setting(r.name):
            if not (float(r.low).is_integer() and float(r.high).is_integer()):
                raise SweepUsage(f"--range {r.name}: {r.name} takes whole numbers")
        elif SETTINGS[r.name] not in ("float", "float | None"):
            raise SweepUsage(f"--range {r.name}: {r.name} is not a number (use --grid)")
    import numpy as np

    rng = np.random.default_rng(seed)
    found: dict[str, Candidate] = {}
    for point in itertools.product(*grid_values):
        for _ in range(max(1, random)):
            values = {g.name: v for g, v in zip(grids, point, strict=True)}
            for r in ranges:
                whole = kinds[r.name] == "binding" or _whole_setting(r.name)
                values[r.name] = _value_for(r.name, kinds[r.name], _draw(r, rng, whole),
                                            f"--range {r.name}")
            candidate = Candidate(
                0, values, {n: v for n, v in values.items() if kinds[n] == "binding"},
                {n: v for n, v in values.items() if kinds[n] == "setting"})
            found.setdefault(candidate.key, candidate)
    result = list(found.values())
    for number, candidate in enumerate(result, 1):
        candidate.number = number
    return result


def _draw(r: Range, rng, whole: bool):
    if whole:  # every whole number in [low, high] equally likely (log: each octave equally)
        if r.log:
            drawn = math.exp(rng.uniform(math.log(r.low), math.log(r.high + 1)))
            return int(min(r.high, math.floor(drawn)))
        return int(rng.integers(int(r.low), int(r.high) + 1))
    if r.log:
        value = math.exp(rng.uniform(math.log(r.low), math.log(r.high)))
    else:
        value = rng.uniform(r.low, r.high)
    return float(f"{value:.6g}")  # a readable value, the same in the table and the run


# ---- checking ------------------------------------------------------------------------------

def build(text: str, path: str, bindings: dict, settings: dict, data: dict):
    """(graph, TrainConfig) of one candidate: the network checked with `bindings`, the
    settings = defaults <- the file's train block <- `settings`. Raises CnnDslError (located
    in the file) when the network or its train block does not check."""
    from cnndsl.frontend import check_text
    from cnndsl.parser import parse

    graph = check_text(text, bindings, path, data)
    config = TrainConfig()
    try:
        in_file = program_settings(parse(text), bindings, data)
    except CnnDslError as error:
        raise error.located(text, path) from None
    for name, value in {**in_file, **settings}.items():
        setattr(config, name, value)
    return graph, config


def check_candidates(items: list[Candidate], text: str, path: str, fixed: dict,
                     settings: dict, data: dict, fits=None) -> None:
    """Shape-check every candidate (no kernels, no training): params and MACs of those that
    check, the located error of those that do not (augmentation the input cannot take
    included). `fixed` are the bindings of --set, `settings` the sweep's own flags;
    `fits(graph)` says why the data do not fit a network (None: they do)."""
    from cnndsl.augment import unsupported
    from cnndsl.shapes import totals

    for candidate in items:
        try:
            graph, config = build(text, path, {**fixed, **candidate.bindings},
                                  {**settings, **candidate.settings}, data)
        except CnnDslError as error:
            candidate.error = str(error)
            continue
        refused = unsupported(config, graph.graph["input_shape"])
        if refused is not None:
            candidate.error = f"{path}: error: {refused[1]}"
            continue
        misfit = fits(graph) if fits is not None else None
        if misfit is not None:
            candidate.error = f"{path}: {misfit}"
            continue
        candidate.params, candidate.macs = totals(graph)
        candidate.epochs = config.epochs
