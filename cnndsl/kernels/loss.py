"""Softmax and the fused softmax + cross-entropy loss, forward and backward.

x2, y2, logits: N×K (rows = samples, softmax over the last axis), labels: N ints in [0, K).
Kernels run `prange` over rows; each row is written by its own iteration only, so `out=` may
alias an input of the same shape and dtype. Row maxima are subtracted before exp (stable).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnndsl.kernels import out_buffer as _buffer
from cnndsl.kernels.jit import helper, kernel


@helper
def _exp_row(x, i, y):
    """y[i] = exp(x[i] - max x[i]); returns (max, Σ exp) in float64. i: int64 (one
    signature; a `prange` index is unsigned in parallel code and signed in serial code)."""
    k_ = x.shape[1]
    m = x[i, 0]
    for j in range(1, k_):
        m = max(m, x[i, j])
    s = 0.0
    for j in range(k_):
        e = math.exp(x[i, j] - m)
        y[i, j] = e
        s += e
    return m, s


@kernel
def _softmax_fwd(x, y):
    n_, k_ = x.shape
    for i in prange(n_):
        _, s = _exp_row(x, np.int64(i), y)
        r = 1.0 / s
        for j in range(k_):
            y[i, j] *= r


@kernel
def _softmax_bwd(y, dy, dx):
    n_, k_ = y.shape
    for i in prange(n_):
        t = 0.0
        for j in range(k_):
            t += dy[i, j] * y[i, j]
        for j in range(k_):
            dx[i, j] = y[i, j] * (dy[i, j] - t)


@kernel
def _softmax_xent(x, labels, dx, loss):
    """dx = (softmax(x) - onehot) / N; loss[0] = the mean over rows of logsumexp - x[label]
    (float64)."""
    n_, k_ = x.shape
    inv_n = 1.0 / n_
    losses = np.empty(n_)
    for i in prange(n_):
        lab = labels[i]
        xl = x[i, lab]                       # read first: dx may alias x
        m, s = _exp_row(x, np.int64(i), dx)
        losses[i] = m + math.log(s) - xl
        r = inv_n / s
        for j in range(k_):
            dx[i, j] *= r
        dx[i, lab] -= inv_n
    total = 0.0
    for i in range(n_):
        total += losses[i]
    loss[0] = total * inv_n


def _x2(x2):
    x2 = np.ascontiguousarray(x2)
    if x2.ndim != 2 or x2.shape[1] < 1:
        raise ValueError(f"expected N×K with K >= 1, got shape {x2.shape}")
    return x2


def softmax_forward(x2, *, out=None):
    """x2: N×K -> y2: N×K, softmax over each row (max-shifted)."""
    x2 = _x2(x2)
    y2 = _buffer(out, x2.shape, x2.dtype)
    _softmax_fwd(x2, y2)
    return y2


def softmax_backward(y2, dy2, *, out=None):
    """y2, dy2: N×K -> dx2 = y2·(dy2 - Σ_k dy2·y2) per row."""
    y2, dy2 = _x2(y2), _x2(dy2)
    if y2.shape != dy2.shape:
        raise ValueError(f"shapes differ: {y2.shape} vs {dy2.shape}")
    dx2 = _buffer(out, dy2.shape, dy2.dtype)
    _softmax_bwd(y2, dy2, dx2)
    return dx2


def softmax_cross_entropy(logits, labels, *, out=None):
    """logits: N×K, labels: N ints -> (loss: float, dlogits: N×K).

    loss = mean_n (logsumexp(logits[n]) - logits[n, labels[n]]) = mean -log softmax[label];
    dlogits = (softmax(logits) - onehot(labels)) / N. `out` is the dlogits buffer.
    """
    x = _x2(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels {labels.shape} do not fit logits {x.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= x.shape[1]):
        raise ValueError(f"labels must lie in [0, {x.shape[1]})")
    if x.shape[0] == 0:
        raise ValueError("empty batch")
    dx = _buffer(out, x.shape, x.dtype)
    loss = np.empty(1)
    _softmax_xent(x, labels, dx, loss)
    return float(loss[0]), dx
