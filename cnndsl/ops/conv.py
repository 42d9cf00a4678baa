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
    pad_text,
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
            if isinstance(value, bool):
                text = "true" if value else "false"
            else:  # pad: the DSL's spelling, (before, after) pairs included
                text = pad_text(value) if name == "pad" else fmt_size(value)
            shown.append(f"{name}={text}")
    return (", " + ", ".join(shown)) if shown else ""


def _flip(w, rank: int):
    """A conv weight (F, C, *kernel) reversed on its `rank` kernel axes, C-contiguous:
    `flip=true` convolves with it (true convolution = cross-correlation with the flipped
    kernel), and the weight's gradient comes back through the same flip."""
    import numpy as np

    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + rank))))


def _flip_grads(grads: dict, rank: int, flip: bool, name: str = "weight") -> dict:
    """Gradients of the flipped weight -> of the weight as stored (flip is its own
    inverse)."""
    if flip:
        grads[name] = _flip(grads[name], rank)
    return grads


def _onnx_weight(b, layer, name: str) -> str:
    """The weight's initializer as cnndsl stores it, flipped in the graph (a Slice with
    step -1 on the kernel axes) for a `flip=true` layer."""
    from cnndsl.export.emit import onnx_flipped, onnx_weights

    weight = onnx_weights(b, layer, name)[0]
    return onnx_flipped(b, layer, weight) if layer.params.flip else weight


def _torch_flipped_call(layer, xs, wrap: str) -> str:
    """The forward expression of an nn.Conv{rank}d module with flip=true: F.conv with
    the module's weight flipped on the kernel axes (the state_dict keeps it unflipped)."""
    rank = layer.rank
    dims = list(range(2, 2 + rank))
    return (f"F.conv{rank}d({wrap.format(xs[0])}, SELF.weight.flip({dims}), SELF.bias, "
            "SELF.stride, SELF.padding, SELF.dilation, SELF.groups)")


@dataclass(frozen=True)
class ConvParams:
    filters: int = arg(Count(), 32)
    kernel: int | tuple = arg(Size(), 3)
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "same")
    dilation: int | tuple = arg(Size(), 1)
    groups: int = arg(Count(), 1)
    bias: bool = arg(Flag(), True)
    #: true convolution: cross-correlation with the weight flipped on every kernel axis
    flip: bool = arg(Flag(), False)


@register
class Conv(Op):
    """Convolution. x: spatial x C -> y: spatial' x F (bare `Conv` = Conv(32, 3, pad=same)).

    Cross-correlation as in PyTorch; flip=true convolves with the kernel flipped (the weight
    is stored unflipped)."""

    name = "Conv"
    examples = (("7x7x3", "Conv(4, 3, stride=2, pad=same, dilation=1, groups=1)"),
                ("7x6x3", ("Conv(4, 3, pad=((0, 1), (2, 0))) -> Conv(2, 2x3, stride=2, "
                          "pad=(1, (0, 2)))")),
                ("6x5x2", ("Conv(3, 3x2, pad=((1, 0), (0, 1)), flip=true) -> "
                          "Conv(2, 2, stride=2, dilation=1, groups=1, bias=false, flip=true)")),
                ("9x2", "Conv(3, 4, stride=2, pad=((2, 1),), flip=true)"),
                ("4x5x4x2", "Conv(2, 3, pad=((0, 2), 1, (1, 0)), groups=2, flip=true)"))
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
    #: an inference plan may fold a BatchNorm after it into its weight (whose first axis is
    #: the output channel) and bias (cnndsl.plan.fusion.fold_batchnorm)
    folds_batchnorm = True
    #: at inference the run plans may have it compute the max pool after it (and the ReLU
    #: between) in the same pass: geometry then has "pool" (cnndsl.ops.with_pool)
    fusable_pools = ("max",)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        relu = g.get("activation") == "relu"
        # work the backward may reuse (training only): buffers in this runner's work area
        # for the layer, kept across steps
        keep = ctx.work if ctx.train else None
        weight = _flip(w["weight"], x.ndim - 2) if p.flip else w["weight"]
        y = _from5d(ctx.kernels("conv").conv_forward(
            _as5d(x), _w5d(weight), w.get("bias"), g["stride"], g["dilation"],
            g["pad_before"], g["pad_after"], p.groups, relu=relu, keep=keep,
            out=None if ctx.out is None else _as5d(ctx.out), pool=g.get("pool")), x)
        return y, (x, y if relu else None, keep)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x, y, keep = saved
        rank = x.ndim - 2
        weight = _flip(w["weight"], rank) if p.flip else w["weight"]
        dx, dw, db = ctx.kernels("conv").conv_backward(
            _as5d(x), _w5d(weight), _as5d(dy), g["stride"], g["dilation"],
            g["pad_before"], g["pad_after"], p.groups, need_dx=ctx.need_dx,
            y=None if y is None else _as5d(y), keep=keep)
        return [_maybe_from5d(dx, x)], _flip_grads(_grads(w, dw, db, p.bias), rank, p.flip)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(
            p, pad="same", dilation=1, groups=1, bias=True, flip=False)

    @classmethod
    def onnx(cls, b, layer, xs):
        """Conv; pads = before + after, so 'same' and pairs may be asymmetric; flip=true
        flips the weight in the graph."""
        from cnndsl.export.emit import onnx_weights, onnx_window

        weights = [_onnx_weight(b, layer, "weight"), *onnx_weights(b, layer, "bias")]
        return b.node("Conv", [xs[0], *weights], layer.name,
                      group=layer.params.groups, **onnx_window(layer, dilation=True))

    @classmethod
    def pytorch(cls, layer, xs):
        """nn.Conv{rank}d; asymmetric padding as an F.pad before it; flip=true as F.conv
        with the module's weight flipped."""
        from cnndsl.export.emit import call, padding, size

        p, rank, channels = layer.params, layer.rank, layer.in_shapes[0][-1]
        pad, wrap = padding(layer)
        args = [str(channels), str(p.filters), f"kernel_size={size(layer.per_rank('kernel'))}"]
        if set(layer.per_rank("stride")) != {1}:
            args.append(f"stride={size(layer.per_rank('stride'))}")
        if pad:
            args.append(f"padding={pad}")
        if set(layer.per_rank("dilation")) != {1}:
            args.append(f"dilation={size(layer.per_rank('dilation'))}")
        if p.groups != 1:
            args.append(f"groups={p.groups}")
        if not p.bias:
            args.append("bias=False")
        module = f"nn.Conv{rank}d({', '.join(args)})"
        if p.flip:
            return module, _torch_flipped_call(layer, xs, wrap)
        return module, call(layer, xs, wrap)


@dataclass(frozen=True)
class ConvTParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size())
    stride: int | tuple = arg(Size(), 1)
    pad: int | tuple = arg(Padding(modes=("valid",), pairs=False, refuse_pairs=(
        "a ConvT's pad crops its output, the same on both sides (PyTorch's "
        "ConvTranspose padding): give one number, or one per axis such as (1, 0); "
        "output_pad adds one row after")), 0)
    output_pad: int | tuple = arg(Size(minimum=0), 0)
    bias: bool = arg(Flag(), True)


@register
class ConvT(Op):
    """Transposed convolution. out = (in-1)*stride - 2*pad + kernel + output_pad.

    Weight (C, F, *kernel) as PyTorch's ConvTranspose.
    """

    name = "ConvT"
    examples = (("4x4x3", "ConvT(4, 3, stride=2, pad=1, output_pad=1)"),)
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

    @classmethod
    def onnx(cls, b, layer, xs):
        """ConvTranspose (pads, output_padding)."""
        from cnndsl.export.emit import onnx_weights

        kernel = layer.weights["weight"].shape[2:]
        pad = list(layer.per_rank("pad"))
        return b.node("ConvTranspose", [xs[0], *onnx_weights(b, layer, "weight", "bias")],
                      layer.name, kernel_shape=list(kernel),
                      strides=list(layer.per_rank("stride")), pads=pad + pad,
                      output_padding=list(layer.per_rank("output_pad")))

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call, size

        p = layer.params
        kernel = layer.weights["weight"].shape[2:]
        args = [str(layer.in_shapes[0][-1]), str(p.filters), f"kernel_size={size(kernel)}"]
        for key, name in (("stride", "stride"), ("pad", "padding"),
                          ("output_pad", "output_padding")):
            default = 1 if key == "stride" else 0
            if set(layer.per_rank(key)) != {default}:
                args.append(f"{name}={size(layer.per_rank(key))}")
        if not p.bias:
            args.append("bias=False")
        return f"nn.ConvTranspose{layer.rank}d({', '.join(args)})", call(layer, xs)


@dataclass(frozen=True)
class DepthwiseParams:
    kernel: int | tuple = arg(Size(), 3)
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "same")
    multiplier: int = arg(Count(), 1)
    bias: bool = arg(Flag(), True)
    #: true convolution: each channel's kernel flipped on every axis (stored unflipped)
    flip: bool = arg(Flag(), False)


@register
class DepthwiseConv(Op):
    """One filter bank per channel (groups = C). y: spatial' x C*multiplier.

    Weight (C*multiplier, 1, *kernel).
    """

    name = "DepthwiseConv"
    examples = (("7x7x3", "DepthwiseConv(3, stride=2, multiplier=2)"),
                ("7x6x2", "DepthwiseConv(3x2, pad=((2, 0), (0, 1)), multiplier=2, flip=true)"),
                ("8x2", "DepthwiseConv(3, stride=2, pad=((0, 2),))"))
    Params = DepthwiseParams
    family = "conv"
    weight_layer = True
    #: an inference plan may fold a BatchNorm after it (see Conv)
    folds_batchnorm = True

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
        weight = _flip(w["weight"], x.ndim - 2) if p.flip else w["weight"]
        y = ctx.kernels("conv").depthwise_forward(_as5d(x), _w5d(weight), w.get("bias"),
                                                  g["stride"], g["pad_before"], g["pad_after"])
        return _from5d(y, x), x

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        rank = x.ndim - 2
        weight = _flip(w["weight"], rank) if p.flip else w["weight"]
        dx, dw, db = ctx.kernels("conv").depthwise_backward(
            _as5d(x), _w5d(weight), _as5d(dy), g["stride"], g["pad_before"],
            g["pad_after"], need_dx=ctx.need_dx)
        return [_maybe_from5d(dx, x)], _flip_grads(_grads(w, dw, db, p.bias), rank, p.flip)

    @staticmethod
    def describe(p):
        return _window_text(p) + _extras(p, pad="same", multiplier=1, bias=True, flip=False)

    @classmethod
    def onnx(cls, b, layer, xs):
        """Conv with group = C (the weight flipped in the graph for flip=true)."""
        from cnndsl.export.emit import onnx_weights, onnx_window

        weights = [_onnx_weight(b, layer, "weight"), *onnx_weights(b, layer, "bias")]
        return b.node("Conv", [xs[0], *weights], layer.name,
                      group=layer.in_shapes[0][-1], **onnx_window(layer))

    @classmethod
    def pytorch(cls, layer, xs):
        """nn.Conv{rank}d with groups = C (F.conv with the weight flipped for flip=true)."""
        from cnndsl.export.emit import call, padding, size

        rank, channels = layer.rank, layer.in_shapes[0][-1]
        pad, wrap = padding(layer)
        args = [str(channels), str(layer.shape[-1]),
                f"kernel_size={size(layer.per_rank('kernel'))}"]
        if set(layer.per_rank("stride")) != {1}:
            args.append(f"stride={size(layer.per_rank('stride'))}")
        if pad:
            args.append(f"padding={pad}")
        args.append(f"groups={channels}")
        if not layer.params.bias:
            args.append("bias=False")
        module = f"nn.Conv{rank}d({', '.join(args)})"
        if layer.params.flip:
            return module, _torch_flipped_call(layer, xs, wrap)
        return module, call(layer, xs, wrap)


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
    examples = (("6x6x3", "SeparableConv(4, 3)"),
                ("6x5x2", "SeparableConv(3, 3, stride=2, pad=((0, 1), (1, 1)))"))
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

    @classmethod
    def onnx(cls, b, layer, xs):
        """Conv(group=C) -> Conv 1x1."""
        from cnndsl.export.emit import onnx_weights, onnx_window

        depthwise, pointwise, *bias = onnx_weights(b, layer, "depthwise", "pointwise", "bias")
        mid = b.node("Conv", [xs[0], depthwise], f"{layer.name}/depthwise",
                     group=layer.in_shapes[0][-1], **onnx_window(layer))
        return b.node("Conv", [mid, pointwise, *bias], layer.name,
                      kernel_shape=[1] * layer.rank)

    @classmethod
    def pytorch(cls, layer, xs):
        """The SeparableConv helper module (`pytorch_class`)."""
        from cnndsl.export.emit import call, padding

        pad, wrap = padding(layer)
        before = tuple(layer.per_rank("pad_before")) if pad else (0,) * layer.rank
        args = [str(layer.in_shapes[0][-1]), str(layer.params.filters),
                f"kernel_size={tuple(layer.per_rank('kernel'))}",
                f"stride={tuple(layer.per_rank('stride'))}", f"padding={before}"]
        if not layer.params.bias:
            args.append("bias=False")
        return f"SeparableConv({', '.join(args)})", call(layer, xs, wrap)

    pytorch_class = '''class SeparableConv(nn.Module):
    """Depthwise conv (no bias), then a 1x1 conv to `filters` with bias (cnndsl's layout:
    depthwise (C, 1, *kernel), pointwise (filters, C, 1, ...), bias (filters,))."""

    def __init__(self, channels, filters, kernel_size, stride, padding, bias=True):
        super().__init__()
        rank = len(kernel_size)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        self.stride, self.padding = stride, padding
        self.depthwise = nn.Parameter(torch.empty(channels, 1, *kernel_size))
        self.pointwise = nn.Parameter(torch.empty(filters, channels, *[1] * rank))
        self.bias = nn.Parameter(torch.empty(filters)) if bias else None
        for weight in (self.depthwise, self.pointwise):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if bias:
            nn.init.uniform_(self.bias, -channels ** -0.5, channels ** -0.5)

    def forward(self, x):
        x = self.conv(x, self.depthwise, None, self.stride, self.padding, groups=x.shape[1])
        return self.conv(x, self.pointwise, self.bias)'''


@dataclass(frozen=True)
class LocalParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size())
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "valid")
    bias: bool = arg(Flag(), True)


def _pad5(x5, before, after):
    """x: N×D×H×W×C with zeros added before/after on D, H, W ((D, H, W) int triples);
    x itself when there is nothing to add."""
    if not any(before) and not any(after):
        return x5
    import numpy as np

    return np.pad(x5, ((0, 0), *zip(before, after), (0, 0)))


def _local_pads(g) -> tuple:
    """A LocalConv geometry's (pad_before, pad_after) triples (absent: no padding)."""
    return g.get("pad_before", (0, 0, 0)), g.get("pad_after", (0, 0, 0))


def _crop5(dx5, before, after):
    """The adjoint of `_pad5`: the gradient of the unpadded input (C-contiguous)."""
    if dx5 is None or (not any(before) and not any(after)):
        return dx5
    import numpy as np

    d, h, w = (slice(b, n - a) for b, a, n in zip(before, after, dx5.shape[1:4]))
    return np.ascontiguousarray(dx5[:, d, h, w, :])


@register
class LocalConv(Op):
    """Locally connected: a conv whose weights are not shared across positions (valid by
    default; `pad` as Conv's adds zeros first).

    Weight (*out_spatial, F, C, *kernel): one conv weight per output position;
    bias (F, *out_spatial).
    """

    name = "LocalConv"
    examples = (("6x6x2", "LocalConv(3, 3, stride=1)"),
                ("5x6x2", ("LocalConv(3, 3, stride=2, pad=((0, 1), (1, 0))) -> "
                          "LocalConv(2, 2, pad=same, bias=false)")),
                ("7x2", "LocalConv(2, 3, stride=2, pad=1)"))
    Params = LocalParams
    family = "conv"
    weight_layer = True

    @staticmethod
    def shape(p, x):
        sizes, _ = spatial(x, "LocalConv")
        out = window_output("kernel", sizes, p.kernel, p.stride, 1, p.pad)
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
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        sizes, channels = spatial(in_shapes[0], "LocalConv")
        rank = len(sizes)
        out = LocalConv.shape(p, in_shapes[0])[:-1]
        kernel = per_axis(p.kernel, rank, "kernel")
        window = window3(sizes, p.kernel, p.stride, 1, p.pad)
        geometry = {"stride": to3(per_axis(p.stride, rank, "stride"), 1),
                    "w5": (*to3(out, 1), p.filters, channels, *to3(kernel, 1)),
                    "b5": (p.filters, *to3(out, 1))}
        # padding only where there is some: an unpadded layer's geometry stays as it was
        # before LocalConv took `pad`, so weights files saved then still load
        if any(window["pad_before"]) or any(window["pad_after"]):
            geometry |= {"pad_before": window["pad_before"], "pad_after": window["pad_after"]}
        return geometry

    @staticmethod
    def init(p, x, rng):
        sizes, channels = spatial(x, "LocalConv")
        fan_in = channels * math.prod(per_axis(p.kernel, len(sizes), "kernel"))
        return kaiming_uniform(LocalConv.param_shapes(p, x), rng, fan_in=fan_in)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        bias = w["bias"].reshape(g["b5"]) if p.bias else None
        padded = _pad5(_as5d(x), *_local_pads(g))
        y = ctx.kernels("conv").local_forward(padded, w["weight"].reshape(g["w5"]), bias,
                                              g["stride"])
        return _from5d(y, x), (x, padded)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x, padded = saved
        dx, dw, db = ctx.kernels("conv").local_backward(
            padded, w["weight"].reshape(g["w5"]), _as5d(dy), g["stride"],
            need_dx=ctx.need_dx)
        dx = _crop5(dx, *_local_pads(g))
        return [_maybe_from5d(dx, x)], _grads(w, dw, db, p.bias)

    @staticmethod
    def describe(p):
        return f"{p.filters}, {_window_text(p)}" + _extras(p, pad="valid", bias=True)

    @classmethod
    def onnx(cls, b, layer, xs):
        """y[n, f, o] = sum_{c,k} w[o, f, c, k] x[n, c, o*s + k] + b[f, o], as a composition:
        a grouped Conv with one-hot kernels gathers the patches (exact: one product by 1 per
        output) -> Reshape -> one Einsum applies a weight per output position -> Reshape
        -> Add bias."""
        import numpy as np

        from cnndsl.export.emit import onnx_weights

        w = layer.weights["weight"]  # (*out, F, C, *kernel)
        rank = layer.rank
        out, filters, channels, kernel = (w.shape[:rank], w.shape[rank], w.shape[rank + 1],
                                          w.shape[rank + 2:])
        taps, positions = math.prod(kernel), math.prod(out)
        onehot = np.zeros((channels * taps, 1, *kernel), np.float32)
        for c in range(channels):
            for t in range(taps):
                onehot[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1.0
        gather = b.weight(b.fresh(f"{layer.name}/patch_kernel"), onehot)
        pads = {}
        if "pad_before" in layer.geometry:
            pads["pads"] = [*layer.per_rank("pad_before"), *layer.per_rank("pad_after")]
        patches = b.node("Conv", [xs[0], gather], f"{layer.name}/patches", group=channels,
                         kernel_shape=list(kernel), strides=list(layer.per_rank("stride")),
                         **pads)
        flat = b.node("Reshape", [patches, b.constant(f"{layer.name}/patches_shape",
                                                      [0, channels * taps, positions])],
                      f"{layer.name}/patches_flat")
        weight = b.node("Reshape", [*onnx_weights(b, layer, "weight"), b.constant(
            f"{layer.name}/weight_shape", [positions, filters, channels * taps])],
            f"{layer.name}/weight_flat")
        y = b.node("Einsum", [flat, weight], f"{layer.name}/matmul", equation="nkp,pfk->nfp")
        y = b.node("Reshape", [y, b.constant(f"{layer.name}/shape", [0, filters, *out])],
                   layer.name if "bias" not in layer.weights else f"{layer.name}/nobias")
        if "bias" in layer.weights:  # (F, *out) broadcasts over the batch
            y = b.node("Add", [y, *onnx_weights(b, layer, "bias")], layer.name)
        return y

    @classmethod
    def pytorch(cls, layer, xs):
        """The LocalConv helper module (`pytorch_class`), after an F.pad where padded."""
        from cnndsl.export.emit import call, pad_call

        w = layer.weights["weight"]
        rank = layer.rank
        args = [str(layer.in_shapes[0][-1]), str(layer.params.filters),
                f"kernel_size={tuple(w.shape[rank + 2:])}",
                f"stride={tuple(layer.per_rank('stride'))}", f"out_size={tuple(w.shape[:rank])}"]
        if not layer.params.bias:
            args.append("bias=False")
        wrap = pad_call(layer) if "pad_before" in layer.geometry else "{}"
        return f"LocalConv({', '.join(args)})", call(layer, xs, wrap)

    pytorch_class = '''class LocalConv(nn.Module):
    """Locally connected layer: a valid conv with one weight per output position
    (cnndsl's layout: weight (*out_size, filters, C, *kernel), bias (filters, *out_size))."""

    def __init__(self, channels, filters, kernel_size, stride, out_size, bias=True):
        super().__init__()
        self.kernel_size, self.stride, self.out_size = kernel_size, stride, out_size
        self.weight = nn.Parameter(torch.empty(*out_size, filters, channels, *kernel_size))
        self.bias = nn.Parameter(torch.empty(filters, *out_size)) if bias else None
        bound = (channels * math.prod(kernel_size)) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if bias:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            x = x.unfold(2 + axis, k, s)  # (N, C, *out_size, *kernel_size)
        n, c = x.shape[:2]
        positions, taps = math.prod(self.out_size), math.prod(self.kernel_size)
        patches = x.reshape(n, c, positions, taps)
        w = self.weight.reshape(positions, -1, c, taps)
        y = torch.einsum("ncpk,pfck->nfp", patches, w).reshape(n, -1, *self.out_size)
        return y if self.bias is None else y + self.bias'''
