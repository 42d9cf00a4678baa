"""Pooling kernels: windowed max / average / L2 (floor mode) and global pools, forward and backward.

Layouts (see `cnndsl.kernels`): x: N×D×H×W×C, y: N×Do×Ho×Wo×C with
Do = (D + pd0 + pd1 - kd) // sd + 1 (likewise H, W); `kernel`, `stride`, `pad_before`,
`pad_after` are (D, H, W) int triples. Global pools give y: N×C.

Argmax layout (max pools): int32, shaped like y; each entry is the flat spatial index
d·H·W + h·W + w of the winning input element in its (n, c) plane (PyTorch's
`return_indices` numbering), -1 for a window that covers padding only.

Parallel contracts: forward kernels run `prange` over output rows (n, od, oh). Average and L2
backward *gather*: each input row (n, d, h) sums the outputs whose windows cover it, so every
dx element is written once by one iteration, whatever the overlap. Inner loops index W×C row
views from 0, which LLVM vectorises over C (per-pixel views or offset ranges measured 1.5-3×
slower); the max pools index flat arrays with unsigned ints instead (10-20% faster than row
views: no wraparound tests, no shared reference counts). Max backward scatters
through argmax, so it runs `prange` over (sample, channel block) pairs, each owning its slice
of dx. Every kernel writes every element of its outputs, so `out=` buffers need no zeroing.
Outputs never alias inputs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnndsl.kernels import out_buffer as _buffer
from cnndsl.kernels.jit import helper, kernel

_INT32_MAX = 2**31 - 1
U = np.uint64  # an index type without the negative-index wraparound test


@helper
def _window(o, s, p0, k, n):
    """Window of output `o` on an axis of `n` inputs: start and the clipped [lo, hi) offsets."""
    start = o * s - p0
    return start, max(0, -start), min(k, n - start)


@kernel
def _maxpool_fwd(x, kd, kh, kw, sd, sh, sw, pd0, ph0, pw0, relu, indices, y, am):
    """y = max over the window (argmax into am if `indices`, else am is not touched);
    `relu`: then max(y, 0) where the window is not empty: the pool of ReLU(x) (ReLU
    commutes with max), in the same pass."""
    _, d_, h_, w_, c_ = x.shape
    n_, do, ho, wo, _ = y.shape
    # flat arrays and unsigned indices (U): no per-element wraparound test and no per-row
    # views of the shared x (atomic reference counts), so the loops over C vectorise
    xf, yf, af = x.reshape(x.size), y.reshape(y.size), am.reshape(am.size)
    for r in prange(n_ * do * ho):
        n, od, oh = r // (do * ho), (r // ho) % do, r % ho
        d0, alo, ahi = _window(od, sd, pd0, kd, d_)
        h0, blo, bhi = _window(oh, sh, ph0, kh, h_)
        y0 = U(r * wo * c_)                      # y[n, od, oh] (r = (n·Do + od)·Ho + oh)
        for t in range(U(wo * c_)):
            yf[y0 + t] = -np.inf
            if indices:
                af[y0 + t] = -1
        for a in range(alo, ahi):
            for b in range(blo, bhi):
                base = ((d0 + a) * h_ + h0 + b) * w_
                xrow = (n * d_ * h_ * w_ + base) * c_
                for ow in range(wo):
                    w0, elo, ehi = _window(ow, sw, pw0, kw, w_)
                    yo = y0 + U(ow * c_)
                    for e in range(elo, ehi):
                        xo = U(xrow + (w0 + e) * c_)
                        idx = base + w0 + e
                        if not indices:
                            # the values alone: from -inf, > takes every larger one and a
                            # NaN wins once
                            for c in range(U(c_)):
                                v = xf[xo + c]
                                m = yf[yo + c]
                                take = v > m or (math.isnan(v) and not math.isnan(m))
                                yf[yo + c] = v if take else m
                            continue
                        for c in range(U(c_)):
                            v = xf[xo + c]
                            m = yf[yo + c]
                            k = af[yo + c]
                            # the first element always enters; then strict > keeps the first
                            # of ties, and a NaN wins once (as np.argmax)
                            take = k < 0 or v > m or (math.isnan(v) and not math.isnan(m))
                            yf[yo + c] = v if take else m
                            af[yo + c] = idx if take else k
        if relu:
            for ow in range(wo):
                _, elo, ehi = _window(ow, sw, pw0, kw, w_)
                if alo >= ahi or blo >= bhi or elo >= ehi:
                    continue  # a window of padding alone stays -inf
                for c in range(U(c_)):
                    t = U(ow * c_) + c
                    if yf[y0 + t] < 0:
                        yf[y0 + t] = 0.0


@kernel
def _argmax_scatter(dy3, am3, y3, masked, cb, dx3):
    """dx3: N×S×C = 0, then dx3[n, am3[n, o, c], c] += dy3[n, o, c] (only where
    y3[n, o, c] > 0 if `masked`: the backward of a pool that took a ReLU on its input);
    prange over (n, C block). Flat unsigned indices as in `_maxpool_fwd`."""
    n_, so, c_ = dy3.shape
    s_ = dx3.shape[1]
    nb = (c_ + cb - 1) // cb
    dyf, amf, dxf = dy3.reshape(dy3.size), am3.reshape(am3.size), dx3.reshape(dx3.size)
    yf = y3.reshape(y3.size)
    for t in prange(n_ * nb):
        n = t // nb
        c0 = (t % nb) * cb
        c1 = min(c_, c0 + cb)
        for s in range(s_):
            row = U((n * s_ + s) * c_ + c0)
            for j in range(U(c1 - c0)):
                dxf[row + j] = 0
        for o in range(so):
            src = U((n * so + o) * c_ + c0)
            for j in range(U(c1 - c0)):
                i = amf[src + j]
                # -1: empty window; never write out of dx
                if 0 <= i < s_ and (not masked or yf[src + j] > 0):
                    dxf[U((n * s_ + i) * c_ + c0) + j] += dyf[src + j]


@kernel
def _sumpool_fwd(x, kd, kh, kw, sd, sh, sw, pd0, ph0, pw0, square, y):
    """y = Σ x over the window / (kd·kh·kw), or sqrt(Σ x²) when `square`."""
    _, d_, h_, w_, c_ = x.shape
    n_, do, ho, wo, _ = y.shape
    inv_k = 1.0 / (kd * kh * kw)
    for r in prange(n_ * do * ho):
        n, od, oh = r // (do * ho), (r // ho) % do, r % ho
        d0, alo, ahi = _window(od, sd, pd0, kd, d_)
        h0, blo, bhi = _window(oh, sh, ph0, kh, h_)
        yr = y[n, od, oh]
        for ow in range(wo):
            for c in range(c_):
                yr[ow, c] = 0
        for a in range(alo, ahi):
            for b in range(blo, bhi):
                xr = x[n, d0 + a, h0 + b]
                for ow in range(wo):
                    w0, elo, ehi = _window(ow, sw, pw0, kw, w_)
                    for e in range(elo, ehi):
                        if square:
                            for c in range(c_):
                                yr[ow, c] += xr[w0 + e, c] * xr[w0 + e, c]
                        else:
                            for c in range(c_):
                                yr[ow, c] += xr[w0 + e, c]
        for ow in range(wo):
            for c in range(c_):
                yr[ow, c] = np.sqrt(yr[ow, c]) if square else yr[ow, c] * inv_k


@helper
def _cover_table(n, p0, k, s, nout):
    """lo[i], hi[i]: the outputs [lo, hi) whose windows contain input i on one axis."""
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    for i in range(n):
        first = i + p0 - k + 1
        lo[i] = 0 if first <= 0 else (first + s - 1) // s
        hi[i] = min((i + p0) // s + 1, nout)
    return lo, hi


@kernel
def _sumpool_bwd(x, y, dy, kd, kh, kw, sd, sh, sw, pd0, ph0, pw0, square, dx):
    """Gather. Average: dx = Σ dy / K. L2 (`square`): dx = x · Σ dy / y, terms with y == 0 dropped.

    x and y are read only when `square`.
    """
    n_, d_, h_, w_, c_ = dx.shape
    _, do, ho, wo, _ = dy.shape
    inv_k = 1.0 / (kd * kh * kw)
    dlo, dhi = _cover_table(d_, pd0, kd, sd, do)
    hlo, hhi = _cover_table(h_, ph0, kh, sh, ho)
    wlo, whi = _cover_table(w_, pw0, kw, sw, wo)
    for r in prange(n_ * d_ * h_):
        n, d, h = r // (d_ * h_), (r // h_) % d_, r % h_
        g = dx[n, d, h]                          # W×C row: this iteration's output
        for w in range(w_):
            for c in range(c_):
                g[w, c] = 0
        for od in range(dlo[d], dhi[d]):
            for oh in range(hlo[h], hhi[h]):
                dyr = dy[n, od, oh]
                yr = y[n, od, oh]
                for w in range(w_):
                    for ow in range(wlo[w], whi[w]):
                        if square:
                            for c in range(c_):
                                q = yr[ow, c]
                                g[w, c] += dyr[ow, c] / q if q > 0 else 0.0
                        else:
                            for c in range(c_):
                                g[w, c] += dyr[ow, c]
        xr = x[n, d, h]
        for w in range(w_):
            for c in range(c_):
                g[w, c] *= xr[w, c] if square else inv_k


@kernel
def _global_avg_fwd(x3, y):
    n_, s_, c_ = x3.shape
    for n in prange(n_):
        acc = np.zeros(c_)  # float64 sums: S may be large
        for s in range(s_):
            for c in range(c_):
                acc[c] += x3[n, s, c]
        for c in range(c_):
            y[n, c] = acc[c] / s_


@kernel
def _global_avg_bwd(dy, dx3):
    n_, s_, c_ = dx3.shape
    inv_s = 1.0 / s_
    for r in prange(n_ * s_):
        n, s = r // s_, r % s_
        for c in range(c_):
            dx3[n, s, c] = dy[n, c] * inv_s


@kernel
def _global_max_fwd(x3, y, am):
    n_, s_, c_ = x3.shape
    for n in prange(n_):
        for c in range(c_):
            y[n, c] = x3[n, 0, c]
            am[n, c] = 0
        for s in range(1, s_):
            for c in range(c_):
                v = x3[n, s, c]
                m = y[n, c]
                if v > m or (math.isnan(v) and not math.isnan(m)):
                    y[n, c] = v
                    am[n, c] = s


# ---------------------------------------------------------------- wrappers


def _triple(t, name):
    t = tuple(int(v) for v in t)
    if len(t) != 3:
        raise ValueError(f"{name} must be a (D, H, W) triple, got {t}")
    return t


def _geometry(x_shape, kernel, stride, pad_before, pad_after):
    """Validated ints (kd, kh, kw, sd, sh, sw, pd0, ph0, pw0) and the 5-D output shape."""
    if len(x_shape) != 5:
        raise ValueError(f"pooling expects N×D×H×W×C, got shape {tuple(x_shape)}")
    k, s = _triple(kernel, "kernel"), _triple(stride, "stride")
    p0, p1 = _triple(pad_before, "pad_before"), _triple(pad_after, "pad_after")
    if min(k) < 1 or min(s) < 1 or min(p0) < 0 or min(p1) < 0:
        raise ValueError(f"bad window: kernel {k}, stride {s}, pads {p0} {p1}")
    n, *size, c = x_shape
    out = tuple((i + a + b - kk) // ss + 1 for i, kk, ss, a, b in zip(size, k, s, p0, p1))
    if min(out) < 1:
        raise ValueError(f"window {k} larger than padded input {tuple(size)}")
    return (*k, *s, *p0), (n, *out, c)


def _x5(x):
    x = np.ascontiguousarray(x)
    if x.ndim != 5:
        raise ValueError(f"pooling expects N×D×H×W×C, got shape {x.shape}")
    return x




def _check_spatial(x_shape):
    if int(np.prod(x_shape[1:-1])) > _INT32_MAX:
        raise ValueError("spatial size too large for int32 argmax")


def maxpool_forward(x, kernel, stride, pad_before, pad_after, *, relu=False, out=None,
                    indices=True):
    """x: N×D×H×W×C -> (y: N×Do×Ho×Wo×C, argmax: int32 N×Do×Ho×Wo×C), see module docstring.

    Padding never wins; ties go to the first element in window order; `out=(y, argmax)`.
    `relu`: the pool of ReLU(x), in the same pass (y = max(y, 0) where the window is not
    empty; the argmax is then x's, which routes the same gradient: see maxpool_backward).
    `indices=False` (inference): no argmax is computed; returns (y, None).
    """
    x = _x5(x)
    g, shape = _geometry(x.shape, kernel, stride, pad_before, pad_after)
    _check_spatial(x.shape)
    yo, ao = (None, None) if out is None else out
    y = _buffer(yo, shape, x.dtype)
    am = _buffer(ao, shape, np.int32) if indices else np.empty(1, np.int32)
    _maxpool_fwd(x, *g, relu, indices, y, am)
    return y, am if indices else None


def maxpool_backward(dy, argmax, x_shape, *, y=None, out=None):
    """dy, argmax: N×Do×Ho×Wo×C -> dx: x_shape (N×D×H×W×C), dy routed to the argmax.
    `y`: the output of a pool that took a ReLU on its input (maxpool_forward(relu=True)):
    dy then passes only where y > 0 (the ReLU's backward at the winning element)."""
    return _scatter_backward(dy, argmax, x_shape, out, y)


def _scatter_backward(dy, argmax, x_shape, out, y=None):
    dy = np.ascontiguousarray(dy)
    argmax = np.ascontiguousarray(argmax)
    if len(x_shape) != 5 or dy.shape != argmax.shape or dy.shape[0] != x_shape[0] or dy.shape[-1] != x_shape[-1]:
        raise ValueError(f"dy {dy.shape}, argmax {argmax.shape} do not fit x {tuple(x_shape)}")
    dx = _buffer(out, tuple(x_shape), dy.dtype)
    n, c = x_shape[0], x_shape[-1]
    # enough (sample, channel block) pairs to keep 2+ threads busy even for N = 1
    nb = min(c, max(1, -(-8 // n)))
    cb = -(-c // nb)
    dy3 = dy.reshape(n, -1, c)
    y3 = dy3 if y is None else np.ascontiguousarray(y).reshape(dy3.shape)
    _argmax_scatter(dy3, argmax.reshape(n, -1, c), y3, y is not None, cb,
                    dx.reshape(n, -1, c))
    return dx


def avgpool_forward(x, kernel, stride, pad_before, pad_after, *, out=None):
    """x: N×D×H×W×C -> y: N×Do×Ho×Wo×C, y = Σ window / (kd·kh·kw) (zero padding counts)."""
    x = _x5(x)
    g, shape = _geometry(x.shape, kernel, stride, pad_before, pad_after)
    y = _buffer(out, shape, x.dtype)
    _sumpool_fwd(x, *g, False, y)
    return y


def avgpool_backward(dy, x_shape, kernel, stride, pad_before, pad_after, *, out=None):
    """dy: N×Do×Ho×Wo×C -> dx: x_shape, dx = Σ over covering windows of dy / (kd·kh·kw)."""
    dy = _x5(dy)
    g, shape = _geometry(x_shape, kernel, stride, pad_before, pad_after)
    if dy.shape != shape:
        raise ValueError(f"dy {dy.shape} does not match pooled shape {shape}")
    dx = _buffer(out, tuple(x_shape), dy.dtype)
    _sumpool_bwd(dx, dy, dy, *g, False, dx)      # x, y unread (dx: right shape)
    return dx


def l2pool_forward(x, kernel, stride, pad_before, pad_after, *, out=None):
    """x: N×D×H×W×C -> y: N×Do×Ho×Wo×C, y = sqrt(Σ x² over the window), zero padding."""
    x = _x5(x)
    g, shape = _geometry(x.shape, kernel, stride, pad_before, pad_after)
    y = _buffer(out, shape, x.dtype)
    _sumpool_fwd(x, *g, True, y)
    return y


def l2pool_backward(x, y, dy, kernel, stride, pad_before, pad_after, *, out=None):
    """x: N×D×H×W×C, y, dy: N×Do×Ho×Wo×C -> dx = Σ dy·x/y over covering windows (0 if y = 0)."""
    x, y, dy = _x5(x), _x5(y), _x5(dy)
    g, shape = _geometry(x.shape, kernel, stride, pad_before, pad_after)
    if y.shape != shape or dy.shape != shape:
        raise ValueError(f"y {y.shape} / dy {dy.shape} do not match pooled shape {shape}")
    dx = _buffer(out, x.shape, np.result_type(x, dy))
    _sumpool_bwd(x, y, dy, *g, True, dx)
    return dx


def global_avgpool_forward(x, *, out=None):
    """x: N×D×H×W×C -> y: N×C, the mean over D·H·W (float64 sums)."""
    x = _x5(x)
    n, c = x.shape[0], x.shape[-1]
    y = _buffer(out, (n, c), x.dtype)
    _global_avg_fwd(x.reshape(n, -1, c), y)
    return y


def global_avgpool_backward(dy, x_shape, *, out=None):
    """dy: N×C -> dx: x_shape (N×D×H×W×C), dy / (D·H·W) everywhere."""
    dy = np.ascontiguousarray(dy)
    n, c = x_shape[0], x_shape[-1]
    if len(x_shape) != 5 or dy.shape != (n, c):
        raise ValueError(f"dy {dy.shape} does not fit x {tuple(x_shape)}")
    dx = _buffer(out, tuple(x_shape), dy.dtype)
    _global_avg_bwd(dy, dx.reshape(n, -1, c))
    return dx


def global_maxpool_forward(x, *, out=None):
    """x: N×D×H×W×C -> (y: N×C, argmax: int32 N×C flat spatial index); `out=(y, argmax)`."""
    x = _x5(x)
    _check_spatial(x.shape)
    n, c = x.shape[0], x.shape[-1]
    yo, ao = (None, None) if out is None else out
    y, am = _buffer(yo, (n, c), x.dtype), _buffer(ao, (n, c), np.int32)
    _global_max_fwd(x.reshape(n, -1, c), y, am)
    return y, am


def global_maxpool_backward(dy, argmax, x_shape, *, out=None):
    """dy, argmax: N×C -> dx: x_shape, dy at the argmax, 0 elsewhere."""
    n, c = x_shape[0], x_shape[-1]
    if np.shape(dy) != (n, c) or np.shape(argmax) != (n, c):
        raise ValueError(f"dy {np.shape(dy)}, argmax {np.shape(argmax)} must be N×C = {(n, c)}")
    dy, argmax = np.reshape(dy, (n, 1, c)), np.reshape(argmax, (n, 1, c))
    return _scatter_backward(dy, argmax, x_shape, out)
