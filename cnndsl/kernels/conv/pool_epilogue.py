"""The planar conv kernels' epilogue (planar.py): one image's conv sums, one plane per
filter, to its channels-last output, through a max pool, the bias and a ReLU.

Layouts: sums: filter f's sum at output (oh, ow) is sums[f·Qp + oh·Wp + ow] (Wp ≥ OW: the
planes keep the scratch's row stride); y: flat, the image's outputs from `first`, each
pixel's F channels consecutive (N×YH×YW×F); row: 16 float32 of scratch.

Output (yh, yw, f) = max over i < PH, j < PW of the sum at (yh·SH + i, yw·SW + j), plus
b[f], then max(·, 0) if `relu`; a NaN in a window wins (the max pool kernel's rule). With
PH = PW = SH = SW = 1 that is the conv's own output. The max and the bias run on vectors
of 16 outputs of a row (strides 1 and 2: a stride-2 row is the even lanes of two loads),
other strides one output at a time; the vector then goes to y one channel at a time,
stride F.
"""

from __future__ import annotations

import math

import numpy as np

from cnndsl.kernels.conv.simd import broadcast, sload, vadd, veven, vload, vmax, vrelu, vstore
from cnndsl.kernels.jit import helper

U = np.uint64  # unsigned indices: no negative-index wraparound test per element


@helper(inline="always")
def _strided(sums, at, SW):
    """sums[at + SW·k] for k < 16, SW 1 or 2."""
    if SW == 1:
        return vload(sums, at)
    return veven(vload(sums, at), vload(sums, at + 16))


@helper
def pool_epilogue(sums, Qp, Wp, b, relu, PH, PW, SH, SW, YH, YW, F, y, first, row):
    """See the module docstring. Reads up to 32 float32 past a plane's last output row for
    the last vector of a row: `sums` has that slack."""
    if SW <= 2:
        for f in range(F):
            bias = broadcast(b[f])
            for yh in range(YH):
                top = f * Qp + yh * SH * Wp
                for yw0 in range(0, YW, 16):
                    m = _strided(sums, top + yw0 * SW, SW)
                    for i in range(PH):
                        for j in range(PW):
                            m = vmax(m, _strided(sums, top + i * Wp + j + yw0 * SW, SW))
                    m = vadd(m, bias)
                    vstore(row, 0, vrelu(m) if relu else m)
                    out = U(first + ((yh * YW) + yw0) * F + f)
                    for k in range(U(min(16, YW - yw0))):
                        y[out + k * U(F)] = row[k]
        return
    for f in range(F):
        for yh in range(YH):
            for yw in range(YW):
                at = f * Qp + yh * SH * Wp + yw * SW
                m = sload(sums, at)
                for i in range(PH):
                    for j in range(PW):
                        v = sload(sums, at + i * Wp + j)
                        if (v > m or math.isnan(v)) and not math.isnan(m):
                            m = v
                m += b[f]
                if relu and m < 0:
                    m = np.float32(0.0)
                y[U(first + (yh * YW + yw) * F + f)] = m
