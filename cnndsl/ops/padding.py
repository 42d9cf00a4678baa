"""Output sizes and padding per spatial axis (docs/language.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from cnndsl.errors import ShapeMismatch


@dataclass(frozen=True)
class Window:
    """How a layer reads its input in space, one entry per spatial axis of its input
    (cnndsl.fields grows receptive fields with it):

    extent   input positions one output position depends on (dilation included)
    stride   input positions between neighbouring outputs (1/s for a transposed conv)
    padding  (before, after) zeros or -inf added around the input, as resolved
    """

    extent: tuple[int, ...]
    stride: tuple[int | Fraction, ...]
    padding: tuple[tuple[int, int], ...]

    @staticmethod
    def whole(in_sizes) -> Window:
        """A layer that reads its whole input at once (FC, Flatten, a global pool)."""
        sizes = tuple(in_sizes)
        return Window(sizes, sizes, tuple((0, 0) for _ in sizes))


def _axes(count: int) -> str:
    return f"{count} axis" if count == 1 else f"{count} axes"


def per_axis(value, rank: int, what: str) -> tuple[int, ...]:
    """3 -> (3, 3) in 2-D; a tuple must have one entry per spatial axis."""
    if isinstance(value, tuple):
        if len(value) != rank:
            raise ShapeMismatch(f"{what} {fmt(value)} has {_axes(len(value))} but the input "
                                f"has {rank} spatial {'axis' if rank == 1 else 'axes'}",
                                hint=f"give one number, or {rank} numbers such as "
                                     f"{'x'.join(['3'] * rank)}")
        return value
    return (value,) * rank


def fmt(sizes) -> str:
    return "x".join(str(s) for s in sizes)


def has_pairs(pad) -> bool:
    """Whether `pad` gives (before, after) pairs: a tuple with a tuple entry."""
    return isinstance(pad, tuple) and any(isinstance(entry, tuple) for entry in pad)


def pad_text(pad) -> str:
    """`pad` as the DSL spells it, pairs without spaces (tables, diagrams and messages
    split arguments at ", "): same, 1, 1x0, ((0,1),(2,2)), (1,(0,2)), ((0,1),)."""
    if isinstance(pad, str):
        return pad
    if not isinstance(pad, tuple):
        return str(pad)
    if not has_pairs(pad):
        return fmt(pad)
    entries = [f"({entry[0]},{entry[1]})" if isinstance(entry, tuple) else str(entry)
               for entry in pad]
    return "(" + ",".join(entries) + ("," if len(entries) == 1 else "") + ")"


def _sides(entry) -> tuple[int, int]:
    """One axis' pad entry (a number: both sides alike, or a pair) -> (before, after)."""
    return tuple(entry) if isinstance(entry, tuple) else (entry, entry)


def _pairs_example(rank: int) -> str:
    """((0, 1), (0, 1)) for 2 axes, ((0, 1),) for 1: the spelling a hint shows."""
    return "(" + ", ".join(["(0, 1)"] * rank) + ("," if rank == 1 else "") + ")"


def pad_per_axis(pad, rank: int) -> tuple:
    """A numeric `pad` with one entry per spatial axis (a number, or a (before, after)
    pair); a number means that many zeros on both sides of every axis. A tuple of the
    wrong length is a ShapeMismatch whose hint spells the right form for `rank` axes."""
    if not isinstance(pad, tuple):
        return (pad,) * rank
    if len(pad) == rank:
        return pad
    axes = "axis" if rank == 1 else "axes"
    if has_pairs(pad):
        hint = (f"give one (before, after) pair per spatial axis, e.g. "
                f"pad={_pairs_example(rank)}")
    elif len(pad) == 2 and rank == 1:
        hint = (f"a tuple gives one number per axis; for {pad[0]} zeros before and "
                f"{pad[1]} after a 1-D input, write pad=(({pad[0]}, {pad[1]}),)")
    else:
        hint = (f"give one number, {rank} numbers such as {'x'.join(['1'] * rank)}, or one "
                f"(before, after) pair per axis such as pad={_pairs_example(rank)}")
    given = "axis" if len(pad) == 1 else "axes"
    raise ShapeMismatch(f"pad {pad_text(pad)} has {len(pad)} {given} but the input has "
                        f"{rank} spatial {axes}", hint=hint)


def pad_sides(pad, rank: int) -> tuple[tuple[int, int], ...]:
    """A numeric `pad` (number, per axis, or pairs) as (before, after) per axis."""
    return tuple(_sides(entry) for entry in pad_per_axis(pad, rank))


def resolve(in_sizes, kernel, stride, dilation, pad):
    """Per axis (out, pad_before, pad_after) for a sliding window; floor mode.

    pad: 'same' (out = ceil(in/stride), extra zero after), 'valid', 'full' (d*(k-1) each
    side) or a tuple with one entry per axis: zeros on both sides, or a (before, after) pair.
    """
    result = []
    for axis, (n, k, s, d) in enumerate(zip(in_sizes, kernel, stride, dilation)):
        extent = d * (k - 1) + 1
        if pad == "same":
            out = -(-n // s)
            total = max(s * (out - 1) + extent - n, 0)
            before, after = total // 2, total - total // 2
        elif pad == "valid":
            before = after = 0
        elif pad == "full":
            before = after = d * (k - 1)
        else:
            before, after = _sides(pad[axis])
        if n + before + after < extent:
            return None
        out = (n + before + after - extent) // s + 1
        result.append((out, before, after))
    return result


def window_output(op_what: str, in_sizes, kernel, stride, dilation, pad):
    """Output spatial sizes, or ShapeMismatch naming the window and padded input."""
    rank = len(in_sizes)
    kernel = per_axis(kernel, rank, "kernel")
    stride = per_axis(stride, rank, "stride")
    dilation = per_axis(dilation, rank, "dilation")
    written = pad_text(pad)
    if not isinstance(pad, str):
        pad = pad_per_axis(pad, rank)
    resolved = resolve(in_sizes, kernel, stride, dilation, pad)
    if resolved is None:
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        sides = pad_sides(pad, rank) if isinstance(pad, tuple) else [(0, 0)] * rank
        padded = [n + before + after for n, (before, after) in zip(in_sizes, sides)]
        dilated = "" if all(d == 1 for d in dilation) else f" (dilated to {fmt(extent)})"
        raise ShapeMismatch(
            f"{op_what} {fmt(kernel)}{dilated} is larger than its padded input "
            f"{fmt(padded)} (pad={written})",
            hint="use pad=same, a smaller window, or less downsampling before this layer")
    return tuple(out for out, _, _ in resolved)


def to3(values, fill: int) -> tuple[int, int, int]:
    """Per-axis values for 1-3 spatial axes -> (D, H, W), `fill` for missing leading axes."""
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values


def _per_axis_window(in_sizes, kernel, stride, dilation, pad) -> tuple:
    """(kernel, stride, dilation, [(out, before, after)]) per axis, as resolved."""
    rank = len(in_sizes)
    kernel = per_axis(kernel, rank, "kernel")
    stride = per_axis(stride, rank, "stride")
    dilation = per_axis(dilation, rank, "dilation")
    if not isinstance(pad, str):
        pad = pad_per_axis(pad, rank)
    return kernel, stride, dilation, resolve(in_sizes, kernel, stride, dilation, pad)


def window3(in_sizes, kernel, stride, dilation, pad) -> dict:
    """Kernel geometry as (D, H, W) int triples, the form the kernels take:
    kernel, stride, dilation, pad_before, pad_after."""
    kernel, stride, dilation, resolved = _per_axis_window(in_sizes, kernel, stride, dilation,
                                                          pad)
    return {"kernel": to3(kernel, 1), "stride": to3(stride, 1), "dilation": to3(dilation, 1),
            "pad_before": to3([b for _, b, _ in resolved], 0),
            "pad_after": to3([a for _, _, a in resolved], 0)}


def sliding_window(in_sizes, kernel, stride, dilation, pad) -> Window:
    """The Window of a sliding kernel (conv, pool) on an input it fits (checked before)."""
    kernel, stride, dilation, resolved = _per_axis_window(in_sizes, kernel, stride, dilation,
                                                          pad)
    return Window(tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation)), tuple(stride),
                  tuple((before, after) for _, before, after in resolved))


def transposed_window(in_sizes, kernel, stride, pad) -> Window:
    """A transposed conv: each output position gathers from at most ceil(k / s) inputs,
    which lie 1/s input positions apart per output step."""
    rank = len(in_sizes)
    kernel = per_axis(kernel, rank, "kernel")
    stride = per_axis(stride, rank, "stride")
    pad = per_axis(pad, rank, "pad")
    return Window(tuple(math.ceil(k / s) for k, s in zip(kernel, stride)),
                  tuple(Fraction(1, s) for s in stride), tuple((q, q) for q in pad))
