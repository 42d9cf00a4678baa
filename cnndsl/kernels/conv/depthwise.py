"""Depthwise conv (groups = C, one input channel per group) by direct loops: a per-channel
GEMM would be tiny, so the loops run along the contiguous channel axis instead.

x, dx: N×D×H×W×C; y, dy: N×OD×OH×OW×(C·m) with output channel c·m + k reading input
channel c (PyTorch's order; m = the channel multiplier); the weight as wt: (KD·KH·KW)×(C·m),
one row per tap (from PyTorch's (C·m)×1×KD×KH×KW). The public `depthwise_forward/backward`
are `conv_forward/backward` with groups = C (gemm.py), which route here when C > 1.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnndsl.kernels.conv.common import _c, _span, kernel
from cnndsl.kernels.conv.epilogue import _sum_rows
from cnndsl.kernels.jit import helper


def _depthwise_forward(x, w, b, geometry):
    """conv_forward for groups = C (w: (C·m)×1×KD×KH×KW), by direct loops."""
    f = w.shape[0]
    wt = _c(w.reshape(f, -1).T)
    bias = np.zeros(f, x.dtype) if b is None else _c(b, x.dtype)
    y = np.empty((x.shape[0], *geometry.out, f), x.dtype)
    _dw_forward(x, wt, bias, y, f // x.shape[-1], geometry)
    return y


def _depthwise_backward(x, w, dy, geometry, need_dx):
    """conv_backward for groups = C; dw from 16 (or fewer) partial sums over output rows."""
    f = w.shape[0]
    mult = f // x.shape[-1]
    nchunk = max(1, min(16, dy.shape[0] * dy.shape[1] * dy.shape[2]))
    part = np.zeros((nchunk, math.prod(w.shape[2:]), f), x.dtype)
    _dw_backward_w(x, dy, part, mult, geometry)
    dw = _c(part.sum(axis=0).T).reshape(w.shape)
    dx = None
    if need_dx:
        dx = np.empty_like(x)
        _dw_backward_x(dy, _c(w.reshape(f, -1).T), dx, mult, geometry)
    return dx, dw, _sum_rows(dy.reshape(-1, f))


# -------------------------------------------------------------------------------------- kernels

@helper
def _expand(xr, mult, out):
    """out[q, c·m + k] = xr[q, c]: an input row repeated to the depthwise output channels.
    Returns xr itself when m = 1."""
    if mult == 1:
        return xr
    for q in range(xr.shape[0]):
        for c in range(xr.shape[1]):
            for k in range(mult):
                out[q, c * mult + k] = xr[q, c]
    return out


@kernel
def _dw_forward(x, wt, b, y, mult, geometry):
    """Depthwise conv: y[n, o, c·m + k] = b[c·m + k] + sum_tap xpad[n, o·s + tap·d, c] ·
    wt[tap, c·m + k]. x: N×D×H×W×C, wt: (KD·KH·KW)×(C·m), y: N×OD×OH×OW×(C·m) (overwritten).
    Parallel over output rows (n, od, oh); inner loops run along the contiguous channel axis."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, _, _, _ = geometry  # (out: y's shape)
    n_, d_, h_, w_, _ = x.shape
    _, od_, oh_, ow_, f_ = y.shape
    for r in prange(n_ * od_ * oh_):
        n = r // (od_ * oh_)
        od = (r // oh_) % od_
        oh = r % oh_
        yr = y[n, od, oh]
        xe = np.empty((w_, f_), x.dtype)
        for ow in range(ow_):
            yr[ow, :] = b
        for a in range(kd):
            i = od * sd - pd0 + a * dd
            if i < 0 or i >= d_:
                continue
            for bb in range(kh):
                j = oh * sh - ph0 + bb * dh
                if j < 0 or j >= h_:
                    continue
                xs = _expand(x[n, i, j], mult, xe)
                for e in range(kw):
                    wk = wt[(a * kh + bb) * kw + e]
                    lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                    for ow in range(lo, hi):
                        yo, xo = yr[ow], xs[ow * sw - pw0 + e * dw]
                        for o in range(f_):
                            yo[o] += xo[o] * wk[o]


@kernel
def _dw_backward_x(dy, wt, dx, mult, geometry):
    """dx of `_dw_forward` (dx: N×D×H×W×C, overwritten). Gathers, parallel over input rows
    (n, i, j); each iteration writes only dx[n, i, j]."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, _, _, _ = geometry  # (out: y's shape)
    n_, d_, h_, w_, c_ = dx.shape
    _, od_, oh_, ow_, f_ = dy.shape
    for r in prange(n_ * d_ * h_):
        n = r // (d_ * h_)
        i = (r // h_) % d_
        j = r % h_
        acc = np.zeros((w_, f_), dx.dtype)  # the gradient of the expanded row (see `_expand`)
        for a in range(kd):
            t = i + pd0 - a * dd
            if t < 0 or t % sd != 0 or t // sd >= od_:
                continue
            for bb in range(kh):
                u = j + ph0 - bb * dh
                if u < 0 or u % sh != 0 or u // sh >= oh_:
                    continue
                dyr = dy[n, t // sd, u // sh]
                for e in range(kw):
                    wk = wt[(a * kh + bb) * kw + e]
                    lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                    for ow in range(lo, hi):
                        ao, do = acc[ow * sw - pw0 + e * dw], dyr[ow]
                        for o in range(f_):
                            ao[o] += do[o] * wk[o]
        dxr = dx[n, i, j]
        for q in range(w_):
            for c in range(c_):
                total = acc[q, c * mult]
                for k in range(1, mult):
                    total += acc[q, c * mult + k]
                dxr[q, c] = total


@kernel
def _dw_backward_w(x, dy, part, mult, geometry):
    """Partial weight gradients of `_dw_forward`: part[t, tap, o] sums chunk t of the output rows
    (n, od, oh). part: T×(KD·KH·KW)×(C·m), zeroed by the caller. Parallel over chunks."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, _, _, _ = geometry  # (out: y's shape)
    n_, d_, h_, w_, _ = x.shape
    _, od_, oh_, ow_, f_ = dy.shape
    nchunk = part.shape[0]
    rows = n_ * od_ * oh_
    for t in prange(nchunk):
        pt = part[t]
        xe = np.empty((w_, f_), x.dtype)
        for r in range(t * rows // nchunk, (t + 1) * rows // nchunk):
            n = r // (od_ * oh_)
            od = (r // oh_) % od_
            oh = r % oh_
            dyr = dy[n, od, oh]
            for a in range(kd):
                i = od * sd - pd0 + a * dd
                if i < 0 or i >= d_:
                    continue
                for bb in range(kh):
                    j = oh * sh - ph0 + bb * dh
                    if j < 0 or j >= h_:
                        continue
                    xs = _expand(x[n, i, j], mult, xe)
                    for e in range(kw):
                        pk = pt[(a * kh + bb) * kw + e]
                        lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                        for ow in range(lo, hi):
                            do, xo = dyr[ow], xs[ow * sw - pw0 + e * dw]
                            for o in range(f_):
                                pk[o] += do[o] * xo[o]
