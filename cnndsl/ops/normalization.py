"""BatchNorm and Dropout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnndsl.ops import Op, register
from cnndsl.ops.args import Real, arg


@dataclass(frozen=True)
class BatchNormParams:
    eps: float = arg(Real(0.0, 1.0, high_open=True, low_open=True), 1e-5)
    momentum: float = arg(Real(0.0, 1.0), 0.1)


@register
class BatchNorm(Op):
    """Per-channel normalisation over batch and spatial axes. x, y: spatial x C or (C,).

    weight/bias (C,) are parameters; running_mean/running_var (C,) are buffers.
    """

    name = "BatchNorm"
    examples = (("5x5x3", "BatchNorm"),)
    Params = BatchNormParams
    family = "norm"
    pytorch_counters = ("num_batches_tracked",)

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
        if ctx.shard is None:
            y2, mean, var, inv_std = kernels.batchnorm_train_forward(
                x2, w["weight"], w["bias"], p.eps)
            count = x2.shape[0]
        else:
            y2, mean, var, inv_std, count = BatchNorm._shard_forward(p, w, x2, ctx)
        if ctx.shard is None or ctx.shard.index == 0:  # once per batch
            # running statistics as PyTorch: unbiased variance, in place (they are buffers)
            unbiased = var * (count / max(count - 1, 1))
            w["running_mean"] *= 1 - p.momentum
            w["running_mean"] += p.momentum * mean
            w["running_var"] *= 1 - p.momentum
            w["running_var"] += p.momentum * unbiased
        return y2.reshape(x.shape), (True, x2, mean, inv_std)

    @staticmethod
    def _shard_forward(p, w, x2, ctx):
        """Training forward of one shard of a batch cut across threads: the statistics are
        the whole batch's (sums over every shard: the mean first, then the centred squares),
        so the result is the whole-batch call's up to rounding."""
        kernels, shard = ctx.kernels("norm"), ctx.shard
        count = x2.shape[0] // (shard.end - shard.start) * shard.total  # rows in the batch
        zero = np.zeros(x2.shape[1])
        mean64 = shard.all_sum(kernels.batchnorm_sums(x2, zero)[0]) / count
        var64 = shard.all_sum(kernels.batchnorm_sums(x2, mean64)[1]) / count
        mean, var = mean64.astype(x2.dtype), var64.astype(x2.dtype)
        inv_std = (1 / np.sqrt(var64 + p.eps)).astype(x2.dtype)
        y2 = kernels.batchnorm_eval_forward(x2, w["weight"], w["bias"], mean, var, p.eps)
        return y2, mean, var, inv_std, count

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        trained, x2, mean, inv_std = saved
        dy2 = dy.reshape(x2.shape)
        kernels = ctx.kernels("norm")
        if trained and ctx.shard is not None:
            # dx needs Σdy and Σdy·x̂ over the whole batch; this shard's own sums are its
            # share of dgamma and dbeta (the model adds the shards' parameter gradients)
            sum_dy, sum_dyxc = kernels.batchnorm_grad_sums(x2, dy2, mean)
            totals = ctx.shard.all_sum(np.stack([sum_dy, sum_dyxc]))
            count = x2.shape[0] // (ctx.shard.end - ctx.shard.start) * ctx.shard.total
            dx2 = kernels.batchnorm_dx(x2, dy2, w["weight"], mean, inv_std, totals[0],
                                       totals[1], count)
            dgamma = (sum_dyxc * inv_std).astype(x2.dtype)
            dbeta = sum_dy.astype(x2.dtype)
        elif trained:
            dx2, dgamma, dbeta = kernels.batchnorm_backward(x2, dy2, w["weight"], mean, inv_std)
        else:
            dx2, dgamma, dbeta = kernels.batchnorm_eval_backward(
                x2, dy2, w["weight"], w["running_mean"], w["running_var"], p.eps)
        return [dx2.reshape(dy.shape)], {"weight": dgamma, "bias": dbeta}

    @classmethod
    def onnx(cls, b, layer, xs):
        """Inference: the running statistics."""
        from cnndsl.export.emit import onnx_weights

        names = onnx_weights(b, layer, "weight", "bias", "running_mean", "running_var")
        return b.node("BatchNormalization", [xs[0], *names], layer.name,
                      epsilon=float(layer.params.eps))

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call

        p = layer.params
        extra = "" if p.eps == 1e-5 else f", eps={p.eps!r}"
        extra += "" if p.momentum == 0.1 else f", momentum={p.momentum!r}"
        return f"nn.BatchNorm{max(layer.rank, 1)}d({layer.shape[-1]}{extra})", call(layer, xs)

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
    examples = (("5x5x3", "Dropout(0.3)"),)
    Params = DropoutParams
    family = "norm"

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
        x = xs[0]
        # a shard of a batch cut across threads takes its rows of the whole batch's draws
        uniform = None if ctx.shard is None else ctx.shard.draw_uniform(
            x.shape, x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
        return ctx.kernels("elementwise").dropout_forward(x, p.p, ctx.rng, uniform=uniform)

    @staticmethod
    def backward(p, g, w, mask, dy, ctx):
        if mask is None:
            return [dy], {}
        return [ctx.kernels("elementwise").dropout_backward(dy, mask)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        return xs[0]  # inference: nothing to compute

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_simple

        return torch_simple(layer, xs, "nn.Dropout({p.p!r})")
