"""Fully connected layers and Flatten. A spatial input is flattened channel-major (C, H, W)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnndsl.ops import Op, register
from cnndsl.ops.args import Count, Flag, arg
from cnndsl.ops.padding import Window


def flatten(x: np.ndarray) -> np.ndarray:
    """(N, *spatial, C) -> (N, C*prod(spatial)) in PyTorch's channel-major order."""
    if x.ndim == 2:
        return x
    channels_first = np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(channels_first).reshape(x.shape[0], -1)


def unflatten(dx2: np.ndarray, shape) -> np.ndarray:
    """The inverse of `flatten` for a gradient: (N, F) -> (N, *spatial, C)."""
    if len(shape) == 2:
        return dx2
    n, *spatial, c = shape
    return np.ascontiguousarray(np.moveaxis(dx2.reshape(n, c, *spatial), 1, -1))


@register
class Flatten(Op):
    """x: spatial x C -> y: (C*prod(spatial),) in PyTorch's (C, H, W) order."""

    name = "Flatten"
    examples = (("3x4x2", "Flatten"),)
    family = "shape"

    @staticmethod
    def shape(p, x):
        return (math.prod(x),)

    @staticmethod
    def window(p, in_shapes):
        return Window.whole(in_shapes[0][:-1])

    @staticmethod
    def forward(p, g, w, xs, ctx):
        return flatten(xs[0]), xs[0].shape

    @staticmethod
    def backward(p, g, w, x_shape, dy, ctx):
        return [unflatten(dy, x_shape)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        if not layer.rank:
            return xs[0]
        return b.node("Flatten", [xs[0]], layer.name, axis=1)  # channel-major, as cnndsl

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call

        return "nn.Flatten()", call(layer, xs)


@dataclass(frozen=True)
class FCParams:
    units: int = arg(Count(), 128)
    bias: bool = arg(Flag(), True)


@register
class FC(Op):
    """y = x W^T + b. x: (F_in,) or spatial (flattened first) -> y: (units,).

    Weight (units, F_in), bias (units,). Bare `FC` = FC(128).
    """

    name = "FC"
    examples = (("3x4x2", "FC(5)"),)
    explain_bare = True
    aliases = ("Dense",)
    Params = FCParams
    family = "dense"
    weight_layer = True

    @staticmethod
    def shape(p, x):
        return (p.units,)

    @staticmethod
    def window(p, in_shapes):
        return Window.whole(in_shapes[0][:-1])

    @staticmethod
    def param_shapes(p, x):
        shapes = {"weight": (p.units, math.prod(x))}
        if p.bias:
            shapes["bias"] = (p.units,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return sum(math.prod(s) for s in FC.param_shapes(p, x).values())

    #: the model may fold a following ReLU in: geometry then is {"activation": "relu"}
    fusable_activations = ("relu",)
    #: an inference plan may fold a BatchNorm after it (see Conv)
    folds_batchnorm = True

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x2 = flatten(xs[0])
        y = np.matmul(x2, w["weight"].T, out=ctx.out)
        relu = g is not None and g.get("activation") == "relu"
        if relu:  # bias and ReLU in one pass over y, in place
            bias = w["bias"] if p.bias else np.zeros(y.shape[1], y.dtype)
            ctx.kernels("elementwise").bias_relu_forward(y, bias, out=y)
        elif p.bias:
            y += w["bias"]
        return y, (x2, xs[0].shape, y if relu else None)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        x2, x_shape, y = saved
        if y is not None:  # the folded ReLU's backward
            dy = ctx.kernels("elementwise").relu_backward(y, dy)
        grads = {"weight": dy.T @ x2}
        if p.bias:
            grads["bias"] = dy.sum(axis=0)
        return [unflatten(dy @ w["weight"], x_shape)], grads

    @classmethod
    def onnx(cls, b, layer, xs):
        from cnndsl.export.emit import onnx_weights

        x = b.node("Flatten", [xs[0]], f"{layer.name}/flatten", axis=1) if layer.rank else xs[0]
        return b.node("Gemm", [x, *onnx_weights(b, layer, "weight", "bias")], layer.name,
                      transB=1)

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call

        units, features = layer.weights["weight"].shape
        bias = "" if layer.params.bias else ", bias=False"
        wrap = "{}.flatten(1)" if layer.rank else "{}"  # channel-major, as cnndsl
        return f"nn.Linear({features}, {units}{bias})", call(layer, xs, wrap)

    @staticmethod
    def describe(p):
        return str(p.units) + ("" if p.bias else ", bias=false")
