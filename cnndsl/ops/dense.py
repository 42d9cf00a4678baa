"""Fully connected layers and Flatten. A spatial input is flattened channel-major (C, H, W)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.ops import Op, register
from cnndsl.ops.args import Count, Flag, arg


@register
class Flatten(Op):
    """x: spatial x C -> y: (C*prod(spatial),) in PyTorch's (C, H, W) order."""

    name = "Flatten"
    family = "shape"

    @staticmethod
    def shape(p, x):
        return (math.prod(x),)


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
    explain_bare = True
    aliases = ("Dense",)
    Params = FCParams
    family = "dense"

    @staticmethod
    def shape(p, x):
        return (p.units,)

    @staticmethod
    def param_shapes(p, x):
        shapes = {"weight": (p.units, math.prod(x))}
        if p.bias:
            shapes["bias"] = (p.units,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        return sum(math.prod(s) for s in FC.param_shapes(p, x).values())

    @staticmethod
    def describe(p):
        return str(p.units) + ("" if p.bias else ", bias=false")
