"""Element-wise activations and Softmax (over channels, the last declared axis)."""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.ops import Op, register
from cnndsl.ops.args import Real, arg


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
    onnx_op = "Relu"
    torch_module = "nn.ReLU()"
    #: what a preceding layer with `fusable_activations` may fold in (cnndsl.model)
    activation = "relu"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").relu_forward(xs[0])
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
    Params = LeakyParams

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
    onnx_op = "Sigmoid"
    torch_module = "nn.Sigmoid()"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").sigmoid_forward(xs[0])
        return y, y

    @staticmethod
    def backward(p, g, w, y, dy, ctx):
        return [ctx.kernels("elementwise").sigmoid_backward(y, dy)], {}


@register
class Tanh(Elementwise):
    name = "Tanh"
    onnx_op = "Tanh"
    torch_module = "nn.Tanh()"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = ctx.kernels("elementwise").tanh_forward(xs[0])
        return y, y

    @staticmethod
    def backward(p, g, w, y, dy, ctx):
        return [ctx.kernels("elementwise").tanh_backward(y, dy)], {}


@register
class Softmax(Elementwise):
    """Probabilities over the channel axis (training fuses it with cross-entropy)."""

    name = "Softmax"

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
