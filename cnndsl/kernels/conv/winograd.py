"""Winograd F(2×2, 3×3) for the direct path's small images: the same 3×3, stride-1,
"same"-padded float32 convs with 32k channels (direct_path.fits), on images of at most
`MAX_PIXELS` pixels (a VGG- or ResNet-style network's later stages).

Why: the direct kernels run at about 90% of this machine's FMA peak, so the only way to go
faster is fewer multiplications. Winograd's minimal filtering computes each 2×2 block of
outputs from a 4×4 input patch with 16 multiplications per (input, output) channel pair
instead of 36 (2.25× fewer); the rest are additions in the transforms (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016):

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,  summed over input channels,

where d is a 4×4 input patch, g a 3×3 filter. Over a batch that is three passes:
`_input_transform` (V: 16×T×C, T = N·⌈H/2⌉·⌈W/2⌉ tiles), sixteen GEMMs
M[k] = V[k]·U[k] (U = the transformed weights, 16×C×F; `direct._batched_gemm`'s register
tiles: OpenBLAS's single-threaded calls from two training shards at once ran at half
speed each, 88 -> 49 GFLOP/s, as if one at a time), and
`_output_transform` (M: 16×T×F -> y, plus the bias and the ReLU), the transforms 16
channels at a time in `F32x16` values (simd.py). On small images with 64 or more channels
the GEMMs' 2.25× fewer FLOPs outweigh the transforms' passes over V and M (4× the input
and output): net C (benchmarks/bench_train.py, cnndsl alone) trained at 242–251 img/s
against 207–216 with the direct kernels alone (PyTorch: 192–203 in the same runs).
The data gradient is the same conv of dy with the flipped, transposed weight
(direct_path.backward); the weight gradient stays with the direct kernel.

The rounding differs from the direct sum (the transforms add and subtract partial sums):
about 2e-6 of the output's scale in float32 at 256 channels here; the tests compare with
the NumPy twin at 2e-5 of the scale, as they do the direct kernels.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnndsl.kernels.conv import direct
from cnndsl.kernels.conv.common import kernel
from cnndsl.kernels.conv.simd import vadd, vload, vrelu, vstore, vsub
from cnndsl.kernels.jit import helper

#: largest H·W given to Winograd: beyond it the transforms' traffic (V and M are 4× the
#: input and output) eats the gain (32×32×64: 23.7 ms direct, ≈21 estimated Winograd)
MAX_PIXELS = 256
#: bytes of V (and of M) per chunk of images
CHUNK_BYTES = 4 << 20
#: fewest input and output channels given to Winograd (net B's 32 -> 32 channels on 14×14
#: measured slower than the direct kernels with the GEMMs in BLAS)
MIN_CHANNELS = 64

def fits(x, w) -> bool:
    """For a conv `direct_path.fits` takes (x: N×1×H×W×C, w: F×C×1×3×3) in training:
    whether Winograd does it: small images, and at least MIN_CHANNELS channels in and out
    (the GEMMs' inner and outer sizes: with 32 they were too small to gain).

    Not at inference: net C's inference at batch 256 ran at 864–903 img/s with it against
    615–680 without (already 1.3× PyTorch's), but its peak RSS growth went from 102–143
    to 161–178 MB, PyTorch's being 176–192: the chunks' scratch (padded copies, V, M, U)
    on top of the activations, which glibc keeps for reuse (cnndsl.model). A training
    step's shards (C train: 130–146 MB, PyTorch's 241–274) have the room."""
    return (x.shape[2] * x.shape[3] <= MAX_PIXELS
            and min(w.shape[0], w.shape[1]) >= MIN_CHANNELS)


def weights(w) -> np.ndarray:
    """F×C×1×3×3 -> U: 16×C×F (float32), U[4a + b, c, f] = (G w[f, c] Gᵀ)[a, b], with
    G's rows (1, 0, 0), (½, ½, ½), (½, −½, ½), (0, 0, 1) spelled out as whole-array sums."""
    g = np.ascontiguousarray(w[:, :, 0].transpose(2, 3, 1, 0), dtype=np.float32)  # 3×3×C×F

    def apply(t0, t1, t2):
        return (t0, (t0 + t1 + t2) * 0.5, (t0 - t1 + t2) * 0.5, t2)

    rows = apply(g[0], g[1], g[2])  # G g: 4 rows of 3×C×F
    u = np.empty((16, *g.shape[2:]), np.float32)
    for a, row in enumerate(rows):
        for b, value in enumerate(apply(row[0], row[1], row[2])):  # (G g) Gᵀ
            u[4 * a + b] = value
    return u


def forward(x, w, b, relu: bool, y) -> None:
    """y = conv(x, w) + b (then max(·, 0) if `relu`) into y: N×1×H×W×F, x: N×1×H×W×C.
    The batch goes through in chunks of images whose V and M take about CHUNK_BYTES
    each (their scratch reused from chunk to chunk): peak memory stays near the direct
    kernels', and V is still in cache when the GEMMs read it."""
    n, _, h, width, c = x.shape
    f = w.shape[0]
    th, tw = -(-h // 2), -(-width // 2)
    u = weights(w)
    bias = np.zeros(f, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    chunk = max(1, min(n, CHUNK_BYTES // (16 * th * tw * max(c, f) * 4)))
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        if start == 0 or count < chunk:
            # one zero row/column around (the conv's padding), one more below/right if H/W
            # is odd; the interior is overwritten by each chunk, the border stays zero
            padded = np.zeros((count, 2 * th + 2, 2 * tw + 2, c), np.float32)
            v = np.empty((16, count * th * tw, c), np.float32)
            m = np.empty((16, count * th * tw, f), np.float32)
        padded[:, 1:h + 1, 1:width + 1] = x[start:start + count, 0]
        _input_transform(padded, v)
        direct._batched_gemm(v, u, m)
        _output_transform(m, bias, relu, y[start:start + count, 0])


@kernel
def _input_transform(xp, v):
    """xp: N×(2·TH+2)×(2·TW+2)×C, zero-padded, C % 16 == 0; v: 16×(N·TH·TW)×C,
    v[4a + b, tile, c] = (Bᵀ d B)[a, b] for the tile's 4×4 patch d (rows 2i.., columns
    2j.. of xp), 16 channels at a time in `F32x16` values. The rows of Bᵀ: d0 − d2,
    d1 + d2, d2 − d1, d1 − d3; B applies the same to the columns."""
    n_, hp, wp, c_ = xp.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    row, col = wp * c_, c_  # strides of xp
    plane = v.shape[1] * c_  # of v's 16 planes
    for r in prange(n_ * th):
        n, i = r // th, r % th
        for j in range(tw):
            at = ((n * hp + 2 * i) * wp + 2 * j) * c_
            to = (r * tw + j) * c_
            for c in range(0, c_, 16):
                a0 = at + c
                a1, a2, a3 = a0 + row, a0 + 2 * row, a0 + 3 * row
                o = to + c
                # Bᵀ d, one row of it at a time (its four columns), then B along the row
                _transformed_row(v, o, plane,
                                 vsub(vload(xp, a0), vload(xp, a2)),
                                 vsub(vload(xp, a0 + col), vload(xp, a2 + col)),
                                 vsub(vload(xp, a0 + 2 * col), vload(xp, a2 + 2 * col)),
                                 vsub(vload(xp, a0 + 3 * col), vload(xp, a2 + 3 * col)))
                _transformed_row(v, o + 4 * plane, plane,
                                 vadd(vload(xp, a1), vload(xp, a2)),
                                 vadd(vload(xp, a1 + col), vload(xp, a2 + col)),
                                 vadd(vload(xp, a1 + 2 * col), vload(xp, a2 + 2 * col)),
                                 vadd(vload(xp, a1 + 3 * col), vload(xp, a2 + 3 * col)))
                _transformed_row(v, o + 8 * plane, plane,
                                 vsub(vload(xp, a2), vload(xp, a1)),
                                 vsub(vload(xp, a2 + col), vload(xp, a1 + col)),
                                 vsub(vload(xp, a2 + 2 * col), vload(xp, a1 + 2 * col)),
                                 vsub(vload(xp, a2 + 3 * col), vload(xp, a1 + 3 * col)))
                _transformed_row(v, o + 12 * plane, plane,
                                 vsub(vload(xp, a1), vload(xp, a3)),
                                 vsub(vload(xp, a1 + col), vload(xp, a3 + col)),
                                 vsub(vload(xp, a1 + 2 * col), vload(xp, a3 + 2 * col)),
                                 vsub(vload(xp, a1 + 3 * col), vload(xp, a3 + 3 * col)))


@helper(inline="always")
def _transformed_row(v, o, plane, e0, e1, e2, e3):
    """One row of Bᵀ d times B into four planes of v from index o."""
    vstore(v, o, vsub(e0, e2))
    vstore(v, o + plane, vadd(e1, e2))
    vstore(v, o + 2 * plane, vsub(e2, e1))
    vstore(v, o + 3 * plane, vsub(e1, e3))


@kernel
def _output_transform(m, b, relu, y):
    """m: 16×(N·TH·TW)×F, F % 16 == 0; y: N×H×W×F = Aᵀ M A per tile (the 2×2 block at
    2i, 2j; its row or column past H or W dropped), plus b, then max(·, 0) if `relu`, 16
    channels at a time. Aᵀ's rows: m0 + m1 + m2 and m1 − m2 − m3."""
    n_, h_, w_, f_ = y.shape
    th, tw = (h_ + 1) // 2, (w_ + 1) // 2
    plane = m.shape[1] * f_
    for r in prange(n_ * th):
        n, i = r // th, r % th
        for j in range(tw):
            at = (r * tw + j) * f_
            for f in range(0, f_, 16):
                k = at + f
                bias = vload(b, f)
                # Aᵀ M, column by column: its first row (s) and second (t)
                s0, t0 = _combined(m, k, plane)
                s1, t1 = _combined(m, k + plane, plane)
                s2, t2 = _combined(m, k + 2 * plane, plane)
                s3, t3 = _combined(m, k + 3 * plane, plane)
                to = ((n * h_ + 2 * i) * w_ + 2 * j) * f_ + f
                right = 2 * j + 1 < w_
                _store_row(y, to, f_, right, relu, bias, s0, s1, s2, s3)
                if 2 * i + 1 < h_:
                    _store_row(y, to + w_ * f_, f_, right, relu, bias, t0, t1, t2, t3)


@helper(inline="always")
def _combined(m, k, plane):
    """Column k of Aᵀ M: (m0 + m1 + m2, m1 − m2 − m3) over planes k, k + 4, k + 8, k + 12."""
    m1, m2 = vload(m, k + 4 * plane), vload(m, k + 8 * plane)
    return (vadd(vadd(vload(m, k), m1), m2),
            vsub(vsub(m1, m2), vload(m, k + 12 * plane)))


@helper(inline="always")
def _store_row(y, to, f_, right, relu, bias, e0, e1, e2, e3):
    """A row of Aᵀ M A (e0 + e1 + e2, e1 − e2 − e3), plus the bias, through the ReLU if
    `relu`, at y[to] and (if `right`) the pixel after it."""
    left = vadd(vadd(vadd(e0, e1), e2), bias)
    vstore(y, to, vrelu(left) if relu else left)
    if right:
        value = vadd(vsub(vsub(e1, e2), e3), bias)
        vstore(y, to + f_, vrelu(value) if relu else value)
