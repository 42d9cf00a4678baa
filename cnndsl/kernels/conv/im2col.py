"""im2col and col2im: a conv's input as a patch matrix, and its adjoint.

x, dx: N×D×H×W×C (channels-last). `cols` is G×M×Kg with one row per output pixel
(M = N·OD·OH·OW, row ((n·OD + od)·OH + oh)·OW + ow) and Kg = KD·KH·KW·(C/G) columns ordered
(kd, kh, kw, c), so each group's patch matrix is contiguous:
cols[g, row, ((a·KH + b)·KW + e)·Cg + c] = xpad[n, od·sd + a·dd, oh·sh + b·dh, ow·sw + e·dw,
g·Cg + c] (zero outside x), Cg = C/G. col2im adds each entry back where it was read from.

Two forms of each: `_im2col` / `_col2im`, parallel kernels over a whole block of images (the
NumPy-BLAS path, `gemm.py`), and `_im2col_rows` / `_col2im_rows`, serial helpers for a range
of rows, inlined into the blocked kernels (`blocked.py`), which run them on each thread.

Inner loops index flat arrays with unsigned ints (`U`): a signed index costs a
negative-index wraparound test per element, which kept LLVM from vectorising the copies
(2-6x slower), and a view per pixel costs an atomic reference count on the shared array
that both cores then bounce. The kernels keep their own copies of the helpers' loops on
purpose: calling the helpers per row from their prange measured up to 2x slower and erratic,
col2im 25%.

Numba's disk cache checks only the file of the function it compiled: after editing a helper
here, touch `blocked.py` too (its kernels inline these helpers) or clear the caches.
"""

from __future__ import annotations

import math

from numba import prange

from cnndsl.kernels.conv.common import U, _buffer, _c, _span, kernel
from cnndsl.kernels.jit import helper


@helper(inline="always")  # (a call, not inlined, was 2x slower)
def _im2col_rows(x, cols, row_off, r0, r1, geometry):
    """im2col of the output rows r0 <= r < r1, r = (n·OD + od)·OH + oh, into cols: G×R×Kg
    whose row 0 is output pixel `row_off` (R >= the rows written), for the blocked kernels."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_ = geometry
    _, d_, h_, w_, c_ = x.shape
    ng, m_, kg = cols.shape
    cg = c_ // ng
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    if cg == 1:
        _im2col_rows_single_channel(xf, cf, x.shape, m_, kg, row_off, r0, r1, geometry)
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
def _im2col_rows_single_channel(xf, cf, x_shape, m_, kg, row_off, r0, r1, geometry):
    """`_im2col_rows` when each group has one channel (C/G = 1, e.g. a grey-scale input):
    tap by tap, a run along the output row (stride Kg in cols, stride sw·C in x), instead of
    KH·KD runs of only KW floats per pixel (3x faster for 5×5). xf, cf: flat x and cols."""
    od_, oh_ = geometry.od, geometry.oh
    for r in range(r0, r1):
        n = r // (od_ * oh_)
        od = (r // oh_) % od_
        oh = r % oh_
        _im2col_row_single_channel(xf, cf, x_shape, m_, kg, row_off, r, n, od, oh, geometry)


@helper(inline="always")
def _im2col_row_single_channel(xf, cf, x_shape, m_, kg, row_off, r, n, od, oh, geometry):
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, _, _, ow_ = geometry
    _, d_, h_, w_, c_ = x_shape
    ng = c_
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
def _im2col(x, cols, geometry):
    """cols = im2col(x) (see the module docstring). x: N×D×H×W×C, cols: G×M×Kg.
    Parallel over output rows (n, od, oh); each iteration writes only its own OW rows."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_ = geometry
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
def _col2im_rows(dcols, dx, row_off, r0, r1, geometry):
    """Adjoint of `_im2col_rows` for the input rows r0 <= r < r1, r = (n·D + i)·H + j:
    dx[n, i, j, q, g·Cg + c] = the sum of the dcols entries that read it (overwritten).
    dcols: G×R×Kg with row 0 = output pixel `row_off`; it must hold every output pixel of
    the images of those rows. A gather: writes only dx rows r0..r1."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_ = geometry
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
def _col2im(dcols, dx, geometry):
    """Adjoint of `_im2col`: dx[n, i, j, q, g·Cg + c] = sum of the dcols entries that read it.
    dcols: G×M×Kg, dx: N×D×H×W×C (overwritten). Gathers, parallel over input rows (n, i, j);
    each iteration writes only dx[n, i, j]. Flat unsigned indices as in `_im2col`."""
    kd, kh, kw, sd, sh, sw, dd, dh, dw, pd0, ph0, pw0, od_, oh_, ow_ = geometry
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


def _cols(x, geometry, groups):
    """im2col of x: N×D×H×W×C -> G×M×Kg: a view of x for 1×1 convs, else the scratch
    buffer."""
    kernel, stride, pad_before, out = geometry.kernel, geometry.stride, geometry.pad, geometry.out
    n, c = x.shape[0], x.shape[-1]
    m, cg = n * math.prod(out), c // groups
    if tuple(kernel) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and not any(pad_before) \
            and tuple(out) == x.shape[1:4]:
        return x.reshape(m, groups, cg).transpose(1, 0, 2)
    cols = _buffer("cols", (groups, m, math.prod(kernel) * cg), x.dtype)
    _im2col(x, cols, geometry)
    return cols


def _matrix(w, groups):
    """Conv weight F×Cg×KD×KH×KW -> G×Fg×Kg with columns in im2col order (kd, kh, kw, c)."""
    f, cg = w.shape[:2]
    return _c(w.reshape(groups, f // groups, cg, -1).transpose(0, 1, 3, 2)).reshape(
        groups, f // groups, -1)


def _unmatrix(w2, shape):
    """Inverse of `_matrix`: G×Fg×Kg -> F×Cg×KD×KH×KW (contiguous)."""
    f, cg, kd, kh, kw = shape
    return _c(w2.reshape(f, kd, kh, kw, cg).transpose(0, 4, 1, 2, 3))
