"""The direct path: 3×3 convs with stride 1 and "same" zero padding on float32 batches whose
input and output channels are multiples of 32 (most of a VGG or ResNet-style network) run
`direct.py`'s register-tiled kernels instead of im2col + GEMM: no patch matrix is written
or read, and the tiles run near the cores' FMA peak (≈210 GFLOP/s on this machine against
50–150 for im2col + OpenBLAS at 32–256 channels; benchmarks/bench_conv.py).

In training, small images (at most 256 pixels, 64+ channels in and out: a network's later
stages) take Winograd F(2×2, 3×3) instead for the forward and the data gradient
(`winograd.py`: 2.25× fewer multiplications, which beats kernels already near the FMA
peak).

Forward: y = conv(x) + b (+ ReLU) in one kernel. Backward: the data gradient is the same
kernel on dy with the flipped, transposed weight, which masks dy by the forward's ReLU as it
reads it and sums the bias gradient on the way; the weight gradient is its own kernel over
the masked dy. Layouts as `gemm.py` (x: N×1×H×W×C, w: F×C×1×3×3).

The narrow path: at inference, a stride-1 2-D conv with at most 32 filters and any window,
padding and input channels (a lecture network's 5×5 convs with 1 and 10 channels in, 10 and
20 out) runs `direct.py`'s narrow kernels: the same tiles, one or two vectors of filters
(zeros beyond F), no patch matrix. In training such convs keep im2col, whose patches the
backward reuses.
"""

from __future__ import annotations

import numba
import numpy as np

from cnndsl import threads
from cnndsl.kernels.conv import direct, winograd
from cnndsl.kernels.conv.epilogue import _relu_masked, _sum_rows

#: channel counts must be multiples of this (two 16-lane vectors per block of outputs)
CHANNELS = 32


def fits(x, w, groups, where) -> bool:
    """Whether a conv takes the direct path: 2-D, 3×3, stride 1, dilation 1, zero padding 1
    on each side (output as large as the input), no groups, float32, C and F multiples of
    32, and compiled kernels (not under NUMBA_DISABLE_JIT)."""
    return (x.dtype == np.float32 and w.dtype == np.float32 and groups == 1
            and x.shape[1] == 1 and tuple(w.shape[2:]) == (1, 3, 3)
            and where.stride == (1, 1, 1) and where.dilation == (1, 1, 1)
            and where.pad == (0, 1, 1) and where.out == tuple(x.shape[1:4])
            and x.shape[-1] % CHANNELS == 0 and w.shape[0] % CHANNELS == 0
            and not numba.config.DISABLE_JIT)


def _runs(n: int) -> int:
    """Runs of whole images the kernels split a batch into: one per Numba thread."""
    if not threads.numba_started():
        threads.start_numba_threads()
    return max(1, min(n, numba.get_num_threads()))


def _packed(w) -> np.ndarray:
    """F×C×1×3×3 -> (F/32)×3×3×C×32: a block's 32 outputs of one tap and input channel
    are contiguous (two vector loads)."""
    f, c = w.shape[:2]
    blocks = w.reshape(f // CHANNELS, CHANNELS, c, 3, 3)
    return np.ascontiguousarray(blocks.transpose(0, 3, 4, 2, 1))


def _conv(x4, packed, b, relu, y4, mask=None, masked_out=None, part=None):
    """The tile kernel for x4's width (tiles of 7 pixels if they divide it, else 8)."""
    conv = direct._direct_conv_p7 if x4.shape[2] % 7 == 0 else direct._direct_conv_p8
    if part is None:
        part = np.zeros((_runs(len(x4)), x4.shape[-1]), np.float32)
    masked = mask is not None
    conv(x4, packed, b, relu, mask if masked else x4, masked,
         masked_out if masked else x4, part, y4)
    return part


def forward(x, w, b, relu: bool, y, training: bool = True) -> None:
    """y = conv(x, w) + b (then max(·, 0) if `relu`) into y: N×1×H×W×F. Winograd only
    when `training` (see `winograd.fits`)."""
    if training and winograd.fits(x, w):
        winograd.forward(x, w, b, relu, y)
        return
    f = w.shape[0]
    bias = np.zeros(f, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    _conv(x[:, 0], _packed(w), bias, relu, y[:, 0])


def backward(x, w, dy, need_dx: bool, y=None):
    """(dx or None, dw like w, db: (F,)) of `forward`; `y`: the output of a forward with
    `relu` (dy counts only where y > 0)."""
    n, c = x.shape[0], x.shape[-1]
    f = w.shape[0]
    dx = None
    # dx = conv(dy masked, w flipped on its taps, inputs and outputs swapped)
    flipped = w[:, :, :, ::-1, ::-1].transpose(1, 0, 2, 3, 4) if need_dx else None
    if need_dx and not winograd.fits(x, w):  # masks dy and sums db as it reads it
        dx = np.empty_like(x)
        packed = _packed(np.ascontiguousarray(flipped))
        if y is not None:
            masked = np.empty_like(dy)
            part = np.zeros((_runs(n), f), np.float32)
            _conv(dy[:, 0], packed, np.zeros(c, np.float32), False, dx[:, 0],
                  mask=y[:, 0], masked_out=masked[:, 0], part=part)
            dy, db = masked, part.sum(axis=0, dtype=np.float64).astype(np.float32)
        else:
            _conv(dy[:, 0], packed, np.zeros(c, np.float32), False, dx[:, 0])
            db = _sum_rows(dy.reshape(-1, f))
    else:
        if y is not None:
            dy2, db = _relu_masked(y.reshape(-1, f), dy.reshape(-1, f))
            dy = dy2.reshape(dy.shape)
        else:
            db = _sum_rows(dy.reshape(-1, f))
        if need_dx:  # Winograd, on the masked dy
            dx = np.empty_like(x)
            winograd.forward(dy, flipped, None, False, dx)
    runs = _runs(n)
    part = np.empty((runs, 3, 3, c, f), np.float32)
    direct._direct_weight_grad(x[:, 0], dy[:, 0], _group(-(-n // runs), *x.shape[2:]), part)
    dw = part.sum(axis=0).transpose(3, 2, 0, 1)  # 3×3×C×F -> F×C×3×3
    return dx, np.ascontiguousarray(dw).reshape(w.shape), db


#: bytes of padded images a weight-gradient group may take: this machine's L2 is 1 MB a core
GROUP_BYTES = 768 << 10


def _group(images: int, h: int, w: int, c: int) -> int:
    """Images per group of `_direct_weight_grad`: as many of a run's `images` as fit their
    padded copies in GROUP_BYTES (which stay in L2 while every tile reads them). Measured at
    batch 64 (ms for dW, groups of 1 / best): 8×8×256 29.6 / 25.6 (8); 16×16×128 22.7 /
    22.6 (2); 32×32×64 24.8 / 23.7 (2); larger groups lose (32 images: 30.0, 31.6, 57.3)."""
    plane = (h + 2) * (w + 2) * c * 4
    return max(1, min(images, GROUP_BYTES // plane))


#: the narrow path's most filters
NARROW_FILTERS = 32


def narrow_fits(x, w, groups, where, training: bool) -> bool:
    """Whether an inference conv takes the narrow path (see the module docstring)."""
    return (not training and x.dtype == np.float32 and w.dtype == np.float32
            and groups == 1 and x.shape[1] == 1 and w.shape[2] == 1
            and w.shape[0] <= NARROW_FILTERS and where.stride == (1, 1, 1)
            and where.dilation == (1, 1, 1) and not numba.config.DISABLE_JIT)


def narrow_forward(x, w, b, relu: bool, where, y) -> None:
    """y = conv(x, w) + b (then max(·, 0) if `relu`) into y: N×1×OH×OW×F, for `narrow_fits`."""
    f, c, _, kh, kw = w.shape
    lanes = 16 if f <= 16 else 32
    packed = np.zeros((kh, kw, c, lanes), np.float32)
    packed[..., :f] = w[:, :, 0].transpose(2, 3, 1, 0)  # F×C×KH×KW -> KH×KW×C×F
    bias = np.zeros(lanes, np.float32)
    if b is not None:
        bias[:f] = b
    conv = direct._narrow_conv_v1 if lanes == 16 else direct._narrow_conv_v2
    part = np.zeros((_runs(len(x)), 1), np.float32)
    conv(x[:, 0], packed, bias, relu, kh, kw, where.pad[1], where.pad[2], part, y[:, 0])
