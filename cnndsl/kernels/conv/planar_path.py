"""The planar path (inference): stride-1 2-D float32 convs with few channels in or out —
a network's first convs — run `planar.py`'s kernels, which put 16 output pixels in a
vector (gen_planar.py explains the scheme), and may compute a max pool of their output in
the same pass: a conv -> ReLU -> max pool is then one kernel, its conv output never
written (`conv_forward(pool=...)`, which the model asks for at inference).

Which convs: stride 1, dilation 1, no groups, 2-D, float32, compiled kernels, at
inference, at most 32 filters (wider layers have the direct and GEMM paths, which run
near the FMA peak), and either a max pool to fuse, or filters not a multiple of 16, or
fewer than 8 input channels: the cases where the narrow kernels (16 filters per vector)
leave lanes empty or spend their time broadcasting single pixels. Measured at batch 256
(planar / narrow, ms): 1 -> 10 channels 5×5 on 28×28: 1.2 / 3.4; 10 -> 20 5×5 on 12×12:
1.5 / 1.6; 32 -> 20 3×3 on 14×14: 4.3 / 7.5; 16 -> 16 3×3 on 32×32: 2.8 / 2.6 (narrow).
The tile is picked to pad the least work (filters rounded up to the tile's, positions to
its vectors).
"""

from __future__ import annotations

import numpy as np

from cnndsl.kernels.conv import direct_path, planar

#: a conv without a pool takes the planar path rather than the narrow one when its filters
#: are not a multiple of FILTER_VECTOR or it has fewer than FEW_CHANNELS input channels
FILTER_VECTOR, FEW_CHANNELS = 16, 8


def fits(x, w, groups, where, training: bool, pooled: bool) -> bool:
    """Whether the conv takes the planar path (see the module docstring): one the narrow
    kernels could take (inference, stride 1, at most 32 filters...), where it pays."""
    return (direct_path.narrow_fits(x, w, groups, where, training)
            and (pooled or w.shape[0] % FILTER_VECTOR != 0 or x.shape[-1] < FEW_CHANNELS))


def pool_fits(kernel, stride, pad_before, pad_after) -> bool:
    """Whether the planar kernels can fuse this max pool: 2-D, no padding."""
    return (kernel[0] == 1 and stride[0] == 1 and not any(pad_before)
            and not any(pad_after))


def _tile(filters: int, positions: int) -> tuple[int, int]:
    """The (filters, vectors) tile padding the least work; ties: the larger tile."""
    def work(tile):
        per_filter, vectors = tile
        chunk = 16 * vectors
        padded = -(-filters // per_filter) * per_filter * (-(-positions // chunk) * chunk)
        return padded, -per_filter * vectors
    return min(planar.TILES, key=work)


def forward(x, w, b, relu: bool, where, y, pool=None) -> None:
    """y = conv(x, w), then the max pool `pool` ((KH, KW), (SH, SW), or None), plus b,
    then max(·, 0) if `relu`, into y: N×1×YH×YW×F (x: N×1×H×W×C, w: F×C×1×KH×KW)."""
    f, c, _, kh, kw = w.shape
    oh, ow = where.out[1:]
    (ph, pw), (sh, sw) = pool if pool is not None else ((1, 1), (1, 1))
    per_filter, vectors = _tile(f, oh * (ow + kw - 1))
    blocks = -(-f // per_filter)
    padded = np.zeros((blocks * per_filter, c, kh, kw), np.float32)
    padded[:f] = w[:, :, 0]
    packed = np.ascontiguousarray(
        padded.reshape(blocks, per_filter, c, kh, kw).transpose(0, 2, 3, 4, 1))
    bias = np.zeros(blocks * per_filter, np.float32)
    if b is not None:
        bias[:f] = b
    runs = np.zeros((direct_path._runs(len(x)), 1), np.float32)
    kernel = getattr(planar, f"_planar_conv_f{per_filter}v{vectors}")
    kernel(x[:, 0], packed, bias, relu, kh, kw, where.pad[1], where.pad[2], oh, ow,
           ph, pw, sh, sw, runs, y[:, 0])
