"""Pooling: windowed Max/Avg/L2 (floor mode) and global pools."""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.errors import ShapeMismatch
from cnndsl.kernels import as5d as _as5d  # numpy only: `check` still needs no numba
from cnndsl.kernels import from5d as _from5d
from cnndsl.ops import Op, fmt_size, fmt_stride, register, same_size, spatial
from cnndsl.ops.args import Padding, Size, arg
from cnndsl.ops.padding import (
    Window,
    pad_per_axis,
    pad_text,
    per_axis,
    resolve,
    sliding_window,
    window3,
    window_output,
)


@dataclass(frozen=True)
class PoolParams:
    size: int | tuple = arg(Size(), 2)
    stride: int | tuple | None = arg(Size(), None)  # None: the window size
    pad: str | int | tuple = arg(Padding(), 0)


class WindowPool(Op):
    """x: spatial x C -> y: spatial' x C, out = floor((in + 2*pad - size) / stride) + 1."""

    Params = PoolParams
    family = "pool"
    #: the ONNX operator (with attributes) and PyTorch's nn.{kind}{rank}d; padding is
    #: filled with `torch_fill` where the module cannot pad (asymmetric padding)
    onnx_op = ""
    onnx_attributes: tuple[tuple[str, int], ...] = ()
    torch_kind = ""
    torch_fill: str | None = None

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "pooling")
        stride = p.stride if p.stride is not None else p.size
        WindowPool._check_padding(p, sizes, stride)
        out = window_output("window", sizes, p.size, stride, 1, p.pad)
        return (*out, channels)

    @staticmethod
    def _check_padding(p, sizes, stride) -> None:
        """The one padding rule of pooling, for every form of `pad` (valid, same, full, a
        number, per axis, (before, after) pairs): at most size // 2 on each side of each
        axis, as PyTorch and ONNX require — wider padding would give windows of padding
        alone. Checked on the padding as resolved, so `pad=full` on a 3-wide window (2 per
        side) is refused, and each side of a pair on its own."""
        rank = len(sizes)
        window = per_axis(p.size, rank, "size")
        pad = p.pad if isinstance(p.pad, str) else pad_per_axis(p.pad, rank)
        resolved = resolve(sizes, window, per_axis(stride, rank, "stride"), (1,) * rank, pad)
        if resolved is None:
            return  # the window does not fit: window_output says so
        for (_, before, after), k in zip(resolved, window):
            if max(before, after) > k // 2:
                written = pad_text(p.pad)
                sides = f"{before} per side" if before == after else f"{before}+{after}"
                raise ShapeMismatch(
                    f"pad={written} pads {sides} on a {k}-wide window; pooling may pad at "
                    f"most {k // 2} (size // 2) per side",
                    hint="pad at most size // 2 per side, as PyTorch and ONNX require "
                         "(pad=same always does), or use a larger window")

    @staticmethod
    def window(p, in_shapes):
        stride = p.stride if p.stride is not None else p.size
        return sliding_window(in_shapes[0][:-1], p.size, stride, 1, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        stride = p.stride if p.stride is not None else p.size
        return window3(in_shapes[0][:-1], p.size, stride, 1, p.pad)

    @classmethod
    def onnx(cls, b, layer, xs):
        from cnndsl.export.emit import onnx_pool

        return onnx_pool(b, layer, xs, cls.onnx_op, **dict(cls.onnx_attributes))

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_pool

        return torch_pool(layer, xs, cls.torch_kind, fill=cls.torch_fill)

    @staticmethod
    def _window(g):
        return g["kernel"], g["stride"], g["pad_before"], g["pad_after"]

    @staticmethod
    def describe(p):
        text = fmt_size(p.size)
        if p.stride is not None and not same_size(p.stride, p.size):
            text += f"/{fmt_stride(p.stride)}"
        if not same_size(p.pad, 0):
            text += f", pad={pad_text(p.pad)}"
        return text


@register
class MaxPool(WindowPool):
    """Maximum over the window; padding never wins. Saves the argmax for backward."""

    name = "MaxPool"
    examples = (("7x7x3", "MaxPool(3, 2, pad=1)"),
                ("6x7x3", "MaxPool(2, pad=((0, 1), (1, 0))) -> MaxPool(3, 1, pad=(1, (0, 1)))"),
                ("7x2", "MaxPool(3, 2, pad=((0, 1),))"))
    onnx_op = "MaxPool"
    torch_kind = "MaxPool"
    torch_fill = "float('-inf')"  # padding never wins
    aliases = ("Pool",)
    explain_bare = True

    #: an activation the pool may apply to its input in the same pass (a plan's step
    #: folds a ReLU before the pool in: geometry then has "input_activation": "relu"):
    #: ReLU commutes with max, so the conv before keeps nothing for a ReLU mask
    fusable_input_activations = ("relu",)
    #: what it reduces a window with: a conv whose `fusable_pools` lists it may compute
    #: the pool itself at inference (cnndsl.ops.with_pool)
    pool_reduction = "max"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x5 = _as5d(xs[0])
        relu = g.get("input_activation") == "relu"
        out = None if ctx.out is None else (_as5d(ctx.out), None)
        y, argmax = ctx.kernels("pool").maxpool_forward(x5, *WindowPool._window(g),
                                                        relu=relu, out=out,
                                                        indices=ctx.saves)
        return _from5d(y, xs[0].ndim - 2), (argmax, x5.shape, y if relu else None)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        argmax, x_shape, y = saved
        dx = ctx.kernels("pool").maxpool_backward(_as5d(dy), argmax, x_shape, y=y)
        return [_from5d(dx, dy.ndim - 2)], {}


@register
class AvgPool(WindowPool):
    """Average over the window; zero padding counts in the divisor (PyTorch's default)."""

    name = "AvgPool"
    examples = (("7x7x3", "AvgPool(3, 2, pad=1)"),
                ("5x6x4x2", "AvgPool(3, 2, pad=((1, 0), (0, 1), 1))"))
    onnx_op = "AveragePool"
    onnx_attributes = (("count_include_pad", 1),)  # padded zeros count, as in PyTorch
    torch_kind = "AvgPool"
    plan_saves = ()  # its backward needs the input's shape only

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x5 = _as5d(xs[0])
        y = ctx.kernels("pool").avgpool_forward(x5, *WindowPool._window(g))
        return _from5d(y, xs[0].ndim - 2), x5.shape

    @staticmethod
    def backward(p, g, w, x_shape, dy, ctx):
        dx = ctx.kernels("pool").avgpool_backward(_as5d(dy), x_shape, *WindowPool._window(g))
        return [_from5d(dx, dy.ndim - 2)], {}


@register
class L2Pool(WindowPool):
    """sqrt(sum of squares) over the window."""

    name = "L2Pool"
    examples = (("6x6x3", "L2Pool(2)"),
                ("7x6x3", "L2Pool(3, 2, pad=((1, 1), (0, 1)))"))
    onnx_op = "LpPool"
    onnx_attributes = (("p", 2),)
    torch_kind = "LPPool"
    plan_saves = ("input", "output")

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x5 = _as5d(xs[0])
        y = ctx.kernels("pool").l2pool_forward(x5, *WindowPool._window(g))
        return _from5d(y, xs[0].ndim - 2), (x5, y)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x5, y = saved
        dx = ctx.kernels("pool").l2pool_backward(x5, y, _as5d(dy), *WindowPool._window(g))
        return [_from5d(dx, dy.ndim - 2)], {}


class GlobalPool(Op):
    """x: spatial x C -> y: (C,)."""

    family = "pool"
    #: the ONNX operator (then a Flatten) and PyTorch's AdaptiveXPool kind
    onnx_op = ""
    torch_kind = ""

    @staticmethod
    def shape(p, x):
        _, channels = spatial(x, "a global pool")
        return (channels,)

    @staticmethod
    def window(p, in_shapes):
        return Window.whole(in_shapes[0][:-1])

    @classmethod
    def onnx(cls, b, layer, xs):
        from cnndsl.export.emit import onnx_global

        return onnx_global(b, layer, xs, cls.onnx_op)

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_global

        return torch_global(layer, xs, cls.torch_kind)


@register
class GlobalAvgPool(GlobalPool):
    name = "GlobalAvgPool"
    examples = (("5x5x3", "GlobalAvgPool"),)
    onnx_op = "GlobalAveragePool"
    torch_kind = "Avg"
    plan_saves = ()  # its backward needs the input's shape only

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x5 = _as5d(xs[0])
        return ctx.kernels("pool").global_avgpool_forward(x5), (x5.shape, xs[0].ndim - 2)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x_shape, rank = saved
        dx = ctx.kernels("pool").global_avgpool_backward(dy, x_shape)
        return [_from5d(dx, rank)], {}


@register
class GlobalMaxPool(GlobalPool):
    name = "GlobalMaxPool"
    examples = (("5x5x3", "GlobalMaxPool"),)
    onnx_op = "GlobalMaxPool"
    torch_kind = "Max"
    plan_saves = ("indices",)  # the argmax per channel

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x5 = _as5d(xs[0])
        y, argmax = ctx.kernels("pool").global_maxpool_forward(x5)
        return y, (argmax, x5.shape, xs[0].ndim - 2)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        argmax, x_shape, rank = saved
        dx = ctx.kernels("pool").global_maxpool_backward(dy, argmax, x_shape)
        return [_from5d(dx, rank)], {}
