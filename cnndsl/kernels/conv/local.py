"""Locally connected layers: a valid conv whose weights differ per output position, as one
small GEMM per output position p = (od·OH + oh)·OW + ow.

x, dx: N×D×H×W×C (already padded by the op); w: OD×OH×OW×F×C×KD×KH×KW; b: F×OD×OH×OW;
y, dy: N×OD×OH×OW×F. The patches are cols: P×N×K with K = C·KD·KH·KW in the local weight's
(C, KD, KH, KW) order (unlike conv's im2col, whose columns are (KD, KH, KW, C)). The kernels
take the triples `window` (KD, KH, KW), `stride` and `out` (OD, OH, OW): no dilation, no
padding.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnndsl.kernels.conv.common import _buffer, _c, kernel


def _local_cols(x, w, stride):
    od, oh, ow, _, c, kd, kh, kw = w.shape
    cols = _buffer("cols", (od * oh * ow, x.shape[0], c * kd * kh * kw), x.dtype)
    _local_im2col(x, cols, (kd, kh, kw), _ints(stride), (od, oh, ow))
    return cols


def _ints(triple) -> tuple:
    """(D, H, W) as plain Python ints: one Numba type, UniTuple(int64, 3)."""
    return tuple(int(v) for v in triple)


def local_forward(x, w, b, stride):
    """Locally connected layer: a valid conv whose weights differ per output position.

    x: N×D×H×W×C, w: OD×OH×OW×F×C×KD×KH×KW, b: F×OD×OH×OW or None -> y: N×OD×OH×OW×F.
    """
    x = _c(x)
    w = _c(w, x.dtype)
    od, oh, ow, f = w.shape[:4]
    p, n = od * oh * ow, x.shape[0]
    cols = _local_cols(x, w, stride)
    yp = np.matmul(cols, w.reshape(p, f, -1).transpose(0, 2, 1),
                   out=_buffer("dcols", (p, n, f), x.dtype))
    y = np.empty((n, od, oh, ow, f), x.dtype)
    y.reshape(n, p, f)[...] = yp.transpose(1, 0, 2)
    if b is not None:
        y += np.moveaxis(np.asarray(b, dtype=x.dtype), 0, -1)
    return y


def local_backward(x, w, dy, stride, need_dx=True):
    """Gradients of `local_forward` -> (dx or None, dw: like w, db: F×OD×OH×OW)."""
    x = _c(x)
    w = _c(w, x.dtype)
    dy = _c(dy, x.dtype)
    od, oh, ow, f = w.shape[:4]
    p, n = od * oh * ow, x.shape[0]
    dyp = _c(dy.reshape(n, p, f).transpose(1, 0, 2))
    cols = _local_cols(x, w, stride)
    dw = np.matmul(dyp.transpose(0, 2, 1), cols).reshape(w.shape)
    db = _c(dy.sum(axis=0, dtype=np.float64).reshape(p, f).T.reshape(f, od, oh, ow), x.dtype)
    dx = None
    if need_dx:
        dcols = np.matmul(dyp, w.reshape(p, f, -1),
                          out=_buffer("dcols", cols.shape, x.dtype))
        dx = np.empty_like(x)
        _local_col2im(dcols, dx, w.shape[5:], _ints(stride), (od, oh, ow))
    return dx, dw, db


# -------------------------------------------------------------------------------------- kernels

@kernel
def _local_im2col(x, cols, window, stride, out):
    """cols[p, n, ((c·KD + a)·KH + b)·KW + e] = x[n, od·sd + a, oh·sh + b, ow·sw + e, c] with
    p = (od·OH + oh)·OW + ow (the local weight's (C, KD, KH, KW) order). cols: P×N×K.
    Parallel over output positions p."""
    (kd, kh, kw), (sd, sh, sw), (od_, oh_, ow_) = window, stride, out
    n_, _, _, _, c_ = x.shape
    for p in prange(od_ * oh_ * ow_):
        od = p // (oh_ * ow_)
        oh = (p // ow_) % oh_
        ow = p % ow_
        for n in range(n_):
            for c in range(c_):
                for a in range(kd):
                    for b in range(kh):
                        for e in range(kw):
                            cols[p, n, ((c * kd + a) * kh + b) * kw + e] = \
                                x[n, od * sd + a, oh * sh + b, ow * sw + e, c]


@kernel
def _local_col2im(dcols, dx, window, stride, out):
    """Adjoint of `_local_im2col` into dx: N×D×H×W×C (overwritten). Parallel over images n;
    each iteration writes only dx[n]."""
    (kd, kh, kw), (sd, sh, sw), (od_, oh_, ow_) = window, stride, out
    n_, _, _, _, c_ = dx.shape
    for n in prange(n_):
        dxn = dx[n]
        dxn[:, :, :, :] = 0
        for p in range(od_ * oh_ * ow_):
            od = p // (oh_ * ow_)
            oh = (p // ow_) % oh_
            ow = p % ow_
            for c in range(c_):
                for a in range(kd):
                    for b in range(kh):
                        for e in range(kw):
                            dxn[od * sd + a, oh * sh + b, ow * sw + e, c] += \
                                dcols[p, n, ((c * kd + a) * kh + b) * kw + e]
