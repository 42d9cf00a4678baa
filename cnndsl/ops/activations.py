"""Element-wise activations, Softmax (over channels, the last declared axis) and Maxout
(a max over groups of channels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnndsl.errors import ShapeMismatch
from cnndsl.ops import Op, at_most_3d, register
from cnndsl.ops.args import Count, Real, arg


class Elementwise(Op):
    """y has x's shape."""

    family = "activation"
    #: the ONNX operator and the PyTorch module that compute it; a kind with arguments
    #: (LeakyReLU, Softmax) writes its own `onnx` and `pytorch` hooks instead
    onnx_op: str | None = None
    torch_module: str | None = None

    @staticmethod
    def shape(p, x):
        return x

    @classmethod
    def onnx(cls, b, layer, xs):
        if cls.onnx_op is None:
            return Op.onnx.__func__(cls, b, layer, xs)  # the named "no ONNX emitter" error
        from cnndsl.export.emit import onnx_single

        return onnx_single(b, layer, xs, cls.onnx_op)

    @classmethod
    def pytorch(cls, layer, xs):
        if cls.torch_module is None:
            return Op.pytorch.__func__(cls, layer, xs)
        from cnndsl.export.emit import torch_simple

        return torch_simple(layer, xs, cls.torch_module)


@register
class ReLU(Elementwise):
    name = "ReLU"
    examples = (("5x5x3", "ReLU"),)
    onnx_op = "Relu"
    torch_module = "nn.ReLU()"
    #: what a preceding layer with `fusable_activations` may fold in (cnndsl.model)
    activation = "relu"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").relu_forward(xs[0], out=ctx.out)
        return y, y

    @staticmethod
    def backward(p, g, w, y, dy, ctx):
        return [ctx.kernels("elementwise").relu_backward(y, dy)], {}


@dataclass(frozen=True)
class LeakyParams:
    alpha: float = arg(Real(0.0, 1.0), 0.01)


@register
class LeakyReLU(Elementwise):
    """y = x if x > 0 else alpha * x."""

    name = "LeakyReLU"
    examples = (("5x5x3", "LeakyReLU(0.1)"),)
    Params = LeakyParams
    plan_saves = ("input",)  # its backward reads x's sign, not y's

    @staticmethod
    def describe(p):
        return f"{p.alpha:g}"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        return ctx.kernels("elementwise").leaky_relu_forward(xs[0], p.alpha), xs[0]

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        return [ctx.kernels("elementwise").leaky_relu_backward(x, dy, p.alpha)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        from cnndsl.export.emit import onnx_single

        return onnx_single(b, layer, xs, "LeakyRelu", alpha=layer.params.alpha)

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_simple

        return torch_simple(layer, xs, "nn.LeakyReLU({p.alpha!r})")


@register
class Sigmoid(Elementwise):
    name = "Sigmoid"
    examples = (("5x5x3", "Sigmoid"),)
    onnx_op = "Sigmoid"
    torch_module = "nn.Sigmoid()"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").sigmoid_forward(xs[0], out=ctx.out)
        return y, y

    @staticmethod
    def backward(p, g, w, y, dy, ctx):
        return [ctx.kernels("elementwise").sigmoid_backward(y, dy)], {}


@register
class Tanh(Elementwise):
    name = "Tanh"
    examples = (("5x5x3", "Tanh"),)
    onnx_op = "Tanh"
    torch_module = "nn.Tanh()"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").tanh_forward(xs[0], out=ctx.out)
        return y, y

    @staticmethod
    def backward(p, g, w, y, dy, ctx):
        return [ctx.kernels("elementwise").tanh_backward(y, dy)], {}


@register
class Softmax(Elementwise):
    """Probabilities over the channel axis (training fuses it with cross-entropy)."""

    name = "Softmax"
    gives_probabilities = True
    examples = (("5x5x3", "Softmax"),)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        y = ctx.kernels("loss").softmax_forward(x.reshape(-1, x.shape[-1]))
        return y.reshape(x.shape), y

    @staticmethod
    def backward(p, g, w, y2, dy, ctx):
        dx = ctx.kernels("loss").softmax_backward(y2, dy.reshape(y2.shape))
        return [dx.reshape(dy.shape)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        from cnndsl.export.emit import onnx_single

        return onnx_single(b, layer, xs, "Softmax", axis=1)  # channels, inside the graph

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_simple

        return torch_simple(layer, xs, "nn.Softmax(dim=1)")  # over channels


@dataclass(frozen=True)
class MaxoutParams:
    pieces: int = arg(Count(1))


@register
class Maxout(Op):
    """Maxout units (Goodfellow et al. 2013), cross-channel pooling: x (N, *spatial, C)
    channels-last, or flat (N, C) -> y (N, *spatial, C / pieces), where output channel j is
    the max over input channels [j*pieces, (j+1)*pieces) (consecutive channels, at the same
    position). Backward sends dy to the argmax of each group (the first one on ties).
    Plain NumPy: a reshape and a max, no kernel of its own."""

    name = "Maxout"
    examples = (("5x5x4", "Maxout(2)"),)
    Params = MaxoutParams
    family = "activation"

    @staticmethod
    def shape(p, x):
        at_most_3d(x)
        channels = x[-1]
        if channels % p.pieces:
            raise ShapeMismatch(
                f"pieces={p.pieces} does not divide the input channels ({channels})",
                hint=f"give a number of pieces that divides {channels}, or make the layer "
                     f"before give a multiple of {p.pieces} channels")
        return (*x[:-1], channels // p.pieces)

    @staticmethod
    def describe(p):
        return str(p.pieces)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        groups = x.reshape(*x.shape[:-1], x.shape[-1] // p.pieces, p.pieces)
        winner = groups.argmax(axis=-1)  # the first maximum on ties
        y = np.take_along_axis(groups, winner[..., None], axis=-1)[..., 0]
        return y, (winner, x.shape)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        winner, x_shape = saved
        if not ctx.need_dx:
            return [None], {}
        dx = np.zeros((*dy.shape, p.pieces), dtype=dy.dtype)
        np.put_along_axis(dx, winner[..., None], dy[..., None], axis=-1)
        return [dx.reshape(x_shape)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        """Reshape (N, C, *S) to (N, C/p, p, prod(S)), MaxPool a (p, 1) window (any opset
        from 13; ReduceMax moved its axes to an input at 18), then Reshape to (N, C/p, *S)."""
        pieces, (*sizes, channels) = layer.params.pieces, layer.in_shapes[0]
        groups = b.constant(f"{layer.name}/groups_shape",
                            [0, channels // pieces, pieces, -1])
        grouped = b.node("Reshape", [xs[0], groups], f"{layer.name}/groups")
        pooled = b.node("MaxPool", [grouped], f"{layer.name}/max", kernel_shape=[pieces, 1])
        out = b.constant(f"{layer.name}/shape", [0, channels // pieces, *sizes])
        return b.node("Reshape", [pooled, out], layer.name)

    @classmethod
    def pytorch(cls, layer, xs):
        """Inline: channels-first (N, C, *S) -> (N, C/p, p, *S), the max over the pieces."""
        pieces, channels = layer.params.pieces, layer.in_shapes[0][-1]
        return None, f"{xs[0]}.unflatten(1, ({channels // pieces}, {pieces})).amax(dim=2)"
