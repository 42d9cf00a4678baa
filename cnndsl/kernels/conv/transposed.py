"""Transposed conv (PyTorch's ConvTranspose, groups 1, dilation 1): the adjoint of conv, built
from the same pieces as the NumPy-BLAS conv path (`gemm.py`, `im2col.py`).

x, dx: N×D×H×W×C; w: C×F×KD×KH×KW (PyTorch's layout); y, dy: N×OD×OH×OW×F with
OD = (D − 1)·sd − 2·pd + KD + output_pad_d. Its forward is col2im(x · W), its backward an
ordinary conv of dy (dx = im2col(dy) · Wᵀ, dW from im2col(dy)ᵀ · x).
"""

from __future__ import annotations

import math

import numpy as np

from cnndsl.kernels.conv.common import _c, geometry
from cnndsl.kernels.conv.epilogue import _add_bias, _sum_rows
from cnndsl.kernels.conv.gemm import _blocks, _col2im_gemm, _gemm_dwt, _gemm_y
from cnndsl.kernels.conv.im2col import _cols, _matrix, _unmatrix


def convt_output(sizes, kernel, stride, pad, output_pad) -> tuple:
    """Output sizes of a transposed conv: (in − 1)·s − 2·pad + k + output_pad."""
    return tuple((n - 1) * s - 2 * p + k + o
                 for n, k, s, p, o in zip(sizes, kernel, stride, pad, output_pad))


def convt_forward(x, w, b, stride, pad, output_pad):
    """Transposed convolution as PyTorch's ConvTranspose (groups 1, dilation 1).

    x: N×D×H×W×C, w: C×F×KD×KH×KW, b: (F,) or None -> y: N×OD×OH×OW×F with
    OD = (D − 1)·sd − 2·pd + KD + output_pad_d. It is the adjoint (dx) of the conv with
    weight w (C outputs from F inputs), stride `stride` and padding `pad` on a y-sized input.
    """
    x = _c(x)
    w = _c(w, x.dtype)
    kernel, f = w.shape[2:], w.shape[1]
    out = convt_output(x.shape[1:4], kernel, stride, pad, output_pad)
    y = np.empty((x.shape[0], *out, f), x.dtype)
    where = geometry(kernel, stride, (1, 1, 1), pad, x.shape[1:4])
    x2, w2 = x.reshape(-1, x.shape[-1]), _matrix(w, 1)
    p = math.prod(x.shape[1:4])
    for n0, n1 in _blocks(x.shape[0], p * w2.shape[2] * x.itemsize):
        _col2im_gemm(x2[n0 * p:n1 * p], w2, where, y[n0:n1])
    _add_bias(y.reshape(-1, f), b)
    return y


def convt_backward(x, w, dy, stride, pad, output_pad, need_dx=True):
    """Gradients of `convt_forward` -> (dx: like x or None, dw: C×F×KD×KH×KW, db: (F,))."""
    x = _c(x)
    w = _c(w, x.dtype)
    dy = _c(dy, x.dtype)
    # the adjoint conv (weight w, input dy, output x-sized): dx is its forward, dw its dW
    where = geometry(w.shape[2:], stride, (1, 1, 1), pad, x.shape[1:4])
    x2, w2 = x.reshape(-1, x.shape[-1]), _matrix(w, 1)
    dx = np.empty_like(x) if need_dx else None
    dwt = np.zeros((1, w2.shape[2], w2.shape[1]), x.dtype)
    p = math.prod(x.shape[1:4])
    for n0, n1 in _blocks(x.shape[0], p * w2.shape[2] * x.itemsize):
        cols = _cols(dy[n0:n1], where, 1)
        _gemm_dwt(cols, x2[n0 * p:n1 * p], dwt)
        if need_dx:
            _gemm_y(cols, w2, dx.reshape(-1, x.shape[-1])[n0 * p:n1 * p])
    dw = _unmatrix(dwt.transpose(0, 2, 1), w.shape)
    return dx, dw, _sum_rows(dy.reshape(-1, w.shape[1]))
