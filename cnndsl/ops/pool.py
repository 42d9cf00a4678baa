"""Pooling: windowed Max/Avg/L2 (floor mode) and global pools."""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.errors import ShapeMismatch
from cnndsl.ops import Op, fmt_size, fmt_stride, register, same_size, spatial
from cnndsl.ops.args import Padding, Size, arg
from cnndsl.ops.padding import per_axis, window_output


@dataclass(frozen=True)
class PoolParams:
    size: int | tuple = arg(Size(), 2)
    stride: int | tuple | None = arg(Size(), None)  # None: the window size
    pad: str | int | tuple = arg(Padding(), 0)


class WindowPool(Op):
    """x: spatial x C -> y: spatial' x C, out = floor((in + 2*pad - size) / stride) + 1."""

    Params = PoolParams
    family = "pool"

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "pooling")
        rank = len(sizes)
        window = per_axis(p.size, rank, "size")
        if isinstance(p.pad, (tuple, int)):
            pad = per_axis(p.pad, rank, "pad")
            if any(q > k // 2 for q, k in zip(pad, window)):
                raise ShapeMismatch(
                    f"pad {fmt_size(p.pad)} is more than half the window {fmt_size(window)}",
                    hint="pad at most size // 2 on each side (as PyTorch and ONNX require)")
        stride = p.stride if p.stride is not None else p.size
        out = window_output("window", sizes, p.size, stride, 1, p.pad)
        return (*out, channels)

    @staticmethod
    def describe(p):
        text = fmt_size(p.size)
        if p.stride is not None and not same_size(p.stride, p.size):
            text += f"/{fmt_stride(p.stride)}"
        if not same_size(p.pad, 0):
            text += f", pad={fmt_size(p.pad)}"
        return text


@register
class MaxPool(WindowPool):
    name = "MaxPool"
    explain_bare = True
    aliases = ("Pool",)


@register
class AvgPool(WindowPool):
    """Average over the window; zero padding counts in the divisor (PyTorch's default)."""

    name = "AvgPool"


@register
class L2Pool(WindowPool):
    """sqrt(sum of squares) over the window."""

    name = "L2Pool"


class GlobalPool(Op):
    """x: spatial x C -> y: (C,)."""

    family = "pool"

    @staticmethod
    def shape(p, x):
        _, channels = spatial(x, "a global pool")
        return (channels,)


@register
class GlobalAvgPool(GlobalPool):
    name = "GlobalAvgPool"


@register
class GlobalMaxPool(GlobalPool):
    name = "GlobalMaxPool"
