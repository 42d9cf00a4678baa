"""Convolutions in 1-D, 2-D and 3-D (the input's rank decides).

Shapes in the DSL are channels-last (spatial..., C); parameters use PyTorch's layouts:
conv weight (F, C/groups, *kernel), bias (F,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.errors import ShapeMismatch
from cnndsl.kernels import as5d as _as5d  # numpy only: `check` still needs no numba
from cnndsl.kernels import from5d
from cnndsl.kernels import weight5d as _w5d
from cnndsl.ops import Op, fmt_size, fmt_stride, kaiming_uniform, register, same_size, spatial
from cnndsl.ops.args import Count, Flag, Padding, Size, arg
from cnndsl.ops.padding import (
    per_axis,
    sliding_window,
    to3,
    transposed_window,
    window3,
    window_output,
)


def _from5d(y, x):
    """Back to x's rank (1-D, 2-D or 3-D channels-last)."""
    return from5d(y, x.ndim - 2)


def _maybe_from5d(dx, x):
    return None if dx is None else _from5d(dx, x)


def _grads(w, dw, db, has_bias):
    grads = {"weight": dw.reshape(w["weight"].shape)}
    if has_bias:
        grads["bias"] = db.reshape(w["bias"].shape)
    return grads


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
    weight_layer = True

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
    def window(p, in_shapes):
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, p.dilation, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        return window3(in_shapes[0][:-1], p.kernel, p.stride, p.dilation, p.pad)

    #: the model may fold a following ReLU in: geometry then has "activation": "relu"
    fusable_activations = ("relu",)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        relu = g.get("activation") == "relu"
        # work the backward may reuse (training only); its buffers persist across steps
        keep = g.setdefault("keep", {}) if ctx.train else None
        y = _from5d(ctx.kernels("conv").conv_forward(
            _as5d(x), _w5d(w["weight"]), w.get("bias"), g["stride"], g["dilation"],
            g["pad_before"], g["pad_after"], p.groups, relu=relu, keep=keep), x)
        return y, (x, y if relu else None, keep)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x, y, keep = saved
        dx, dw, db = ctx.kernels("conv").conv_backward(
            _as5d(x), _w5d(w["weight"]), _as5d(dy), g["stride"], g["dilation"],
            g["pad_before"], g["pad_after"], p.groups, need_dx=ctx.need_dx,
            y=None if y is None else _as5d(y), keep=keep)
        return [_maybe_from5d(dx, x)], _grads(w, dw, db, p.bias)

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
    weight_layer = True

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
    def window(p, in_shapes):
        return transposed_window(in_shapes[0][:-1], p.kernel, p.stride,
                                 0 if p.pad == "valid" else p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        rank = len(in_shapes[0]) - 1
        pad = 0 if p.pad == "valid" else p.pad
        return {"stride": to3(per_axis(p.stride, rank, "stride"), 1),
                "pad": to3(per_axis(pad, rank, "pad"), 0),
                "output_pad": to3(per_axis(p.output_pad, rank, "output_pad"), 0)}

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        y = ctx.kernels("conv").convt_forward(_as5d(x), _w5d(w["weight"]), w.get("bias"),
                                              g["stride"], g["pad"], g["output_pad"])
        return _from5d(y, x), x

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        dx, dw, db = ctx.kernels("conv").convt_backward(
            _as5d(x), _w5d(w["weight"]), _as5d(dy), g["stride"], g["pad"], g["output_pad"],
            need_dx=ctx.need_dx)
        return [_maybe_from5d(dx, x)], _grads(w, dw, db, p.bias)

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
    weight_layer = True

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
    def window(p, in_shapes):
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        return window3(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        y = ctx.kernels("conv").depthwise_forward(_as5d(x), _w5d(w["weight"]), w.get("bias"),
                                                  g["stride"], g["pad_before"], g["pad_after"])
        return _from5d(y, x), x

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        dx, dw, db = ctx.kernels("conv").depthwise_backward(
            _as5d(x), _w5d(w["weight"]), _as5d(dy), g["stride"], g["pad_before"],
            g["pad_after"], need_dx=ctx.need_dx)
        return [_maybe_from5d(dx, x)], _grads(w, dw, db, p.bias)

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
    weight_layer = True

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
    def window(p, in_shapes):
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        return window3(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        kernels = ctx.kernels("conv")
        x = xs[0]
        mid = kernels.depthwise_forward(_as5d(x), _w5d(w["depthwise"]), None, g["stride"],
                                        g["pad_before"], g["pad_after"])
        y = kernels.conv_forward(mid, _w5d(w["pointwise"]), w.get("bias"), (1, 1, 1),
                                 (1, 1, 1), (0, 0, 0), (0, 0, 0), 1)
        return _from5d(y, x), (x, mid)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        kernels = ctx.kernels("conv")
        x, mid = saved
        dmid, dpoint, db = kernels.conv_backward(mid, _w5d(w["pointwise"]), _as5d(dy),
                                                 (1, 1, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0), 1)
        dx, ddepth, _ = kernels.depthwise_backward(_as5d(x), _w5d(w["depthwise"]), dmid,
                                                   g["stride"], g["pad_before"], g["pad_after"])
        grads = {"depthwise": ddepth.reshape(w["depthwise"].shape),
                 "pointwise": dpoint.reshape(w["pointwise"].shape)}
        if p.bias:
            grads["bias"] = db
        return [_from5d(dx, x)], grads

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
    weight_layer = True

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
    def window(p, in_shapes):
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, 1, "valid")

    @staticmethod
    def geometry(p, in_shapes):
        sizes, channels = spatial(in_shapes[0], "LocalConv")
        rank = len(sizes)
        out = LocalConv.shape(p, in_shapes[0])[:-1]
        kernel = per_axis(p.kernel, rank, "kernel")
        return {"stride": to3(per_axis(p.stride, rank, "stride"), 1),
                "w5": (*to3(out, 1), p.filters, channels, *to3(kernel, 1)),
                "b5": (p.filters, *to3(out, 1))}

    @staticmethod
    def init(p, x, rng):
        sizes, channels = spatial(x, "LocalConv")
        fan_in = channels * math.prod(per_axis(p.kernel, len(sizes), "kernel"))
        return kaiming_uniform(LocalConv.param_shapes(p, x), rng, fan_in=fan_in)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        bias = w["bias"].reshape(g["b5"]) if p.bias else None
        y = ctx.kernels("conv").local_forward(_as5d(x), w["weight"].reshape(g["w5"]), bias,
                                              g["stride"])
        return _from5d(y, x), x

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        dx, dw, db = ctx.kernels("conv").local_backward(
            _as5d(x), w["weight"].reshape(g["w5"]), _as5d(dy), g["stride"],
            need_dx=ctx.need_dx)
        return [_maybe_from5d(dx, x)], _grads(w, dw, db, p.bias)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(p, bias=True)
