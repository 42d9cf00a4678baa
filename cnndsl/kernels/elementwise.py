"""Elementwise activations, bias (+ReLU) and dropout, forward and backward.

Any shape: wrappers work on the flat C-order view (copying a non-contiguous input once) and
return arrays shaped like the input. Kernels run `prange` over the flat index, which Numba
splits into one contiguous chunk per thread (a loop from 0 per chunk vectorises; hand-made
chunk offsets defeated LLVM's vectoriser, 8× slower). Each element is read and written by one
iteration only, so `out=` may alias an input of the same shape and dtype (in place:
`relu_forward(x, out=x)`, `relu_backward(y, dy, out=dy)`).
`bias_relu_forward` / `bias_add` take x2: M×C (or any ...×C, viewed as M×C) and b: C, with
`prange` over rows. Outputs take the dtype of the first (activation) argument.

exp and tanh come from NumPy's ufuncs, which have AVX-512 code (single-threaded): this Numba
has no SVML, and its scalar libm calls made sigmoid 2× and tanh 40× slower on two threads.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnndsl.kernels import out_buffer as _buffer
from cnndsl.kernels.jit import kernel


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


@kernel
def _relu_fwd(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = 0.0 if v < 0 else v          # NaN propagates


@kernel
def _relu_bwd(y, dy, dx):
    for i in prange(y.size):
        dx[i] = dy[i] if y[i] > 0 else 0.0


@kernel
def _leaky_fwd(x, alpha, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else alpha * v


@kernel
def _leaky_bwd(x, dy, alpha, dx):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else alpha * dy[i]


@kernel
def _neg_abs(x, y):
    for i in prange(x.size):
        y[i] = -abs(x[i])


@kernel
def _sigmoid_finish(x, e, y):
    """e = exp(-|x|) -> y = 1/(1 + e) for x >= 0, e/(1 + e) below (y may be e)."""
    for i in prange(x.size):
        q = e[i]
        r = 1.0 / (1.0 + q)
        y[i] = r if x[i] >= 0 else q * r


@kernel
def _sigmoid_bwd(y, dy, dx):
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (1.0 - y[i])


@kernel
def _tanh_bwd(y, dy, dx):
    for i in prange(y.size):
        dx[i] = dy[i] * (1.0 - y[i] * y[i])


@kernel
def _bias_fwd(x2, b, relu, y2):
    m_, c_ = x2.shape
    for m in prange(m_):
        for c in range(c_):
            v = x2[m, c] + b[c]
            y2[m, c] = 0.0 if relu and v < 0 else v


@kernel
def _dropout_fwd(x, p, scale, mask, y):
    """`mask` holds uniform [0, 1) draws on entry; keep where u >= p."""
    for i in prange(x.size):
        mask[i] = scale if mask[i] >= p else 0.0
        y[i] = x[i] * mask[i]                # in x's dtype, as the twin does


@kernel
def _mul(a, b, y):
    for i in prange(a.size):
        y[i] = a[i] * b[i]


# ---------------------------------------------------------------- wrappers


def _unary(kernel, x, out, *args):
    y = _buffer(out, x.shape, x.dtype)
    kernel(_flat(x), *args, y.reshape(-1))
    return y


def _binary(kernel, a, dy, out, *args):
    if a.shape != dy.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {dy.shape}")
    dx = _buffer(out, dy.shape, dy.dtype)
    kernel(_flat(a), _flat(dy), *args, dx.reshape(-1))
    return dx


def relu_forward(x, *, out=None):
    """y = max(x, 0), any shape (NaN propagates)."""
    return _unary(_relu_fwd, x, out)


def relu_backward(y, dy, *, out=None):
    """dx = dy where y > 0 else 0 (uses the output, so an in-place forward is fine)."""
    return _binary(_relu_bwd, y, dy, out)


def leaky_relu_forward(x, alpha, *, out=None):
    """y = x if x > 0 else alpha·x."""
    return _unary(_leaky_fwd, x, out, float(alpha))


def leaky_relu_backward(x, dy, alpha, *, out=None):
    """dx = dy if x > 0 else alpha·dy (PyTorch's choice at x = 0)."""
    return _binary(_leaky_bwd, x, dy, out, float(alpha))


def sigmoid_forward(x, *, out=None):
    """y = 1 / (1 + exp(-x)), never overflowing: exp is only taken of -|x|, by NumPy (SIMD)."""
    y = _buffer(out, x.shape, x.dtype)
    xf, yf = _flat(x), y.reshape(-1)
    if np.may_share_memory(xf, yf):                  # in place: keep the signs of x
        xf = xf.copy()
    _neg_abs(xf, yf)
    np.exp(yf, out=yf)
    _sigmoid_finish(xf, yf, yf)
    return y


def sigmoid_backward(y, dy, *, out=None):
    """dx = dy·y·(1 - y)."""
    return _binary(_sigmoid_bwd, y, dy, out)


def tanh_forward(x, *, out=None):
    """y = tanh(x), NumPy's SIMD ufunc (single-threaded, still far ahead of scalar calls)."""
    y = _buffer(out, x.shape, x.dtype)
    np.tanh(x, out=y)
    return y


def tanh_backward(y, dy, *, out=None):
    """dx = dy·(1 - y²)."""
    return _binary(_tanh_bwd, y, dy, out)


def _bias(x2, b, relu, out):
    x2 = np.ascontiguousarray(x2)
    b = np.ascontiguousarray(b)
    if b.ndim != 1 or x2.ndim < 1 or x2.shape[-1] != b.shape[0]:
        raise ValueError(f"bias {b.shape} does not fit x {x2.shape} (channels last)")
    y2 = _buffer(out, x2.shape, x2.dtype)
    c = b.shape[0]
    _bias_fwd(x2.reshape(-1, c), b, relu, y2.reshape(-1, c))
    return y2


def bias_relu_forward(x2, b, *, out=None):
    """x2: M×C (or ...×C), b: C -> y2 = max(x2 + b, 0), one fused pass; `out=x2` is in place."""
    return _bias(x2, b, True, out)


def bias_add(x2, b, *, out=None):
    """x2: M×C (or ...×C), b: C -> y2 = x2 + b; a new array unless `out` (`out=x2`: in place)."""
    return _bias(x2, b, False, out)


def dropout_forward(x, p, rng, *, out=None, uniform=None):
    """Inverted dropout: (y = x·mask, mask), mask: x's shape and dtype, 0 or 1/(1 - p).

    Keeps element i iff u_i >= p, with u = rng.random(x.shape, dtype) drawn in C order
    (float32 draws for float32 x, float64 otherwise), so a seeded Generator reproduces the
    mask exactly and the NumPy twin draws the same one. `uniform`: those draws made already
    (x's shape; rng is then not used). `out=(y, mask)`.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout p must be in [0, 1], got {p}")
    yo, mo = (None, None) if out is None else out
    y = _buffer(yo, x.shape, x.dtype)
    mask = _buffer(mo, x.shape, x.dtype)
    if uniform is None:
        rng.random(out=mask, dtype=mask.dtype)
    else:
        mask[...] = uniform
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    _dropout_fwd(_flat(x), p, scale, mask.reshape(-1), y.reshape(-1))
    return y, mask


def dropout_backward(dy, mask, *, out=None):
    """dx = dy·mask."""
    return _binary(_mul, mask, dy, out)
