"""What runs on a conv's output rows after its GEMM: bias and ReLU (forward), the ReLU mask and
the bias gradient (backward), for the paths that do not fuse them into their own kernels
(the blocked kernels of `blocked.py` do).

y2, dy2: the output as a matrix M×F, M = N·OD·OH·OW rows of F channels (C-contiguous), i.e.
y: N×OD×OH×OW×F reshaped. Sums accumulate in float64 over a fixed chunking (deterministic).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnndsl.kernels.conv.common import U, _buffer, _c, kernel


@kernel
def _add_rows(y2, b, relu):
    """y2[r, :] = y2[r, :] + b for every row, then max(·, 0) if `relu` (NaN propagates).
    y2: M×F (C-contiguous). Parallel over row blocks; flat unsigned indices (see `_im2col`)."""
    m, f = y2.shape
    yf = y2.reshape(y2.size)
    nblock = (m + 255) // 256
    for blk in prange(nblock):
        for r in range(blk * 256, min(m, blk * 256 + 256)):
            row = U(r * f)
            for c in range(U(f)):
                v = yf[row + c] + b[c]
                yf[row + c] = 0.0 if relu and v < 0 else v


@kernel
def _row_sums(a, part):
    """part[t] += the column sums of rows [t·M/T, (t+1)·M/T) of a: M×F (C-contiguous);
    part: T×F float64, zeroed by the caller."""
    m, f = a.shape
    nchunk = part.shape[0]
    af = a.reshape(a.size)
    for t in prange(nchunk):
        pt = part[t]
        for r in range(t * m // nchunk, (t + 1) * m // nchunk):
            row = U(r * f)
            for c in range(U(f)):
                pt[c] += af[row + c]


@kernel
def _relu_mask_sums(y2, dy2, out, part):
    """out = dy2 where y2 > 0 else 0 (the ReLU backward folded into the conv's), and float64
    partial column sums of out into part as `_row_sums`. y2, dy2, out: M×F, C-contiguous;
    out may be dy2."""
    m, f = dy2.shape
    nchunk = part.shape[0]
    yf, dyf, of = y2.reshape(y2.size), dy2.reshape(dy2.size), out.reshape(out.size)
    for t in prange(nchunk):
        pt = part[t]
        for r in range(t * m // nchunk, (t + 1) * m // nchunk):
            row = U(r * f)
            for c in range(U(f)):
                v = dyf[row + c] if yf[row + c] > 0 else 0.0
                of[row + c] = v
                pt[c] += v


def _add_bias(y2, b, relu=False):
    """y2 += b (b: (F,) or None), then max(·, 0) if `relu`; in place."""
    if b is not None or relu:
        bias = np.zeros(y2.shape[1], y2.dtype) if b is None else _c(b, y2.dtype)
        _add_rows(y2, bias, relu)


def _sum_rows(a2):
    """Column sums of a2: M×F, accumulated in float64 (deterministic chunking)."""
    part = np.zeros((max(1, min(64, a2.shape[0])), a2.shape[1]))
    _row_sums(a2, part)
    return part.sum(axis=0).astype(a2.dtype)


def _relu_masked(y2, dy2):
    """(dy2 masked by y2 > 0, its column sums), in one pass. The masked copy is a scratch
    buffer: it never leaves `conv_backward`."""
    out = _buffer("dy", dy2.shape, dy2.dtype)
    part = np.zeros((max(1, min(64, dy2.shape[0])), dy2.shape[1]))
    _relu_mask_sums(_c(y2, dy2.dtype), dy2, out, part)
    return out, part.sum(axis=0).astype(dy2.dtype)
