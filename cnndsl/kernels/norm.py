"""BatchNorm on the M×C view (M = N·spatial; channels-last makes it a reshape), forward and backward.

x2, y2, dy2, dx2: M×C; gamma, beta, mean, var, inv_std, running_mean, running_var,
dgamma, dbeta: C. Statistics are returned in x2's dtype.

Parallel contract: reductions over M split the rows into `_NCHUNK` fixed chunks (fixed, so the
result does not depend on the thread count), `prange` over chunks writing float64 partial sums
to their own row of a chunks×C array, combined serially afterwards (no racing `+=`). The
elementwise passes run `prange` over rows. `out=` may alias x2 (forward) or dy2 (backward):
each element is read before the same iteration writes it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnndsl.kernels import out_buffer as _buffer
from cnndsl.kernels.jit import helper, kernel

_NCHUNK = 16


@kernel
def _bn_sums(x, shift, t1, t2):
    """t1, t2 = float64 Σ(x - shift) and Σ(x - shift)² per channel, chunked (see the module
    doc)."""
    m_, c_ = x.shape
    nch = min(_NCHUNK, m_)
    s1 = np.zeros((nch, c_))
    s2 = np.zeros((nch, c_))
    for k in prange(nch):
        for i in range(k * m_ // nch, (k + 1) * m_ // nch):
            for c in range(c_):
                d = np.float64(x[i, c]) - shift[c]
                s1[k, c] += d
                s2[k, c] += d * d
    _add_chunks(s1, s2, t1, t2)


@helper
def _add_chunks(s1, s2, t1, t2):
    """t1, t2 = s1, s2 summed over their rows (the chunks), in chunk order."""
    for c in range(s1.shape[1]):
        a = 0.0
        b = 0.0
        for k in range(s1.shape[0]):
            a += s1[k, c]
            b += s2[k, c]
        t1[c] = a
        t2[c] = b


@kernel
def _bn_train_fwd(x, gamma, beta, eps, t1, t2, y, mean, var, inv_std):
    """From t1, t2 = `_bn_sums(x, x[0])`: the statistics, and y = x normalised."""
    m_, c_ = x.shape
    a = np.empty(c_)
    mu = np.empty(c_)
    for c in range(c_):
        md = t1[c] / m_
        v = max(t2[c] / m_ - md * md, 0.0)
        mu[c] = md + x[0, c]
        istd = 1.0 / math.sqrt(v + eps)
        mean[c] = mu[c]
        var[c] = v
        inv_std[c] = istd
        a[c] = gamma[c] * istd
    for i in prange(m_):
        for c in range(c_):
            y[i, c] = (x[i, c] - mu[c]) * a[c] + beta[c]


@kernel
def _bn_grad_sums(x, dy, mean, t1, t2):
    """t1, t2 = float64 Σdy and Σdy·(x - mean) per channel, chunked."""
    m_, c_ = x.shape
    nch = min(_NCHUNK, m_)
    s1 = np.zeros((nch, c_))
    s2 = np.zeros((nch, c_))
    for k in prange(nch):
        for i in range(k * m_ // nch, (k + 1) * m_ // nch):
            for c in range(c_):
                g = np.float64(dy[i, c])
                s1[k, c] += g
                s2[k, c] += g * (x[i, c] - mean[c])
    _add_chunks(s1, s2, t1, t2)


@kernel
def _bn_dx(x, dy, gamma, mean, inv_std, sum_dy, sum_dyxc, count, dx):
    """dx = γ·istd/M · (M·dy - Σdy - x̂·Σ(dy·x̂)), x̂ = (x - mean)·istd, from the sums over
    all M = `count` rows of the batch (which may be more than x's)."""
    m_, c_ = x.shape
    k1 = np.empty(c_)
    k2 = np.empty(c_)
    k3 = np.empty(c_)
    for c in range(c_):
        istd = np.float64(inv_std[c])
        k1[c] = gamma[c] * istd
        k2[c] = k1[c] * sum_dy[c] / count
        k3[c] = k1[c] * istd * istd * sum_dyxc[c] / count
    for i in prange(m_):
        for c in range(c_):
            dx[i, c] = k1[c] * dy[i, c] - k2[c] - (x[i, c] - mean[c]) * k3[c]


@kernel
def _bn_eval_fwd(x, gamma, beta, rmean, rvar, eps, y):
    m_, c_ = x.shape
    a = np.empty(c_)
    for c in range(c_):
        a[c] = gamma[c] / math.sqrt(rvar[c] + eps)
    for i in prange(m_):
        for c in range(c_):
            y[i, c] = (x[i, c] - rmean[c]) * a[c] + beta[c]


@kernel
def _bn_eval_bwd(x, dy, gamma, rmean, rvar, eps, dx, dgamma, dbeta):
    """One fused pass: dx = dy·γ/sqrt(rv + eps) and the chunk partials of Σdy, Σdy·(x - rm)."""
    m_, c_ = x.shape
    nch = min(_NCHUNK, m_)
    istd = np.empty(c_)
    a = np.empty(c_)
    for c in range(c_):
        istd[c] = 1.0 / math.sqrt(rvar[c] + eps)
        a[c] = gamma[c] * istd[c]
    s1 = np.zeros((nch, c_))
    s2 = np.zeros((nch, c_))
    for k in prange(nch):
        for i in range(k * m_ // nch, (k + 1) * m_ // nch):
            for c in range(c_):
                g = np.float64(dy[i, c])
                dx[i, c] = g * a[c]
                s1[k, c] += g
                s2[k, c] += g * (x[i, c] - rmean[c])
    for c in range(c_):
        t1 = 0.0
        t2 = 0.0
        for k in range(nch):
            t1 += s1[k, c]
            t2 += s2[k, c]
        dbeta[c] = t1
        dgamma[c] = t2 * istd[c]


def _check_dy(x2, dy2):
    dy2 = np.ascontiguousarray(dy2)
    if dy2.shape != x2.shape:
        raise ValueError(f"dy {dy2.shape} does not match x {x2.shape}")
    return dy2


def _check(x2, *vectors):
    x2 = np.ascontiguousarray(x2)
    if x2.ndim != 2 or x2.shape[0] < 1:
        raise ValueError(f"BatchNorm expects M×C with M >= 1, got shape {x2.shape}")
    vs = [np.ascontiguousarray(v) for v in vectors]
    for v in vs:
        if v.shape != (x2.shape[1],):
            raise ValueError(f"per-channel vector {v.shape} does not fit x {x2.shape}")
    return x2, vs


def batchnorm_train_forward(x2, gamma, beta, eps, *, out=None):
    """x2: M×C -> (y2, mean, var, inv_std); batch statistics, var biased (÷M).

    y2 = (x2 - mean)·inv_std·gamma + beta, inv_std = 1/sqrt(var + eps). The caller updates
    running stats with the unbiased var·M/(M-1). `out` is the y2 buffer.
    """
    x2, (gamma, beta) = _check(x2, gamma, beta)
    c = x2.shape[1]
    y2 = _buffer(out, x2.shape, x2.dtype)
    mean, var, inv_std = (np.empty(c, x2.dtype) for _ in range(3))
    # shifted by row 0: Σd² - (Σd)²/M then cancels little (one pass, float64)
    t1, t2 = batchnorm_sums(x2, x2[0])
    _bn_train_fwd(x2, gamma, beta, float(eps), t1, t2, y2, mean, var, inv_std)
    return y2, mean, var, inv_std


def batchnorm_eval_forward(x2, gamma, beta, running_mean, running_var, eps, *, out=None):
    """x2: M×C -> y2 = (x2 - running_mean)/sqrt(running_var + eps)·gamma + beta."""
    x2, vs = _check(x2, gamma, beta, running_mean, running_var)
    y2 = _buffer(out, x2.shape, x2.dtype)
    _bn_eval_fwd(x2, *vs[:2], *vs[2:], float(eps), y2)
    return y2


def batchnorm_backward(x2, dy2, gamma, mean, inv_std, *, out=None):
    """x2, dy2: M×C, stats from the forward -> (dx2, dgamma, dbeta), through the batch stats.

    dbeta = Σ dy, dgamma = Σ dy·x̂, dx = gamma·inv_std/M·(M·dy - dbeta - x̂·dgamma),
    x̂ = (x - mean)·inv_std. `out` is the dx2 buffer.
    """
    x2, (gamma, mean, inv_std) = _check(x2, gamma, mean, inv_std)
    dy2 = _check_dy(x2, dy2)
    sum_dy, sum_dyxc = batchnorm_grad_sums(x2, dy2, mean)
    dx2 = _buffer(out, x2.shape, dy2.dtype)
    _bn_dx(x2, dy2, gamma, mean, inv_std, sum_dy, sum_dyxc, float(x2.shape[0]), dx2)
    return dx2, (sum_dyxc * inv_std).astype(dy2.dtype), sum_dy.astype(dy2.dtype)


def batchnorm_sums(x2, shift):
    """x2: M×C -> float64 (Σ(x - shift), Σ(x - shift)²) per channel: the statistics of a batch
    cut into shards are these sums added over the shards (shift: float64 C)."""
    x2, _ = _check(x2)
    t1, t2 = np.empty(x2.shape[1]), np.empty(x2.shape[1])
    _bn_sums(x2, np.ascontiguousarray(shift, dtype=np.float64), t1, t2)
    return t1, t2


def batchnorm_grad_sums(x2, dy2, mean):
    """x2, dy2: M×C -> float64 (Σdy, Σdy·(x - mean)) per channel, for `batchnorm_dx`."""
    x2, (mean,) = _check(x2, mean)
    t1, t2 = np.empty(x2.shape[1]), np.empty(x2.shape[1])
    _bn_grad_sums(x2, _check_dy(x2, dy2), mean, t1, t2)
    return t1, t2


def batchnorm_dx(x2, dy2, gamma, mean, inv_std, sum_dy, sum_dyxc, count, *, out=None):
    """dx2 of `batchnorm_backward` from sums (`batchnorm_grad_sums`) over a whole batch of
    `count` rows, of which x2 and dy2 are some."""
    x2, (gamma, mean, inv_std) = _check(x2, gamma, mean, inv_std)
    dy2 = _check_dy(x2, dy2)
    dx2 = _buffer(out, x2.shape, dy2.dtype)
    _bn_dx(x2, dy2, gamma, mean, inv_std, np.ascontiguousarray(sum_dy, np.float64),
           np.ascontiguousarray(sum_dyxc, np.float64), float(count), dx2)
    return dx2


def batchnorm_eval_backward(x2, dy2, gamma, running_mean, running_var, eps, *, out=None):
    """Gradient of the eval forward (statistics are constants) -> (dx2, dgamma, dbeta).

    dx = dy·gamma/sqrt(rv + eps), dgamma = Σ dy·(x - rm)/sqrt(rv + eps), dbeta = Σ dy.
    """
    x2, vs = _check(x2, gamma, running_mean, running_var)
    dy2 = _check_dy(x2, dy2)
    c = x2.shape[1]
    dx2 = _buffer(out, x2.shape, dy2.dtype)
    dgamma, dbeta = np.empty(c, dy2.dtype), np.empty(c, dy2.dtype)
    _bn_eval_bwd(x2, dy2, *vs, float(eps), dx2, dgamma, dbeta)
    return dx2, dgamma, dbeta
