"""BatchNorm on the M×C view in plain NumPy: twins of `cnndsl.kernels.norm`.

x2, y2, dy2, dx2: M×C; every per-channel vector: C. Statistics in x2's dtype.
"""

from __future__ import annotations

import numpy as np

from cnndsl.kernels.reference import into as _into


def batchnorm_train_forward(x2, gamma, beta, eps, *, out=None):
    x = x2.astype(np.float64)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)                 # biased
    inv_std = 1 / np.sqrt(var + eps)
    y = (x - mean) * inv_std * gamma + beta
    t = x2.dtype
    return _into(out, y, t), mean.astype(t), var.astype(t), inv_std.astype(t)


def batchnorm_eval_forward(x2, gamma, beta, running_mean, running_var, eps, *, out=None):
    y = (x2 - running_mean) / np.sqrt(running_var + eps) * gamma + beta
    return _into(out, y, x2.dtype)


def batchnorm_backward(x2, dy2, gamma, mean, inv_std, *, out=None):
    m = x2.shape[0]
    xhat = (x2 - mean) * inv_std
    dbeta = dy2.sum(axis=0)
    dgamma = (dy2 * xhat).sum(axis=0)
    dx = gamma * inv_std / m * (m * dy2 - dbeta - xhat * dgamma)
    t = dy2.dtype
    return _into(out, dx, t), dgamma.astype(t), dbeta.astype(t)


def batchnorm_eval_backward(x2, dy2, gamma, running_mean, running_var, eps, *, out=None):
    inv_std = 1 / np.sqrt(running_var + eps)
    dx = dy2 * gamma * inv_std
    dgamma = (dy2 * (x2 - running_mean) * inv_std).sum(axis=0)
    t = dy2.dtype
    return _into(out, dx, t), dgamma.astype(t), dy2.sum(axis=0).astype(t)


def batchnorm_sums(x2, shift):
    d = x2.astype(np.float64) - np.asarray(shift, np.float64)
    return d.sum(axis=0), (d * d).sum(axis=0)


def batchnorm_grad_sums(x2, dy2, mean):
    dy = dy2.astype(np.float64)
    return dy.sum(axis=0), (dy * (x2 - mean)).sum(axis=0)


def batchnorm_dx(x2, dy2, gamma, mean, inv_std, sum_dy, sum_dyxc, count, *, out=None):
    xhat = (x2 - mean) * inv_std
    dx = gamma * inv_std / count * (count * dy2 - sum_dy - xhat * (sum_dyxc * inv_std))
    return _into(out, dx, dy2.dtype)
