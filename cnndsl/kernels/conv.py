"""Convolution-family kernels, forward and backward: conv (grouped, dilated, asymmetric zero
padding), transposed conv, depthwise conv and locally connected layers.

Layouts (see `cnndsl.kernels`): x, y, dx, dy are channels-last N×D×H×W×C; triples are (D, H, W)
ints; weights keep PyTorch's layouts. Every wrapper returns fresh, C-contiguous arrays of x's
dtype.

Method. Conv is im2col + GEMM: `cols` is G×M×Kg with one row per output pixel
(M = N·OD·OH·OW, row ((n·OD + od)·OH + oh)·OW + ow) and Kg = KD·KH·KW·(C/G) columns ordered
(kd, kh, kw, c), so each group's patch matrix is contiguous and the weight is re-laid out once
to G×Fg×Kg. Forward y = cols·Wᵀ; backward dW = dYᵀ·cols and dcols = dY·W followed by col2im.
The work goes in blocks of whole images, so each block's patches are still in cache when its
GEMM reads them (10–25% faster than one big im2col here). Two ways to run it (`_blocked`):

- convs with few patch bytes per image (the small layers of small networks) run as ONE
  parallel Numba region per layer and pass (`_conv_blocks_forward/backward`): each thread
  takes a run of images and does im2col, its GEMMs (`np.dot` inside Numba, on SciPy's BLAS
  pinned to one thread) and bias/ReLU, or the ReLU mask, dW, db and col2im, block by block.
  Hand-offs between Numba's and OpenBLAS's thread pools, twice per kernel otherwise, cost more
  than the arithmetic in such layers;
- larger convs run im2col / col2im as parallel Numba kernels and their GEMMs from Python
  through `np.matmul` on blocks of about `_BLOCK_BYTES` (NumPy's OpenBLAS, its own threads),
  which measured faster for them.

Transposed conv is the adjoint of conv and reuses the same
pieces; depthwise conv (groups = C) uses direct loops vectorised over the channel axis, since a
per-channel GEMM would be tiny; locally connected layers are one small GEMM per output position.

Scratch: `cols` / `dcols` live in per-thread buffers that grow to the largest block seen and
are reused by later calls (large fresh allocations page-fault on every step). They never escape
a wrapper, so outputs stay independent, and each thread has its own, so wrappers may run on
several threads at once (the model's data-parallel steps do). `clear_scratch()` releases the
calling thread's buffers.

Threads: Numba's pool and OpenBLAS's take turns on the same cores. With their default
busy-waiting each slows the other 2x or more; `import cnndsl` sets OMP_WAIT_POLICY=PASSIVE,
GOMP_SPINCOUNT and OPENBLAS_THREAD_TIMEOUT defaults, which work only if it runs before numpy
loads OpenBLAS and before the first kernel starts OpenMP.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import prange

from cnndsl.kernels.jit import helper, kernel
from cnndsl.parallel import pin_kernel_blas

_per_thread = threading.local()  # .scratch: (slot, dtype) -> reusable flat array
_BLOCK_BYTES = 8 << 20  # patch-matrix bytes per block: well inside this machine's 32 MiB L3
_THREAD_BLOCK_BYTES = 256 << 10  # patch bytes per block and thread: well inside L2 here
_BLOCKED_MAX_IMAGE_BYTES = 256 << 10  # see `_blocked`


def _buffer(slot: str, shape: tuple, dtype) -> np.ndarray:
    """A reusable array of `shape` (contents undefined), valid until the next use of `slot`."""
    size, key = math.prod(shape), (slot, np.dtype(dtype))
    scratch = _thread_scratch()
    buf = scratch.get(key)
    if buf is None or buf.size < size:
        buf = scratch[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _thread_scratch() -> dict:
    if not hasattr(_per_thread, "scratch"):
        _per_thread.scratch = {}
    return _per_thread.scratch


def clear_scratch() -> None:
    """Free this thread's reusable im2col/col2im buffers."""
    _thread_scratch().clear()


def _c(a, dtype=None) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def conv_output(sizes, kernel, stride, dilation, pad_before, pad_after) -> tuple:
    """Output sizes (D, H, W) of a zero-padded conv."""
    return tuple((n + p0 + p1 - d * (k - 1) - 1) // s + 1 for n, k, s, d, p0, p1
                 in zip(sizes, kernel, stride, dilation, pad_before, pad_after))


# ------------------------------------------------------------------------------------- kernels

U = np.uint64  # an index type without the negative-index wraparound test


@helper
def _span(offset, step, n_in, n_out):
    """The outputs o in [lo, hi) whose input index o·step + offset lies in [0, n_in)."""
    lo = max(0, (step - 1 - offset) // step)
    hi = min(n_out, (n_in - 1 - offset) // step + 1)
    return lo, hi


@helper(inline="always")  # (a call, not inlined, was 2x slower)
def _im2col_rows(x, cols, row_off, r0, r1, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0,
                 od_, oh_, ow_):
    """im2col of the output rows r0 <= r < r1, r = (n·OD + od)·OH + oh, into cols: G×R×Kg
    whose row 0 is output pixel `row_off` (R >= the rows written), for the blocked kernels:
    cols[g, r·OW + ow − row_off, ((a·KH + b)·KW + e)·Cg + c] =
    xpad[n, od·sd + a·dd, oh·sh + b·dh, ow·sw + e·dw, g·Cg + c] (zero outside x), Cg = C/G.

    Inner loops index flat arrays with unsigned ints (`U`): a signed index costs a
    negative-index wraparound test per element, which kept LLVM from vectorising the copies
    (2-6x slower), and a view per pixel costs an atomic reference count on the shared array
    that both cores then bounce. (`_im2col` / `_col2im` keep their own copies of these loops
    on purpose: calling the helpers per row from their prange measured up to 2x slower and
    erratic, col2im 25%.)"""
    _, d_, h_, w_, c_ = x.shape
    ng, m_, kg = cols.shape
    cg = c_ // ng
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    if cg == 1:
        _im2col_rows_single_channel(xf, cf, x.shape, m_, kg, row_off, r0, r1, kd, kh, kw, sd,
                                    sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_)
        return
    run = kw * cg
    for r in range(r0, r1):
        n = r // (od_ * oh_)
        od = (r // oh_) % od_
        oh = r % oh_
        for g in range(ng):
            c0 = g * cg
            for ow in range(ow_):
                d0 = (g * m_ + r * ow_ + ow - row_off) * kg
                q0 = ow * sw - pw0
                for a in range(kd):
                    i = od * sd - pd0 + a * dd
                    for b in range(kh):
                        j = oh * sh - ph0 + b * dh
                        k0 = U(d0 + (a * kh + b) * run)
                        if i < 0 or i >= d_ or j < 0 or j >= h_:
                            for t in range(U(run)):
                                cf[k0 + t] = 0
                            continue
                        s_row = ((n * d_ + i) * h_ + j) * w_
                        if ng == 1 and dw == 1 and q0 >= 0 and q0 + kw <= w_:
                            # the kw taps are one contiguous run of x: copy it in one go
                            s0 = U((s_row + q0) * c_)
                            for t in range(U(run)):
                                cf[k0 + t] = xf[s0 + t]
                            continue
                        for e in range(kw):
                            q = q0 + e * dw
                            k = k0 + U(e * cg)
                            if 0 <= q < w_:
                                s0 = U((s_row + q) * c_ + c0)
                                for c in range(U(cg)):
                                    cf[k + c] = xf[s0 + c]
                            else:
                                for c in range(U(cg)):
                                    cf[k + c] = 0


@helper
def _im2col_rows_single_channel(xf, cf, x_shape, m_, kg, row_off, r0, r1, kd, kh, kw, sd, sh,
                                sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_):
    """`_im2col_rows` when each group has one channel (C/G = 1, e.g. a grey-scale input):
    tap by tap, a run along the output row (stride Kg in cols, stride sw·C in x), instead of
    KH·KD runs of only KW floats per pixel (3x faster for 5×5). xf, cf: flat x and cols."""
    _, d_, h_, w_, c_ = x_shape
    ng = c_
    for r in range(r0, r1):
        n = r // (od_ * oh_)
        od = (r // oh_) % od_
        oh = r % oh_
        _im2col_row_single_channel(xf, cf, d_, h_, w_, c_, ng, m_, kg, row_off, r, n, od, oh,
                                   kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, ow_)


@helper(inline="always")
def _im2col_row_single_channel(xf, cf, d_, h_, w_, c_, ng, m_, kg, row_off, r, n, od, oh, kd,
                               kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, ow_):
    for g in range(ng):
        row0 = g * m_ + r * ow_ - row_off  # cols row of (r, ow = 0), group g
        for a in range(kd):
            i = od * sd - pd0 + a * dd
            for b in range(kh):
                j = oh * sh - ph0 + b * dh
                inside = 0 <= i < d_ and 0 <= j < h_
                s_row = ((n * d_ + i) * h_ + j) * w_
                for e in range(kw):
                    k = (a * kh + b) * kw + e
                    lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                    if not inside:
                        lo, hi = ow_, ow_
                    for ow in range(min(lo, ow_)):
                        cf[U((row0 + ow) * kg + k)] = 0
                    for ow in range(lo, hi):
                        q = ow * sw - pw0 + e * dw
                        cf[U((row0 + ow) * kg + k)] = xf[U((s_row + q) * c_ + g)]
                    for ow in range(max(hi, lo), ow_):
                        cf[U((row0 + ow) * kg + k)] = 0


@kernel
def _im2col(x, cols, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_):
    """cols[g, row, ((a·KH + b)·KW + e)·Cg + c] = xpad[n, od·sd + a·dd, oh·sh + b·dh,
    ow·sw + e·dw, g·Cg + c] (zero outside x). x: N×D×H×W×C, cols: G×M×Kg, Cg = C/G.
    Parallel over output rows (n, od, oh); each iteration writes only its own OW rows.

    Inner loops index flat arrays with unsigned ints (`U`): a signed index costs a
    negative-index wraparound test per element, which kept LLVM from vectorising the copies
    (2-6x slower), and a view per pixel costs an atomic reference count on the shared array
    that both cores then bounce."""
    n_, d_, h_, w_, c_ = x.shape
    ng, m_, kg = cols.shape
    cg = c_ // ng
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    run = kw * cg
    for r in prange(n_ * od_ * oh_):
        n = r // (od_ * oh_)
        od = (r // oh_) % od_
        oh = r % oh_
        for g in range(ng):
            c0 = g * cg
            for ow in range(ow_):
                d0 = (g * m_ + r * ow_ + ow) * kg
                q0 = ow * sw - pw0
                for a in range(kd):
                    i = od * sd - pd0 + a * dd
                    for b in range(kh):
                        j = oh * sh - ph0 + b * dh
                        k0 = U(d0 + (a * kh + b) * run)
                        if i < 0 or i >= d_ or j < 0 or j >= h_:
                            for t in range(U(run)):
                                cf[k0 + t] = 0
                            continue
                        s_row = ((n * d_ + i) * h_ + j) * w_
                        if ng == 1 and dw == 1 and q0 >= 0 and q0 + kw <= w_:
                            # the kw taps are one contiguous run of x: copy it in one go
                            s0 = U((s_row + q0) * c_)
                            for t in range(U(run)):
                                cf[k0 + t] = xf[s0 + t]
                            continue
                        for e in range(kw):
                            q = q0 + e * dw
                            k = k0 + U(e * cg)
                            if 0 <= q < w_:
                                s0 = U((s_row + q) * c_ + c0)
                                for c in range(U(cg)):
                                    cf[k + c] = xf[s0 + c]
                            else:
                                for c in range(U(cg)):
                                    cf[k + c] = 0


@helper(inline="always")
def _col2im_rows(dcols, dx, row_off, r0, r1, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0,
                 pw0, od_, oh_, ow_):
    """Adjoint of `_im2col_rows` for the input rows r0 <= r < r1, r = (n·D + i)·H + j:
    dx[n, i, j, q, g·Cg + c] = the sum of the dcols entries that read it (overwritten).
    dcols: G×R×Kg with row 0 = output pixel `row_off`; it must hold every output pixel of
    the images of those rows. A gather: writes only dx rows r0..r1."""
    _, d_, h_, w_, c_ = dx.shape
    ng, m_, kg = dcols.shape
    cg = c_ // ng
    dcf = dcols.reshape(dcols.size)
    dxf = dx.reshape(dx.size)
    for r in range(r0, r1):
        n = r // (d_ * h_)
        i = (r // h_) % d_
        j = r % h_
        base = r * w_ * c_  # dx[n, i, j] (r = (n·D + i)·H + j)
        ub = U(base)
        for t in range(U(w_ * c_)):
            dxf[ub + t] = 0
        for a in range(kd):
            t = i + pd0 - a * dd
            if t < 0 or t % sd != 0 or t // sd >= od_:
                continue
            for b in range(kh):
                u = j + ph0 - b * dh
                if u < 0 or u % sh != 0 or u // sh >= oh_:
                    continue
                row0 = ((n * od_ + t // sd) * oh_ + u // sh) * ow_ - row_off
                for g in range(ng):
                    c0 = g * cg
                    for e in range(kw):
                        k = ((a * kh + b) * kw + e) * cg
                        lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                        for ow in range(lo, hi):
                            q = ow * sw - pw0 + e * dw
                            dst = U(base + q * c_ + c0)
                            src = U((g * m_ + row0 + ow) * kg + k)
                            for c in range(U(cg)):
                                dxf[dst + c] += dcf[src + c]


@kernel
def _col2im(dcols, dx, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_):
    """Adjoint of `_im2col`: dx[n, i, j, q, g·Cg + c] = sum of the dcols entries that read it.
    dcols: G×M×Kg, dx: N×D×H×W×C (overwritten). Gathers, parallel over input rows (n, i, j);
    each iteration writes only dx[n, i, j]. Flat unsigned indices as in `_im2col`."""
    n_, d_, h_, w_, c_ = dx.shape
    ng, m_, kg = dcols.shape
    cg = c_ // ng
    dcf = dcols.reshape(dcols.size)
    dxf = dx.reshape(dx.size)
    for r in prange(n_ * d_ * h_):
        n = r // (d_ * h_)
        i = (r // h_) % d_
        j = r % h_
        base = r * w_ * c_  # dx[n, i, j] (r = (n·D + i)·H + j)
        ub = U(base)
        for t in range(U(w_ * c_)):
            dxf[ub + t] = 0
        for a in range(kd):
            t = i + pd0 - a * dd
            if t < 0 or t % sd != 0 or t // sd >= od_:
                continue
            for b in range(kh):
                u = j + ph0 - b * dh
                if u < 0 or u % sh != 0 or u // sh >= oh_:
                    continue
                row0 = ((n * od_ + t // sd) * oh_ + u // sh) * ow_
                for g in range(ng):
                    c0 = g * cg
                    for e in range(kw):
                        k = ((a * kh + b) * kw + e) * cg
                        lo, hi = _span(e * dw - pw0, sw, w_, ow_)
                        for ow in range(lo, hi):
                            q = ow * sw - pw0 + e * dw
                            dst = U(base + q * c_ + c0)
                            src = U((g * m_ + row0 + ow) * kg + k)
                            for c in range(U(cg)):
                                dxf[dst + c] += dcf[src + c]


@kernel
def _conv_blocks_forward(x, w2t, bias, relu, y2, cols, whole, nchunk, per_block, kd, kh, kw,
                         sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_):
    """y2 = im2col(x) · W (+ bias, then max(·, 0) if `relu`; NaN propagates), in one parallel
    region: the images are cut into `nchunk` near-equal runs, one per thread, and each run is
    done `per_block` images at a time (patches, their GEMM while they are still in cache,
    then bias and ReLU), so a layer costs one hand-off between threads, not one per step.

    x: N×D×H×W×C; w2t: G×Kg×Fg (the weight as columns); bias: (F,); y2: (N·OD·OH·OW)×F.
    cols: 1×G×M×Kg receiving the whole batch's patches (kept for the backward) if `whole`,
    else nchunk×G×(per_block·OD·OH·OW)×Kg scratch, one slab per run."""
    n_ = x.shape[0]
    ng, fg = w2t.shape[0], w2t.shape[2]
    f_ = ng * fg
    rows_img = od_ * oh_
    pix_img = rows_img * ow_
    yf = y2.reshape(y2.size)
    for run in prange(nchunk):
        t = np.int64(run)  # (see `_im2col`)
        slab = 0 if whole else t
        for nb in range(t * n_ // nchunk, (t + 1) * n_ // nchunk, per_block):
            ne = min(nb + per_block, (t + 1) * n_ // nchunk)
            p0, p1 = nb * pix_img, ne * pix_img
            off = 0 if whole else p0
            _im2col_rows(x, cols[slab], off, nb * rows_img, ne * rows_img, kd, kh, kw, sd, sh,
                         sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_)
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
                          db_part, nchunk, per_block, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0,
                          ph0, pw0, od_, oh_, ow_):
    """Backward of `_conv_blocks_forward`, cut the same way: for each block, dY (zeroed where
    y2 <= 0 if `relu`), its bias and weight gradients, and (if `need_dx`) dx = col2im(dY·W).

    w2: G×Fg×Kg; dy2, y2: (N·OD·OH·OW)×F (y2 is only read with `relu`); dx: N×D×H×W×C.
    cols as in the forward (with `whole`, the kept patches; else scratch, refilled here).
    Scratch slabs: dyb: nchunk×(per_block·OD·OH·OW)×F, dcols like cols. Out: dwt_part
    nchunk×G×Kg×Fg and db_part nchunk×F (float64), zeroed by the caller: run t's sums."""
    n_ = x.shape[0]
    d_, h_ = x.shape[1], x.shape[2]
    ng, fg = w2.shape[0], w2.shape[1]
    f_ = ng * fg
    rows_img = od_ * oh_
    pix_img = rows_img * ow_
    dyf = dy2.reshape(dy2.size)
    yf = y2.reshape(y2.size)
    for run in prange(nchunk):
        t = np.int64(run)  # (see `_im2col`)
        slab = 0 if whole else t
        dbt = db_part[t]
        for nb in range(t * n_ // nchunk, (t + 1) * n_ // nchunk, per_block):
            ne = min(nb + per_block, (t + 1) * n_ // nchunk)
            p0, p1 = nb * pix_img, ne * pix_img
            off = 0 if whole else p0
            if not whole:
                _im2col_rows(x, cols[slab], off, nb * rows_img, ne * rows_img, kd, kh, kw, sd,
                             sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_)
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
                _col2im_rows(dcols[t], dx, p0, nb * d_ * h_, ne * d_ * h_, kd, kh, kw, sd,
                             sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_)


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
def _dw_forward(x, wt, b, y, mult, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0):
    """Depthwise conv: y[n, o, c·m + k] = b[c·m + k] + sum_tap xpad[n, o·s + tap·d, c] ·
    wt[tap, c·m + k]. x: N×D×H×W×C, wt: (KD·KH·KW)×(C·m), y: N×OD×OH×OW×(C·m) (overwritten).
    Parallel over output rows (n, od, oh); inner loops run along the contiguous channel axis."""
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
def _dw_backward_x(dy, wt, dx, mult, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0):
    """dx of `_dw_forward` (dx: N×D×H×W×C, overwritten). Gathers, parallel over input rows
    (n, i, j); each iteration writes only dx[n, i, j]."""
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
def _dw_backward_w(x, dy, part, mult, kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0):
    """Partial weight gradients of `_dw_forward`: part[t, tap, o] sums chunk t of the output rows
    (n, od, oh). part: T×(KD·KH·KW)×(C·m), zeroed by the caller. Parallel over chunks."""
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


@kernel
def _local_im2col(x, cols, kd, kh, kw, sd, sh, sw, od_, oh_, ow_):
    """cols[p, n, ((c·KD + a)·KH + b)·KW + e] = x[n, od·sd + a, oh·sh + b, ow·sw + e, c] with
    p = (od·OH + oh)·OW + ow (the local weight's (C, KD, KH, KW) order). cols: P×N×K.
    Parallel over output positions p."""
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
def _local_col2im(dcols, dx, kd, kh, kw, sd, sh, sw, od_, oh_, ow_):
    """Adjoint of `_local_im2col` into dx: N×D×H×W×C (overwritten). Parallel over images n;
    each iteration writes only dx[n]."""
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


# ------------------------------------------------------------------------------------ helpers

def _cols(x, kernel, stride, dilation, pad_before, out, groups):
    """im2col of x: N×D×H×W×C -> G×M×Kg: a view of x for 1×1 convs, else the scratch
    buffer."""
    n, c = x.shape[0], x.shape[-1]
    m, cg = n * math.prod(out), c // groups
    if tuple(kernel) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and not any(pad_before) \
            and tuple(out) == x.shape[1:4]:
        return x.reshape(m, groups, cg).transpose(1, 0, 2)
    cols = _buffer("cols", (groups, m, math.prod(kernel) * cg), x.dtype)
    _im2col(x, cols, *kernel, *stride, *dilation, *pad_before, *out)
    return cols


def _blocks(n, bytes_per_image):
    """Split n images into near-equal consecutive blocks of about _BLOCK_BYTES of patches each,
    so that a block's im2col output is still in cache when its GEMM reads it."""
    nblock = min(n, max(1, -(-n * bytes_per_image // _BLOCK_BYTES)))
    per = max(1, -(-n // max(1, nblock)))
    return [(n0, min(n, n0 + per)) for n0 in range(0, n, per)]


def _matrix(w, groups):
    """Conv weight F×Cg×KD×KH×KW -> G×Fg×Kg with columns in `_im2col` order (kd, kh, kw, c)."""
    f, cg = w.shape[:2]
    return _c(w.reshape(groups, f // groups, cg, -1).transpose(0, 1, 3, 2)).reshape(
        groups, f // groups, -1)


def _unmatrix(w2, shape):
    """Inverse of `_matrix`: G×Fg×Kg -> F×Cg×KD×KH×KW (contiguous)."""
    f, cg, kd, kh, kw = shape
    return _c(w2.reshape(f, kd, kh, kw, cg).transpose(0, 4, 1, 2, 3))


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


def _conv_y(x, w2, geometry, y2):
    """y2 = im2col(x) · W2ᵀ, one block of images at a time (NumPy's BLAS for the GEMMs; used
    for 1×1 convs, whose patches are x itself). geometry = (kernel, stride, dilation,
    pad_before, out); y2: (N·OD·OH·OW)×F."""
    ng, _, kg = w2.shape
    p = math.prod(geometry[-1])
    for n0, n1 in _blocks(x.shape[0], p * ng * kg * x.itemsize):
        _gemm_y(_cols(x[n0:n1], *geometry, ng), w2, y2[n0 * p:n1 * p])


def _conv_dwt(x, dy2, w2, geometry, dx):
    """Backward of `_conv_y`: returns dW transposed (G×Kg×Fg); if dx is given, fills it with
    col2im(dY · W2). Block by block: im2col, dWᵀ += colsᵀ·dY, dcols = dY·W2, col2im."""
    ng, fg, kg = w2.shape
    p = math.prod(geometry[-1])
    dwt = np.zeros((ng, kg, fg), x.dtype)
    for n0, n1 in _blocks(x.shape[0], p * ng * kg * x.itemsize):
        dyb = dy2[n0 * p:n1 * p]
        _gemm_dwt(_cols(x[n0:n1], *geometry, ng), dyb, dwt)
        if dx is not None:
            _col2im_gemm(dyb, w2, geometry, dx[n0:n1])
    return dwt


def _col2im_gemm(dy2, w2, geometry, dx):
    """dx = col2im(dY · W2) for dy2: (n·OD·OH·OW)×F and dx: n×D×H×W×C (whole images)."""
    ng, fg, kg = w2.shape
    kernel, stride, dilation, pad_before, out = geometry
    dcols = _buffer("dcols", (ng, dy2.shape[0], kg), dx.dtype)
    for g in range(ng):
        np.matmul(dy2[:, g * fg:(g + 1) * fg], w2[g], out=dcols[g])
    _col2im(dcols, dx, *kernel, *stride, *dilation, *pad_before, *out)


def _add_bias(y2, b, relu=False):
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


def _is_depthwise(x, w, groups):
    return groups > 1 and groups == x.shape[-1] and w.shape[1] == 1


def _is_pointwise(x, kernel, stride, dilation, pad_before, out):
    """A 1×1 conv whose patches are x itself (no im2col needed)."""
    return (tuple(kernel) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and not any(pad_before)
            and tuple(out) == x.shape[1:4])


def _blocked(x, w, groups, geometry):
    """Whether a conv runs as `_conv_blocks_forward/backward` (one parallel region per layer,
    GEMMs per block inside it): for convs with few patch bytes per image, where hand-offs
    between thread pools cost more than the arithmetic (net A of benchmarks/bench_train.py,
    3.7 -> 2.8 ms per training step). Larger convs keep NumPy's BLAS on big blocks, which
    measured faster (nets B and C); 1×1 convs need no patches at all."""
    patch_bytes = math.prod(geometry[-1]) * math.prod(w.shape[1:]) * groups * x.itemsize
    return patch_bytes <= _BLOCKED_MAX_IMAGE_BYTES and not _is_pointwise(x, *geometry)


def _plan(x, patch_width, out):
    """How `_conv_blocks_forward/backward` cut a batch: (runs, images per block). One run per
    Numba thread (one in a data-parallel shard); blocks of about `_THREAD_BLOCK_BYTES` of
    patches, so each block's GEMM reads them from the core's own cache."""
    n = x.shape[0]
    pin_kernel_blas()
    nchunk = max(1, min(n, numba.get_num_threads()))
    per_image = math.prod(out) * patch_width * x.itemsize
    per_block = max(1, min(-(-n // nchunk), _THREAD_BLOCK_BYTES // per_image))
    return nchunk, per_block


def _kept_cols(x, ng, kg, out, keep):
    """An array (1×G×M×Kg) for a training forward to leave the whole batch's patches in, in
    `keep` for its backward; or None: not training, or larger than `_BLOCK_BYTES` (the
    backward then recomputes them block by block)."""
    if keep is None:
        return None
    shape = (1, ng, x.shape[0] * math.prod(out), kg)
    if math.prod(shape) * x.itemsize > _BLOCK_BYTES:
        keep.pop("cols", None)
        return None
    cols = keep.get("cols")
    if cols is None or cols.shape != shape or cols.dtype != x.dtype:
        cols = keep["cols"] = np.empty(shape, x.dtype)
    return cols


# --------------------------------------------------------------------------------------- conv

def conv_forward(x, w, b, stride, dilation, pad_before, pad_after, groups, relu=False,
                 keep=None):
    """Convolution (cross-correlation) with zero padding, possibly asymmetric; with `relu`,
    max(y, 0) fused in (NaN propagates). `keep`: a dict in which the forward may leave work
    for `conv_backward` of the same x and w (here the patch matrix, when the whole batch is
    one block of at most `_BLOCK_BYTES`); pass the same dict to the backward.

    x: N×D×H×W×C, w: F×(C/groups)×KD×KH×KW, b: (F,) or None -> y: N×OD×OH×OW×F,
    OD = (D + pb + pa − dd·(KD−1) − 1)//sd + 1 (likewise OH, OW).
    """
    x = _c(x)
    w = _c(w, x.dtype)
    kernel = w.shape[2:]
    out = conv_output(x.shape[1:4], kernel, stride, dilation, pad_before, pad_after)
    if _is_depthwise(x, w, groups):
        y = _depthwise_forward(x, w, b, stride, dilation, pad_before, out)
        if relu:
            _add_bias(y.reshape(-1, y.shape[-1]), None, True)
        return y
    f = w.shape[0]
    y = np.empty((x.shape[0], *out, f), x.dtype)
    y2 = y.reshape(-1, f)
    geometry = (kernel, stride, dilation, pad_before, out)
    if not _blocked(x, w, groups, geometry):
        _conv_y(x, _matrix(w, groups), geometry, y2)
        _add_bias(y2, b, relu)
        return y
    w2t = _c(_matrix(w, groups).transpose(0, 2, 1))
    bias = np.zeros(f, x.dtype) if b is None else _c(b, x.dtype)
    nchunk, per_block = _plan(x, w2t.shape[0] * w2t.shape[1], out)
    cols = _kept_cols(x, w2t.shape[0], w2t.shape[1], out, keep)
    whole = cols is not None
    if not whole:
        cols = _buffer("patches", (nchunk, w2t.shape[0], per_block * math.prod(out),
                                w2t.shape[1]), x.dtype)
    _conv_blocks_forward(x, w2t, bias, relu, y2, cols, whole, nchunk, per_block, *kernel,
                         *stride, *dilation, *pad_before, *out)
    return y


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
    f = w.shape[0]
    out = dy.shape[1:4]
    geometry = (w.shape[2:], stride, dilation, pad_before, out)
    if _is_depthwise(x, w, groups) or not _blocked(x, w, groups, geometry):
        return _conv_backward_unblocked(x, w, dy, geometry, groups, need_dx, y)
    w2 = _matrix(w, groups)
    ng, fg, kg = w2.shape
    nchunk, per_block = _plan(x, ng * kg, out)
    rows = per_block * math.prod(out)
    cols = None if keep is None else keep.get("cols")  # the forward's patches of this x
    whole = (cols is not None and cols.shape == (1, ng, x.shape[0] * math.prod(out), kg)
             and cols.dtype == x.dtype)
    if not whole:
        cols = _buffer("patches", (nchunk, ng, rows, kg), x.dtype)
    dx = np.empty_like(x) if need_dx else np.empty((0, 1, 1, 1, 1), x.dtype)
    dcols = _buffer("dpatches", (nchunk, ng, rows if need_dx else 1, kg), x.dtype)
    dwt_part = np.zeros((nchunk, ng, kg, fg), x.dtype)
    db_part = np.zeros((nchunk, f))
    dy2 = dy.reshape(-1, f)
    y2 = dy2 if y is None else _c(y, x.dtype).reshape(-1, f)
    _conv_blocks_backward(x, w2, dy2, y2, y is not None, dx, need_dx, cols, whole,
                          _buffer("dy", (nchunk, rows, f), x.dtype), dcols, dwt_part, db_part,
                          nchunk, per_block, *geometry[0], *stride, *dilation, *pad_before,
                          *out)
    dw = _unmatrix(dwt_part.sum(axis=0).transpose(0, 2, 1), w.shape)
    return (dx if need_dx else None), dw, db_part.sum(axis=0).astype(x.dtype)


def _conv_backward_unblocked(x, w, dy, geometry, groups, need_dx, y):
    """conv_backward for depthwise convs (direct loops) and the others `_blocked` leaves to
    NumPy's BLAS."""
    f = w.shape[0]
    if y is not None:
        dy2, db = _relu_masked(y.reshape(-1, f), dy.reshape(-1, f))
        dy = dy2.reshape(dy.shape)
    else:
        dy2, db = dy.reshape(-1, f), None
    _, stride, dilation, pad_before, _ = geometry
    if _is_depthwise(x, w, groups):
        dx, dw, db_dw = _depthwise_backward(x, w, dy, stride, dilation, pad_before, need_dx)
        return dx, dw, db_dw if db is None else db
    if db is None:
        db = _sum_rows(dy2)
    dx = np.empty_like(x) if need_dx else None
    dwt = _conv_dwt(x, dy2, _matrix(w, groups), geometry, dx)
    return dx, _unmatrix(dwt.transpose(0, 2, 1), w.shape), db


# ----------------------------------------------------------------------------- transposed conv

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
    geometry = (kernel, stride, (1, 1, 1), pad, x.shape[1:4])
    x2, w2 = x.reshape(-1, x.shape[-1]), _matrix(w, 1)
    p = math.prod(x.shape[1:4])
    for n0, n1 in _blocks(x.shape[0], p * w2.shape[2] * x.itemsize):
        _col2im_gemm(x2[n0 * p:n1 * p], w2, geometry, y[n0:n1])
    _add_bias(y.reshape(-1, f), b)
    return y


def convt_backward(x, w, dy, stride, pad, output_pad, need_dx=True):
    """Gradients of `convt_forward` -> (dx: like x or None, dw: C×F×KD×KH×KW, db: (F,))."""
    x = _c(x)
    w = _c(w, x.dtype)
    dy = _c(dy, x.dtype)
    # the adjoint conv (weight w, input dy, output x-sized): dx is its forward, dw its dW
    geometry = (w.shape[2:], stride, (1, 1, 1), pad, x.shape[1:4])
    x2, w2 = x.reshape(-1, x.shape[-1]), _matrix(w, 1)
    dx = np.empty_like(x) if need_dx else None
    dwt = np.zeros((1, w2.shape[2], w2.shape[1]), x.dtype)
    p = math.prod(x.shape[1:4])
    for n0, n1 in _blocks(x.shape[0], p * w2.shape[2] * x.itemsize):
        cols = _cols(dy[n0:n1], *geometry, 1)
        _gemm_dwt(cols, x2[n0 * p:n1 * p], dwt)
        if need_dx:
            _gemm_y(cols, w2, dx.reshape(-1, x.shape[-1])[n0 * p:n1 * p])
    dw = _unmatrix(dwt.transpose(0, 2, 1), w.shape)
    return dx, dw, _sum_rows(dy.reshape(-1, w.shape[1]))


# ------------------------------------------------------------------------------ depthwise conv

def _depthwise_forward(x, w, b, stride, dilation, pad_before, out):
    """conv_forward for groups = C (w: (C·m)×1×KD×KH×KW), by direct loops."""
    f = w.shape[0]
    wt = _c(w.reshape(f, -1).T)
    bias = np.zeros(f, x.dtype) if b is None else _c(b, x.dtype)
    y = np.empty((x.shape[0], *out, f), x.dtype)
    _dw_forward(x, wt, bias, y, f // x.shape[-1], *w.shape[2:], *stride, *dilation,
                *pad_before)
    return y


def _depthwise_backward(x, w, dy, stride, dilation, pad_before, need_dx):
    """conv_backward for groups = C; dw from 16 (or fewer) partial sums over output rows."""
    f = w.shape[0]
    mult = f // x.shape[-1]
    geometry = (*w.shape[2:], *stride, *dilation, *pad_before)
    nchunk = max(1, min(16, dy.shape[0] * dy.shape[1] * dy.shape[2]))
    part = np.zeros((nchunk, math.prod(w.shape[2:]), f), x.dtype)
    _dw_backward_w(x, dy, part, mult, *geometry)
    dw = _c(part.sum(axis=0).T).reshape(w.shape)
    dx = None
    if need_dx:
        dx = np.empty_like(x)
        _dw_backward_x(dy, _c(w.reshape(f, -1).T), dx, mult, *geometry)
    return dx, dw, _sum_rows(dy.reshape(-1, f))


def depthwise_forward(x, w, b, stride, pad_before, pad_after):
    """Depthwise conv (groups = C). x: N×D×H×W×C, w: (C·m)×1×KD×KH×KW, b: (C·m,) or None ->
    y: N×OD×OH×OW×(C·m); output channel o reads input channel o // m (PyTorch's order)."""
    return conv_forward(x, w, b, stride, (1, 1, 1), pad_before, pad_after, np.shape(x)[-1])


def depthwise_backward(x, w, dy, stride, pad_before, pad_after, need_dx=True):
    """Gradients of `depthwise_forward` -> (dx or None, dw: like w, db: (C·m,))."""
    return conv_backward(x, w, dy, stride, (1, 1, 1), pad_before, pad_after, np.shape(x)[-1],
                         need_dx)


# ------------------------------------------------------------------------- locally connected

def _local_cols(x, w, stride):
    od, oh, ow, _, c, kd, kh, kw = w.shape
    cols = _buffer("cols", (od * oh * ow, x.shape[0], c * kd * kh * kw), x.dtype)
    _local_im2col(x, cols, kd, kh, kw, *stride, od, oh, ow)
    return cols


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
        _local_col2im(dcols, dx, *w.shape[5:], *stride, od, oh, ow)
    return dx, dw, db
