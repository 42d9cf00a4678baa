"""Convolutions in 1-D, 2-D and 3-D (the input's rank decides).

Shapes in the DSL are channels-last (spatial..., C); parameters use PyTorch's layouts:
conv weight (F, C/groups, *kernel), bias (F,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.errors import ShapeMismatch
from cnndsl.ops import Op, fmt_size, fmt_stride, register, same_size, spatial
from cnndsl.ops.args import Count, Flag, Padding, Size, arg
from cnndsl.ops.padding import per_axis, window_output


def _conv_macs(param_shapes: dict, out_shape) -> int:
    """torchinfo: every weight and bias element once per output position."""
    count = sum(math.prod(s) for s in param_shapes.values())
    return count * math.prod(out_shape[:-1])


def _window_text(p) -> str:
    parts = [fmt_size(p.kernel)]
    if not same_size(p.stride, 1):
        parts.append(f"/{fmt_stride(p.stride)}")
    return "".join(parts)


def _extras(p, **defaults) -> str:
    shown = []
    for name, default in defaults.items():
        value = getattr(p, name)
        if not same_size(value, default):
            text = ("true" if value else "false") if isinstance(value, bool) else fmt_size(value)
            shown.append(f"{name}={text}")
    return (", " + ", ".join(shown)) if shown else ""


@dataclass(frozen=True)
class ConvParams:
    filters: int = arg(Count(), 32)
    kernel: int | tuple = arg(Size(), 3)
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "same")
    dilation: int | tuple = arg(Size(), 1)
    groups: int = arg(Count(), 1)
    bias: bool = arg(Flag(), True)


@register
class Conv(Op):
    """Convolution. x: spatial x C -> y: spatial' x F (bare `Conv` = Conv(32, 3, pad=same))."""

    name = "Conv"
    explain_bare = True
    Params = ConvParams
    family = "conv"

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "Conv")
        if channels % p.groups or p.filters % p.groups:
            raise ShapeMismatch(
                f"groups={p.groups} must divide both the input channels ({channels}) and "
                f"the filters ({p.filters})")
        out = window_output("kernel", sizes, p.kernel, p.stride, p.dilation, p.pad)
        return (*out, p.filters)

    @staticmethod
    def param_shapes(p, x):
        sizes, channels = spatial(x, "Conv")
        kernel = per_axis(p.kernel, len(sizes), "kernel")
        shapes = {"weight": (p.filters, channels // p.groups, *kernel)}
        if p.bias:
            shapes["bias"] = (p.filters,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return _conv_macs(Conv.param_shapes(p, x), y)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(
            p, pad="same", dilation=1, groups=1, bias=True)


@dataclass(frozen=True)
class ConvTParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size())
    stride: int | tuple = arg(Size(), 1)
    pad: int | tuple = arg(Padding(modes=("valid",)), 0)
    output_pad: int | tuple = arg(Size(minimum=0), 0)
    bias: bool = arg(Flag(), True)


@register
class ConvT(Op):
    """Transposed convolution. out = (in-1)*stride - 2*pad + kernel + output_pad.

    Weight (C, F, *kernel) as PyTorch's ConvTranspose.
    """

    name = "ConvT"
    Params = ConvTParams
    family = "conv"

    @staticmethod
    def shape(p, x):
        sizes, _ = spatial(x, "ConvT")
        rank = len(sizes)
        kernel = per_axis(p.kernel, rank, "kernel")
        stride = per_axis(p.stride, rank, "stride")
        pad = per_axis(0 if p.pad == "valid" else p.pad, rank, "pad")
        output_pad = per_axis(p.output_pad, rank, "output_pad")
        out = []
        for n, k, s, q, o in zip(sizes, kernel, stride, pad, output_pad):
            if o >= s:
                raise ShapeMismatch(f"output_pad ({o}) must be smaller than the stride ({s})")
            size = (n - 1) * s - 2 * q + k + o
            if size < 1:
                raise ShapeMismatch(f"pad {fmt_size(p.pad)} leaves no output from input "
                                    f"{fmt_size(sizes)} with kernel {fmt_size(kernel)}")
            out.append(size)
        return (*out, p.filters)

    @staticmethod
    def param_shapes(p, x):
        sizes, channels = spatial(x, "ConvT")
        kernel = per_axis(p.kernel, len(sizes), "kernel")
        shapes = {"weight": (channels, p.filters, *kernel)}
        if p.bias:
            shapes["bias"] = (p.filters,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return _conv_macs(ConvT.param_shapes(p, x), y)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(p, pad=0, output_pad=0, bias=True)


@dataclass(frozen=True)
class DepthwiseParams:
    kernel: int | tuple = arg(Size(), 3)
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "same")
    multiplier: int = arg(Count(), 1)
    bias: bool = arg(Flag(), True)


@register
class DepthwiseConv(Op):
    """One filter bank per channel (groups = C). y: spatial' x C*multiplier.

    Weight (C*multiplier, 1, *kernel).
    """

    name = "DepthwiseConv"
    Params = DepthwiseParams
    family = "conv"

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "DepthwiseConv")
        out = window_output("kernel", sizes, p.kernel, p.stride, 1, p.pad)
        return (*out, channels * p.multiplier)

    @staticmethod
    def param_shapes(p, x):
        sizes, channels = spatial(x, "DepthwiseConv")
        kernel = per_axis(p.kernel, len(sizes), "kernel")
        shapes = {"weight": (channels * p.multiplier, 1, *kernel)}
        if p.bias:
            shapes["bias"] = (channels * p.multiplier,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return _conv_macs(DepthwiseConv.param_shapes(p, x), y)

    @staticmethod
    def describe(p):
        return _window_text(p) + _extras(p, pad="same", multiplier=1, bias=True)


@dataclass(frozen=True)
class SeparableParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size(), 3)
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "same")
    bias: bool = arg(Flag(), True)


@register
class SeparableConv(Op):
    """Depthwise conv (no bias) then a 1x1 conv to `filters` (with bias), as Keras.

    Params: depthwise (C, 1, *kernel), pointwise (F, C, 1, ...), bias (F,).
    """

    name = "SeparableConv"
    Params = SeparableParams
    family = "conv"

    @staticmethod
    def shape(p, x):
        sizes, _ = spatial(x, "SeparableConv")
        out = window_output("kernel", sizes, p.kernel, p.stride, 1, p.pad)
        return (*out, p.filters)

    @staticmethod
    def param_shapes(p, x):
        sizes, channels = spatial(x, "SeparableConv")
        kernel = per_axis(p.kernel, len(sizes), "kernel")
        shapes = {"depthwise": (channels, 1, *kernel),
                  "pointwise": (p.filters, channels, *([1] * len(sizes)))}
        if p.bias:
            shapes["bias"] = (p.filters,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return _conv_macs(SeparableConv.param_shapes(p, x), y)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(p, pad="same", bias=True)


@dataclass(frozen=True)
class LocalParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size())
    stride: int | tuple = arg(Size(), 1)
    bias: bool = arg(Flag(), True)


@register
class LocalConv(Op):
    """Locally connected: a conv whose weights are not shared across positions (valid).

    Weight (*out_spatial, F, C, *kernel): one conv weight per output position;
    bias (F, *out_spatial).
    """

    name = "LocalConv"
    Params = LocalParams
    family = "conv"

    @staticmethod
    def shape(p, x):
        sizes, _ = spatial(x, "LocalConv")
        out = window_output("kernel", sizes, p.kernel, p.stride, 1, "valid")
        return (*out, p.filters)

    @staticmethod
    def param_shapes(p, x):
        sizes, channels = spatial(x, "LocalConv")
        out = LocalConv.shape(p, x)[:-1]
        kernel = per_axis(p.kernel, len(sizes), "kernel")
        shapes = {"weight": (*out, p.filters, channels, *kernel)}
        if p.bias:
            shapes["bias"] = (p.filters, *out)
        return shapes

    @staticmethod
    def macs(p, x, y):
        # each weight is used once per example
        return sum(math.prod(s) for s in LocalConv.param_shapes(p, x).values())

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(p, bias=True)
