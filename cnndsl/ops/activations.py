"""Element-wise activations and Softmax (over channels, the last declared axis)."""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.ops import Op, register
from cnndsl.ops.args import Real, arg


class Elementwise(Op):
    """y has x's shape."""

    family = "activation"

    @staticmethod
    def shape(p, x):
        return x


@register
class ReLU(Elementwise):
    name = "ReLU"


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


@register
class Sigmoid(Elementwise):
    name = "Sigmoid"


@register
class Tanh(Elementwise):
    name = "Tanh"


@register
class Softmax(Elementwise):
    """Probabilities over the channel axis (training fuses it with cross-entropy)."""

    name = "Softmax"
