"""Argument kinds for layer calls, and binding a call's arguments to an op's Params.

An op's Params is a frozen dataclass whose fields are declared with `arg(kind, default)`;
field order is the positional order of the DSL call. Binding checks names, counts and
kinds, so every op gets the same errors for free.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import field

PAD_MODES = ("same", "valid", "full")
# sizes, strides, paddings and counts beyond this fit no memory and overflow the kernels'
# 64-bit index arithmetic (products of two of them)
MAX_WHOLE = 2**31


class ArgValueError(Exception):
    """A value of the wrong kind; the IR builder adds the argument's span (and `hint`)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def _describe(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # 3x3, or pairs ((0, 1), (2, 2)) as the DSL spells them
        from cnndsl.evaluate import show

        return show(value)
    return str(value)


def _whole(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgValueError(f"{what} must be a whole number, got {_describe(value)}")
    if value < minimum:
        raise ArgValueError(f"{what} must be at least {minimum}, got {value}")
    if value > MAX_WHOLE:
        raise ArgValueError(f"{what} must be at most 2^31 ({MAX_WHOLE:,}), got {value:,}")
    return value


class Kind:
    """How one argument is checked and normalised."""

    text = "a value"

    def convert(self, value, what: str):
        raise NotImplementedError


class Count(Kind):
    """A whole number >= minimum (filters, units, groups)."""

    def __init__(self, minimum: int = 1):
        self.minimum = minimum
        self.text = f"a whole number >= {minimum}"

    def convert(self, value, what):
        return _whole(value, what, self.minimum)


class Size(Kind):
    """One number for every spatial axis, or a size per axis (3, 3x3, (3, 5))."""

    def __init__(self, minimum: int = 1):
        self.minimum = minimum
        self.text = "a size such as 3 or 3x3"

    def convert(self, value, what):
        if isinstance(value, tuple):
            return tuple(_whole(v, what, self.minimum) for v in value)
        return _whole(value, what, self.minimum)


class Padding(Kind):
    """same | valid | full, or zeros: one number for every side, one number per axis
    (both sides of that axis), or per axis a (before, after) pair: ((0, 1), (2, 2)).

    A tuple with a tuple entry is read per axis with pairs, and may mix numbers in
    ((1, (0, 1)): 1 on both sides of the first axis). `pairs=False` refuses pairs (a
    ConvT's pad crops its output alike on both sides); `refuse_pairs` is then the hint."""

    def __init__(self, modes=PAD_MODES, pairs: bool = True, refuse_pairs: str = ""):
        self.modes, self.pairs, self.refuse_pairs = modes, pairs, refuse_pairs
        self.text = (f"{', '.join(modes)}, a number of zeros per side, one per axis"
                     + (" or (before, after) pairs per axis" if pairs else ""))

    def convert(self, value, what):
        if isinstance(value, bool):
            raise ArgValueError(f"{what} must be {', '.join(self.modes)} or a number of zeros, "
                                f"got {_describe(value)}")
        if isinstance(value, str):
            if value not in self.modes:
                raise ArgValueError(f"{what} must be {', '.join(self.modes)} or a number, "
                                    f"got {value}")
            return value
        if isinstance(value, tuple) and any(isinstance(v, tuple) for v in value):
            return self._pairs(value, what)
        return Size(minimum=0).convert(value, what)

    def _pairs(self, value: tuple, what: str) -> tuple:
        """Per axis: a number of zeros (both sides) or a (before, after) pair."""
        if not self.pairs:
            raise ArgValueError(f"{what} takes no (before, after) pairs here",
                                self.refuse_pairs or None)
        entries = []
        for entry in value:
            if isinstance(entry, tuple):
                if len(entry) != 2:
                    raise ArgValueError(
                        f"{what} entry ({', '.join(map(_describe, entry))}) has "
                        f"{len(entry)} numbers; a pair is (before, after)",
                        "one entry per spatial axis: a number of zeros on both sides, or "
                        "(before, after), e.g. pad=((0, 1), (2, 2))")
                entries.append(tuple(_whole(v, f"{what} (before, after)", 0) for v in entry))
            else:
                entries.append(_whole(entry, what, 0))
        return tuple(entries)


class Real(Kind):
    """A finite number in [low, high], (low, high], [low, high) or (low, high)."""

    def __init__(self, low: float, high: float, high_open: bool = False,
                 low_open: bool = False):
        self.low, self.high, self.high_open, self.low_open = low, high, high_open, low_open
        close = ")" if high_open else "]"
        self.text = f"a number in {'(' if low_open else '['}{low}, {high}{close}"

    def convert(self, value, what):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgValueError(f"{what} must be a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ArgValueError(f"{what} must be {self.text}, got {value}")
        above = value >= self.high if self.high_open else value > self.high
        below = value <= self.low if self.low_open else value < self.low
        if below or above:
            raise ArgValueError(f"{what} must be {self.text}, got {value:g}")
        return float(value)


class Flag(Kind):
    text = "true or false"

    def convert(self, value, what):
        if not isinstance(value, bool):
            raise ArgValueError(f"{what} must be true or false, got {_describe(value)}")
        return value


class Choice(Kind):
    """One word of a few (Upsample's mode=nearest|bilinear, LayerNorm's over=channels|all):
    the front end reads such a word as a value where no binding of that name is visible
    (cnndsl.evaluate.choice_words)."""

    def __init__(self, *choices: str):
        self.choices = choices
        self.text = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 \
            else choices[0]

    def convert(self, value, what):
        if not isinstance(value, str) or value not in self.choices:
            from cnndsl.evaluate import show

            raise ArgValueError(f"{what} must be {self.text}, got {show(value)}")
        return value


def arg(kind: Kind, default=dataclasses.MISSING):
    """Declare a Params field: its DSL kind and default (no default = required)."""
    return field(default=default, metadata={"kind": kind})


@functools.cache
def _fields(params_class) -> tuple[list, list[str]]:
    fields = [f for f in dataclasses.fields(params_class) if "kind" in f.metadata]
    return fields, [f.name for f in fields]


def bind(params_class, positional: list, keywords: dict):
    """Build `params_class` from evaluated call arguments.

    positional: [(value, span)], keywords: {name: (value, span)}. Raises
    `BindError(message, span_or_None, hint)` for the IR builder to locate.
    """
    fields, names = _fields(params_class)
    if len(positional) > len(fields):
        extra_span = positional[len(fields)][1]
        takes = ", ".join(names) if names else "no arguments"
        raise BindError(f"takes at most {len(fields)} argument(s) ({takes}), "
                        f"got {len(positional)}", extra_span)
    given = {f.name: positional[i] for i, f in enumerate(fields[: len(positional)])}
    for name, (value, span) in keywords.items():
        if name not in names:
            from cnndsl.errors import did_you_mean

            hint = did_you_mean(name, names) or (
                f"it takes {', '.join(names)}" if names else "it takes no arguments")
            raise BindError(f"has no argument '{name}'", span, hint)
        if name in given:
            raise BindError(f"argument '{name}' is given twice", span)
        given[name] = (value, span)
    values = {}
    for f in fields:
        if f.name in given:
            value, span = given[f.name]
            try:
                values[f.name] = f.metadata["kind"].convert(value, f.name)
            except ArgValueError as error:
                raise BindError(str(error), span, error.hint) from None
        elif f.default is dataclasses.MISSING:
            raise BindError(f"needs the argument '{f.name}' ({f.metadata['kind'].text})", None)
    return params_class(**values)


class BindError(Exception):
    def __init__(self, message: str, span=None, hint: str | None = None):
        super().__init__(message)
        self.message, self.span, self.hint = message, span, hint
