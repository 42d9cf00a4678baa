"""The blocked path for small convs: one parallel Numba region per layer and pass.

Convs with few patch bytes per image (the small layers of small networks, `is_blocked`) run
here: each thread takes a run of images and, block by block, does im2col, its GEMMs
(`np.dot` inside Numba, on SciPy's BLAS held at one thread while the kernel runs: a
multi-threaded BLAS inside Numba's parallel region would nest two thread pools, which
OpenBLAS warns "may hang") and bias/ReLU — or the ReLU
mask, dW, db and col2im. Hand-offs between Numba's and OpenBLAS's thread pools, twice per
kernel otherwise, cost more than the arithmetic in such layers (net A of
benchmarks/bench_train.py: 3.7 -> 2.8 ms per training step). Larger convs take the
NumPy-BLAS path of `gemm.py`.

x, dx: N×D×H×W×C; y2, dy2: the output N×OD×OH×OW×F as a (N·OD·OH·OW)×F matrix; the weight
as w2: G×Fg×Kg (`im2col._matrix`) or its transpose w2t: G×Kg×Fg; patches cols: G×M×Kg as
`im2col.py` lays them out, one slab per run.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from cnndsl.kernels.conv import common
from cnndsl.kernels.conv.common import U, _buffer, _c, kernel
from cnndsl.kernels.conv.im2col import _col2im_rows, _im2col_rows, _matrix, _unmatrix
from cnndsl.parallel import pin_kernel_blas
from cnndsl.threads import one_blas_thread


class BlockPlan(NamedTuple):
    """How the blocked kernels cut a batch: `nchunk` near-equal runs of images (one per
    Numba thread), each done `per_block` images at a time."""

    nchunk: int
    per_block: int


def is_pointwise(x, geometry) -> bool:
    """A 1×1 conv whose patches are x itself (no im2col needed)."""
    kernel, stride, pad_before, out = geometry.kernel, geometry.stride, geometry.pad, geometry.out
    return (tuple(kernel) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and not any(pad_before)
            and tuple(out) == x.shape[1:4])


def is_blocked(x, w, groups, geometry) -> bool:
    """Whether a conv runs here: few patch bytes per image, where hand-offs between thread
    pools cost more than the arithmetic. Larger convs keep NumPy's BLAS on big blocks, which
    measured faster (nets B and C); 1×1 convs need no patches at all."""
    patch_bytes = math.prod(geometry.out) * math.prod(w.shape[1:]) * groups * x.itemsize
    return patch_bytes <= common._BLOCKED_MAX_IMAGE_BYTES and not is_pointwise(x, geometry)


def _plan(x, patch_width, out) -> BlockPlan:
    """One run per Numba thread (one in a data-parallel shard); blocks of about
    `_THREAD_BLOCK_BYTES` of patches, so each block's GEMM reads them from the core's own
    cache."""
    n = x.shape[0]
    pin_kernel_blas()
    nchunk = max(1, min(n, numba.get_num_threads()))
    per_image = math.prod(out) * patch_width * x.itemsize
    per_block = max(1, min(-(-n // nchunk), common._THREAD_BLOCK_BYTES // per_image))
    return BlockPlan(nchunk, per_block)


def _kept_cols(x, ng, kg, out, keep):
    """An array (1×G×M×Kg) for a training forward to leave the whole batch's patches in, in
    `keep` for its backward; or None: not training, or larger than `_BLOCK_BYTES` (the
    backward then recomputes them block by block)."""
    if keep is None:
        return None
    shape = (1, ng, x.shape[0] * math.prod(out), kg)
    if math.prod(shape) * x.itemsize > common._BLOCK_BYTES:
        keep.pop("cols", None)
        return None
    cols = keep.get("cols")
    if cols is None or cols.shape != shape or cols.dtype != x.dtype:
        cols = keep["cols"] = np.empty(shape, x.dtype)
    return cols


def blocked_forward(x, w, b, groups, relu, geometry, keep, y2) -> None:
    """y2 = conv(x, w) + b (then ReLU if `relu`) for `conv_forward`; may leave the patches in
    `keep` (see `_kept_cols`). w: F×(C/groups)×KD×KH×KW, b: (F,) or None."""
    w2t = _c(_matrix(w, groups).transpose(0, 2, 1))
    ng, kg = w2t.shape[0], w2t.shape[1]
    bias = np.zeros(w.shape[0], x.dtype) if b is None else _c(b, x.dtype)
    plan = _plan(x, ng * kg, geometry.out)
    cols = _kept_cols(x, ng, kg, geometry.out, keep)
    whole = cols is not None
    if not whole:
        cols = _buffer("patches", (plan.nchunk, ng, plan.per_block * math.prod(geometry.out),
                                   kg), x.dtype)
    with one_blas_thread(everywhere=False):  # also when called outside a model step
        _conv_blocks_forward(x, w2t, bias, relu, y2, cols, whole, plan, geometry)


def blocked_backward(x, w, dy, groups, geometry, need_dx, y, keep):
    """`conv_backward` for the convs `is_blocked` picks -> (dx or None, dw, db)."""
    f = w.shape[0]
    out = geometry.out
    w2 = _matrix(w, groups)
    ng, fg, kg = w2.shape
    plan = _plan(x, ng * kg, out)
    rows = plan.per_block * math.prod(out)
    cols = None if keep is None else keep.get("cols")  # the forward's patches of this x
    whole = (cols is not None and cols.shape == (1, ng, x.shape[0] * math.prod(out), kg)
             and cols.dtype == x.dtype)
    if not whole:
        cols = _buffer("patches", (plan.nchunk, ng, rows, kg), x.dtype)
    dx = np.empty_like(x) if need_dx else np.empty((0, 1, 1, 1, 1), x.dtype)
    dcols = _buffer("dpatches", (plan.nchunk, ng, rows if need_dx else 1, kg), x.dtype)
    dwt_part = np.zeros((plan.nchunk, ng, kg, fg), x.dtype)
    db_part = np.zeros((plan.nchunk, f))
    dy2 = dy.reshape(-1, f)
    y2 = dy2 if y is None else _c(y, x.dtype).reshape(-1, f)
    with one_blas_thread(everywhere=False):
        _conv_blocks_backward(x, w2, dy2, y2, y is not None, dx, need_dx, cols, whole,
                              _buffer("dy", (plan.nchunk, rows, f), x.dtype), dcols, dwt_part,
                              db_part, plan, geometry)
    dw = _unmatrix(dwt_part.sum(axis=0).transpose(0, 2, 1), w.shape)
    return (dx if need_dx else None), dw, db_part.sum(axis=0).astype(x.dtype)


# -------------------------------------------------------------------------------------- kernels

@kernel
def _conv_blocks_forward(x, w2t, bias, relu, y2, cols, whole, plan, geometry):
    """y2 = im2col(x) · W (+ bias, then max(·, 0) if `relu`; NaN propagates), in one parallel
    region: the images are cut into `plan.nchunk` near-equal runs, one per thread, and each
    run is done `plan.per_block` images at a time (patches, their GEMM while they are still
    in cache, then bias and ReLU), so a layer costs one hand-off between threads, not one per
    step.

    x: N×D×H×W×C; w2t: G×Kg×Fg (the weight as columns); bias: (F,); y2: (N·OD·OH·OW)×F.
    cols: 1×G×M×Kg receiving the whole batch's patches (kept for the backward) if `whole`,
    else nchunk×G×(per_block·OD·OH·OW)×Kg scratch, one slab per run."""
    nchunk, per_block = plan
    od_, oh_, ow_ = geometry.od, geometry.oh, geometry.ow
    n_ = x.shape[0]
    ng, fg = w2t.shape[0], w2t.shape[2]
    f_ = ng * fg
    rows_img = od_ * oh_
    pix_img = rows_img * ow_
    yf = y2.reshape(y2.size)
    for run in prange(nchunk):
        t = np.int64(run)  # (signed: see im2col.py on index types)
        slab = 0 if whole else t
        for nb in range(t * n_ // nchunk, (t + 1) * n_ // nchunk, per_block):
            ne = min(nb + per_block, (t + 1) * n_ // nchunk)
            p0, p1 = nb * pix_img, ne * pix_img
            off = 0 if whole else p0
            _im2col_rows(x, cols[slab], off, nb * rows_img, ne * rows_img, geometry)
            for g in range(ng):
                patches = cols[slab, g, p0 - off:p1 - off]
                if ng == 1:
                    np.dot(patches, w2t[0], y2[p0:p1])
                    continue
                yg = np.dot(patches, w2t[g])
                for p in range(p1 - p0):  # (a loop: a slice assignment costs 3 s to compile)
                    for c in range(fg):
                        y2[p0 + p, g * fg + c] = yg[p, c]
            for row in range(U(p0 * f_), U(p1 * f_), U(f_)):
                for c in range(U(f_)):
                    v = yf[row + c] + bias[c]
                    yf[row + c] = 0.0 if relu and v < 0 else v


@kernel
def _conv_blocks_backward(x, w2, dy2, y2, relu, dx, need_dx, cols, whole, dyb, dcols, dwt_part,
                          db_part, plan, geometry):
    """Backward of `_conv_blocks_forward`, cut the same way: for each block, dY (zeroed where
    y2 <= 0 if `relu`), its bias and weight gradients, and (if `need_dx`) dx = col2im(dY·W).

    w2: G×Fg×Kg; dy2, y2: (N·OD·OH·OW)×F (y2 is only read with `relu`); dx: N×D×H×W×C.
    cols as in the forward (with `whole`, the kept patches; else scratch, refilled here).
    Scratch slabs: dyb: nchunk×(per_block·OD·OH·OW)×F, dcols like cols. Out: dwt_part
    nchunk×G×Kg×Fg and db_part nchunk×F (float64), zeroed by the caller: run t's sums."""
    nchunk, per_block = plan
    od_, oh_, ow_ = geometry.od, geometry.oh, geometry.ow
    n_ = x.shape[0]
    d_, h_ = x.shape[1], x.shape[2]
    ng, fg = w2.shape[0], w2.shape[1]
    f_ = ng * fg
    rows_img = od_ * oh_
    pix_img = rows_img * ow_
    dyf = dy2.reshape(dy2.size)
    yf = y2.reshape(y2.size)
    for run in prange(nchunk):
        t = np.int64(run)  # (signed: see im2col.py on index types)
        slab = 0 if whole else t
        dbt = db_part[t]
        for nb in range(t * n_ // nchunk, (t + 1) * n_ // nchunk, per_block):
            ne = min(nb + per_block, (t + 1) * n_ // nchunk)
            p0, p1 = nb * pix_img, ne * pix_img
            off = 0 if whole else p0
            if not whole:
                _im2col_rows(x, cols[slab], off, nb * rows_img, ne * rows_img, geometry)
            d = dyb[t, :p1 - p0]
            df = d.reshape(d.size)
            for p in range(U(p1 - p0)):
                src, dst = U((p0 + p) * f_), U(p * f_)
                for c in range(U(f_)):
                    v = dyf[src + c]
                    if relu and not yf[src + c] > 0:
                        v = 0.0
                    df[dst + c] = v
                    dbt[c] += v
            for g in range(ng):
                patches = cols[slab, g, p0 - off:p1 - off]
                dg = d if ng == 1 else np.ascontiguousarray(d[:, g * fg:(g + 1) * fg])
                gw = np.dot(patches.T, dg)
                acc = dwt_part[t, g]
                for k in range(gw.shape[0]):  # (a loop: an array += costs 3 s to compile)
                    for c in range(fg):
                        acc[k, c] += gw[k, c]
                if need_dx:
                    np.dot(dg, w2[g], dcols[t, g, :p1 - p0])
            if need_dx:
                _col2im_rows(dcols[t], dx, p0, nb * d_ * h_, ne * d_ * h_, geometry)
