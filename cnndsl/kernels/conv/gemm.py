"""The conv entry points `conv_forward` / `conv_backward` (and depthwise ones, which are
conv with groups = C), the path each conv takes, and the GEMM drivers of the NumPy-BLAS path.

x, dx: N×D×H×W×C; w: F×(C/groups)×KD×KH×KW (PyTorch's layout); y, dy: N×OD×OH×OW×F, seen
as y2, dy2: (N·OD·OH·OW)×F matrices; triples are (D, H, W) ints. Every entry point returns
fresh, C-contiguous arrays of x's dtype.

Conv is im2col + GEMM (`im2col.py`): forward y = cols·Wᵀ; backward dW = dYᵀ·cols and
dcols = dY·W followed by col2im. Paths, chosen per call:

- 3×3, stride 1, "same" padding, 32k channels in and out, float32: the register-tiled
  direct kernels of `direct_path.py` (no patch matrix); at inference, stride-1 convs with
  at most 32 filters take the planar kernels (`planar_path.py`: few channels in or out,
  or a max pool to fuse) or the narrow ones (`direct_path.py`);
- depthwise (groups = C, one input channel per group): direct loops, `depthwise.py`;
- small convs (`blocked.is_blocked`): one parallel Numba region per layer, `blocked.py`;
- the rest, here: im2col / col2im as parallel Numba kernels and the GEMMs from Python
  through `np.matmul` (NumPy's OpenBLAS, its own threads), in blocks of whole images of
  about `_BLOCK_BYTES` of patches, so each block's patches are still in cache when its GEMM
  reads them (10–25% faster than one big im2col here).
"""

from __future__ import annotations

import math

import numpy as np

from cnndsl.kernels import out_buffer
from cnndsl.kernels.conv import common, direct_path, planar_path
from cnndsl.kernels.conv.blocked import blocked_backward, blocked_forward, is_blocked
from cnndsl.kernels.conv.common import _buffer, _c, geometry
from cnndsl.kernels.conv.depthwise import _depthwise_backward, _depthwise_forward
from cnndsl.kernels.conv.epilogue import _add_bias, _relu_masked, _sum_rows
from cnndsl.kernels.conv.im2col import _col2im, _cols, _matrix, _unmatrix
from cnndsl.kernels.pool import maxpool_forward


def conv_output(sizes, kernel, stride, dilation, pad_before, pad_after) -> tuple:
    """Output sizes (D, H, W) of a zero-padded conv."""
    return tuple((n + p0 + p1 - d * (k - 1) - 1) // s + 1 for n, k, s, d, p0, p1
                 in zip(sizes, kernel, stride, dilation, pad_before, pad_after))


def conv_forward(x, w, b, stride, dilation, pad_before, pad_after, groups, relu=False,
                 keep=None, out=None, pool=None):
    """Convolution (cross-correlation) with zero padding, possibly asymmetric; with `relu`,
    max(y, 0) fused in (NaN propagates). `keep`: a dict in which the forward may leave work
    for `conv_backward` of the same x and w (here the patch matrix, when the whole batch is
    one block of at most `_BLOCK_BYTES`); pass the same dict to the backward. `out`: the
    array to write y into (C-contiguous, y's shape and dtype), returned.

    `pool` (inference): (kernel, stride, pad_before, pad_after) triples of a max pool of
    the output (after the ReLU), returned instead of y; no backward follows such a call.

    x: N×D×H×W×C, w: F×(C/groups)×KD×KH×KW, b: (F,) or None -> y: N×OD×OH×OW×F,
    OD = (D + pb + pa − dd·(KD−1) − 1)//sd + 1 (likewise OH, OW).
    """
    x = _c(x)
    w = _c(w, x.dtype)
    kernel = w.shape[2:]
    sizes = conv_output(x.shape[1:4], kernel, stride, dilation, pad_before, pad_after)
    where = geometry(kernel, stride, dilation, pad_before, sizes)
    f = w.shape[0]
    if pool is not None:
        return _pooled(x, w, b, stride, dilation, pad_before, pad_after, groups, relu, where,
                       pool, out)
    if _is_depthwise(x, w, groups):
        y = _depthwise_forward(x, w, b, where)
        if relu:
            _add_bias(y.reshape(-1, y.shape[-1]), None, True)
        if out is None:
            return y
        out_buffer(out, y.shape, y.dtype)[...] = y
        return out
    y = out_buffer(out, (x.shape[0], *sizes, f), x.dtype)
    y2 = y.reshape(-1, f)
    training = keep is not None
    if direct_path.fits(x, w, groups, where):
        direct_path.forward(x, w, b, relu, y, training=training)
        return y
    if planar_path.fits(x, w, groups, where, training=training, pooled=False):
        planar_path.forward(x, w, b, relu, where, y)
        return y
    if direct_path.narrow_fits(x, w, groups, where, training=training):
        direct_path.narrow_forward(x, w, b, relu, where, y)
        return y
    if is_blocked(x, w, groups, where):
        blocked_forward(x, w, b, groups, relu, where, keep, y2)
        return y
    _conv_y(x, _matrix(w, groups), where, y2)
    _add_bias(y2, b, relu)
    return y


def _pooled(x, w, b, stride, dilation, pad_before, pad_after, groups, relu, where, pool,
            out):
    """conv_forward with `pool`: in one pass on the planar path, else the conv and then the
    max pool's values (no argmax: nothing will route a gradient through it). A conv the
    direct kernels take stays there: at ≈210 GFLOP/s they beat the fused planar pass
    (B's 32 -> 32 channels on 28×28: 17.7 + 1.5 ms for the pool against 22.7)."""
    kernel, pool_stride, before, after = pool
    sizes = conv_output(where.out, kernel, pool_stride, (1, 1, 1), before, after)
    if (not direct_path.fits(x, w, groups, where)
            and planar_path.fits(x, w, groups, where, training=False, pooled=True)
            and planar_path.pool_fits(kernel, pool_stride, before, after)):
        y = out_buffer(out, (x.shape[0], *sizes, w.shape[0]), x.dtype)
        planar_path.forward(x, w, b, relu, where, y, pool=(kernel[1:], pool_stride[1:]))
        return y
    y = conv_forward(x, w, b, stride, dilation, pad_before, pad_after, groups, relu=relu)
    pooled, _ = maxpool_forward(y, kernel, pool_stride, before, after, indices=False,
                                out=None if out is None else (out, None))
    return pooled


def conv_backward(x, w, dy, stride, dilation, pad_before, pad_after, groups, need_dx=True,
                  y=None, keep=None):
    """Gradients of `conv_forward` -> (dx: N×D×H×W×C or None, dw: like w, db: (F,)).

    dy: N×OD×OH×OW×F; db is dy summed over N, D, H, W (returned even without a bias).
    `y`: the output of a forward with `relu`; dy is then first zeroed where y <= 0.
    `keep`: the dict given to that forward, if any.
    """
    x = _c(x)
    w = _c(w, x.dtype)
    dy = _c(dy, x.dtype)
    where = geometry(w.shape[2:], stride, dilation, pad_before, dy.shape[1:4])
    if direct_path.fits(x, w, groups, where):
        return direct_path.backward(x, w, dy, need_dx, y)
    if _is_depthwise(x, w, groups) or not is_blocked(x, w, groups, where):
        return _conv_backward_unblocked(x, w, dy, where, groups, need_dx, y)
    return blocked_backward(x, w, dy, groups, where, need_dx, y, keep)


def _conv_backward_unblocked(x, w, dy, where, groups, need_dx, y):
    """conv_backward for depthwise convs (direct loops) and the others `is_blocked` leaves to
    NumPy's BLAS."""
    f = w.shape[0]
    if y is not None:
        dy2, db = _relu_masked(y.reshape(-1, f), dy.reshape(-1, f))
        dy = dy2.reshape(dy.shape)
    else:
        dy2, db = dy.reshape(-1, f), None
    if _is_depthwise(x, w, groups):
        dx, dw, db_dw = _depthwise_backward(x, w, dy, where, need_dx)
        return dx, dw, db_dw if db is None else db
    if db is None:
        db = _sum_rows(dy2)
    dx = np.empty_like(x) if need_dx else None
    dwt = _conv_dwt(x, dy2, _matrix(w, groups), where, dx)
    return dx, _unmatrix(dwt.transpose(0, 2, 1), w.shape), db


def _is_depthwise(x, w, groups):
    return groups > 1 and groups == x.shape[-1] and w.shape[1] == 1


# ------------------------------------------------------------------------------ depthwise conv

def depthwise_forward(x, w, b, stride, pad_before, pad_after):
    """Depthwise conv (groups = C). x: N×D×H×W×C, w: (C·m)×1×KD×KH×KW, b: (C·m,) or None ->
    y: N×OD×OH×OW×(C·m); output channel o reads input channel o // m (PyTorch's order).
    (`conv_forward` with groups = C: the direct loops of depthwise.py when C > 1.)"""
    return conv_forward(x, w, b, stride, (1, 1, 1), pad_before, pad_after, np.shape(x)[-1])


def depthwise_backward(x, w, dy, stride, pad_before, pad_after, need_dx=True):
    """Gradients of `depthwise_forward` -> (dx or None, dw: like w, db: (C·m,))."""
    return conv_backward(x, w, dy, stride, (1, 1, 1), pad_before, pad_after, np.shape(x)[-1],
                         need_dx)


# ------------------------------------------------------------------------- NumPy-BLAS drivers

def _blocks(n, bytes_per_image):
    """Split n images into near-equal consecutive blocks of about _BLOCK_BYTES of patches each,
    so that a block's im2col output is still in cache when its GEMM reads it."""
    nblock = min(n, max(1, -(-n * bytes_per_image // common._BLOCK_BYTES)))
    per = max(1, -(-n // max(1, nblock)))
    return [(n0, min(n, n0 + per)) for n0 in range(0, n, per)]


def _gemm_y(cols, w2, y2):
    """y2[:, group g] = cols[g] · w2[g]ᵀ.  cols: G×M×Kg, w2: G×Fg×Kg, y2: M×F."""
    fg = w2.shape[1]
    for g in range(w2.shape[0]):
        np.matmul(cols[g], w2[g].T, out=y2[:, g * fg:(g + 1) * fg])


def _gemm_dwt(cols, dy2, dwt):
    """dwt[g] += cols[g]ᵀ · dY[:, group g] (the transposed weight gradient, G×Kg×Fg).

    The long M axis is contracted this way round because OpenBLAS's two threads stay fast
    then when another process shares the cores (dYᵀ · cols measured up to 60x slower)."""
    fg = dwt.shape[2]
    for g in range(dwt.shape[0]):
        dwt[g] += np.matmul(cols[g].T, dy2[:, g * fg:(g + 1) * fg])


def _conv_y(x, w2, where, y2):
    """y2 = im2col(x) · W2ᵀ, one block of images at a time (NumPy's BLAS for the GEMMs).
    where: the conv's `Geometry`; y2: (N·OD·OH·OW)×F."""
    ng, _, kg = w2.shape
    p = math.prod(where.out)
    for n0, n1 in _blocks(x.shape[0], p * ng * kg * x.itemsize):
        _gemm_y(_cols(x[n0:n1], where, ng), w2, y2[n0 * p:n1 * p])


def _conv_dwt(x, dy2, w2, where, dx):
    """Backward of `_conv_y`: returns dW transposed (G×Kg×Fg); if dx is given, fills it with
    col2im(dY · W2). Block by block: im2col, dWᵀ += colsᵀ·dY, dcols = dY·W2, col2im."""
    ng, fg, kg = w2.shape
    p = math.prod(where.out)
    dwt = np.zeros((ng, kg, fg), x.dtype)
    for n0, n1 in _blocks(x.shape[0], p * ng * kg * x.itemsize):
        dyb = dy2[n0 * p:n1 * p]
        _gemm_dwt(_cols(x[n0:n1], where, ng), dyb, dwt)
        if dx is not None:
            _col2im_gemm(dyb, w2, where, dx[n0:n1])
    return dwt


def _col2im_gemm(dy2, w2, where, dx):
    """dx = col2im(dY · W2) for dy2: (n·OD·OH·OW)×F and dx: n×D×H×W×C (whole images)."""
    ng, fg, kg = w2.shape
    dcols = _buffer("dcols", (ng, dy2.shape[0], kg), dx.dtype)
    for g in range(ng):
        np.matmul(dy2[:, g * fg:(g + 1) * fg], w2[g], out=dcols[g])
    _col2im(dcols, dx, where)
