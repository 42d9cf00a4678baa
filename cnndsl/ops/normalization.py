"""BatchNorm and Dropout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    splits_batch_in_training = False  # batch statistics

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
    def init(p, x, rng):
        return {"weight": np.ones(x[-1], np.float32), "bias": np.zeros(x[-1], np.float32)}

    @staticmethod
    def init_buffers(p, x):
        return {"running_mean": np.zeros(x[-1], np.float32),
                "running_var": np.ones(x[-1], np.float32)}

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        x2 = x.reshape(-1, x.shape[-1])
        kernels = ctx.kernels("norm")
        if not ctx.train:
            y2 = kernels.batchnorm_eval_forward(x2, w["weight"], w["bias"], w["running_mean"],
                                                w["running_var"], p.eps)
            return y2.reshape(x.shape), (False, x2, None, None)
        y2, mean, var, inv_std = kernels.batchnorm_train_forward(x2, w["weight"], w["bias"],
                                                                 p.eps)
        # running statistics as PyTorch: unbiased variance, in place (they are buffers)
        count = x2.shape[0]
        unbiased = var * (count / max(count - 1, 1))
        w["running_mean"] *= 1 - p.momentum
        w["running_mean"] += p.momentum * mean
        w["running_var"] *= 1 - p.momentum
        w["running_var"] += p.momentum * unbiased
        return y2.reshape(x.shape), (True, x2, mean, inv_std)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        trained, x2, mean, inv_std = saved
        dy2 = dy.reshape(x2.shape)
        kernels = ctx.kernels("norm")
        if trained:
            dx2, dgamma, dbeta = kernels.batchnorm_backward(x2, dy2, w["weight"], mean, inv_std)
        else:
            dx2, dgamma, dbeta = kernels.batchnorm_eval_backward(
                x2, dy2, w["weight"], w["running_mean"], w["running_var"], p.eps)
        return [dx2.reshape(dy.shape)], {"weight": dgamma, "bias": dbeta}

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
    splits_batch_in_training = False  # one mask stream from ctx.rng, as a single call draws it

    @staticmethod
    def shape(p, x):
        return x

    @staticmethod
    def describe(p):
        return f"{p.p:g}"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        if not ctx.train or p.p == 0:
            return xs[0], None
        return ctx.kernels("elementwise").dropout_forward(xs[0], p.p, ctx.rng)

    @staticmethod
    def backward(p, g, w, mask, dy, ctx):
        if mask is None:
            return [dy], {}
        return [ctx.kernels("elementwise").dropout_backward(dy, mask)], {}
