"""Elementwise activations, bias and dropout in plain NumPy: twins of `cnndsl.kernels.elementwise`.

Any shape; results take the dtype of the first (activation) argument.
"""

from __future__ import annotations

import numpy as np

from cnndsl.kernels.reference import into as _into


def relu_forward(x, *, out=None):
    return _into(out, np.where(x < 0, 0, x), x.dtype)


def relu_backward(y, dy, *, out=None):
    return _into(out, np.where(y > 0, dy, 0), dy.dtype)


def leaky_relu_forward(x, alpha, *, out=None):
    return _into(out, np.where(x > 0, x, alpha * x), x.dtype)


def leaky_relu_backward(x, dy, alpha, *, out=None):
    return _into(out, np.where(x > 0, dy, alpha * dy), dy.dtype)


def sigmoid_forward(x, *, out=None):
    e = np.exp(-np.abs(x))                      # never overflows
    return _into(out, np.where(x >= 0, 1 / (1 + e), e / (1 + e)), x.dtype)


def sigmoid_backward(y, dy, *, out=None):
    return _into(out, dy * y * (1 - y), dy.dtype)


def tanh_forward(x, *, out=None):
    return _into(out, np.tanh(x), x.dtype)


def tanh_backward(y, dy, *, out=None):
    return _into(out, dy * (1 - y * y), dy.dtype)


def bias_relu_forward(x2, b, *, out=None):
    return _into(out, np.maximum(x2 + b, 0), x2.dtype)


def bias_add(x2, b, *, out=None):
    return _into(out, x2 + b, x2.dtype)


def dropout_forward(x, p, rng, *, out=None, uniform=None):
    if uniform is None:
        u = rng.random(x.shape,
                       dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    else:
        u = uniform
    scale = 0.0 if p >= 1 else 1 / (1 - p)
    mask = np.where(u >= p, scale, 0).astype(x.dtype)
    yo, mo = (None, None) if out is None else out
    return _into(yo, x * mask, x.dtype), _into(mo, mask, x.dtype)


def dropout_backward(dy, mask, *, out=None):
    return _into(out, dy * mask, dy.dtype)
