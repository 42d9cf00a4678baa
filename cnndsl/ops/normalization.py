"""BatchNorm and Dropout."""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.ops import Op, register
from cnndsl.ops.args import Real, arg


@dataclass(frozen=True)
class BatchNormParams:
    eps: float = arg(Real(0.0, 1.0, high_open=True), 1e-5)
    momentum: float = arg(Real(0.0, 1.0), 0.1)


@register
class BatchNorm(Op):
    """Per-channel normalisation over batch and spatial axes. x, y: spatial x C or (C,).

    weight/bias (C,) are parameters; running_mean/running_var (C,) are buffers.
    """

    name = "BatchNorm"
    Params = BatchNormParams
    family = "norm"

    @staticmethod
    def shape(p, x):
        return x

    @staticmethod
    def param_shapes(p, x):
        return {"weight": (x[-1],), "bias": (x[-1],)}

    @staticmethod
    def buffer_shapes(p, x):
        return {"running_mean": (x[-1],), "running_var": (x[-1],)}

    @staticmethod
    def describe(p):
        return "" if (p.eps, p.momentum) == (1e-5, 0.1) else f"eps={p.eps:g}, momentum={p.momentum:g}"


@dataclass(frozen=True)
class DropoutParams:
    p: float = arg(Real(0.0, 1.0, high_open=True), 0.5)


@register
class Dropout(Op):
    """Zero each element with probability p in training (scaled by 1/(1-p)); identity otherwise."""

    name = "Dropout"
    Params = DropoutParams
    family = "norm"

    @staticmethod
    def shape(p, x):
        return x

    @staticmethod
    def describe(p):
        return f"{p.p:g}"
