"""Convolution-family kernels, forward and backward: conv (grouped, dilated, asymmetric zero
padding), transposed conv, depthwise conv and locally connected layers.

Layouts (see `cnndsl.kernels`): x, y, dx, dy are channels-last N×D×H×W×C; triples are (D, H, W)
ints; weights keep PyTorch's layouts. Every entry point returns fresh, C-contiguous arrays of
x's dtype. The NumPy twins, with the same signatures, are `cnndsl.kernels.reference.conv`.

One module per job, in reading order:

- `gemm.py`: the entry points `conv_forward` / `conv_backward` (and depthwise ones); which
  path a conv takes; the NumPy-BLAS path (im2col, `np.matmul` on blocks of images, col2im);
- `im2col.py`: the patch matrix (G×M×Kg, columns (kd, kh, kw, c)) and its adjoint;
- `blocked.py`: small convs as one parallel Numba region per layer and pass;
- `epilogue.py`: bias + ReLU, the ReLU mask and bias gradient, for the unfused paths;
- `depthwise.py`: groups = C by direct loops over the channel axis;
- `transposed.py`: transposed conv, the adjoint of conv, from the same pieces;
- `local.py`: locally connected layers, one small GEMM per output position;
- `common.py`: the `Geometry` record (kernel, stride, dilation, pad, out) the kernels take,
  scratch buffers, block sizes.

Scratch: `cols` / `dcols` live in per-thread buffers (`common._buffer`) that grow to the
largest block seen and are reused by later calls; `clear_scratch()` releases the calling
thread's.

Threads: Numba's pool and OpenBLAS's take turns on the same cores. With their default
busy-waiting each slows the other 2x or more. cnndsl.threads configures both at run time:
OpenMP's passive waiting when cnndsl's first kernel starts Numba's threading layer, and
BLAS held at one thread where Numba's threads do the work (the blocked kernels hold the
kernels' BLAS themselves, so a direct call outside a model step never nests two pools).

Kernels are named `conv.<function>` (`cnndsl.warmup` reports them so) whichever module
defines them. Numba's disk cache checks only the file of the function it compiled, not the
files of the helpers it inlined: after editing `im2col.py` or `common.py`, touch the modules
whose kernels call them (or clear `cnndsl/kernels/conv/__pycache__`).
"""

from __future__ import annotations

from cnndsl.kernels.conv.common import clear_scratch
from cnndsl.kernels.conv.gemm import (
    conv_backward,
    conv_forward,
    conv_output,
    depthwise_backward,
    depthwise_forward,
)
from cnndsl.kernels.conv.local import local_backward, local_forward
from cnndsl.kernels.conv.transposed import convt_backward, convt_forward, convt_output

__all__ = [
    "clear_scratch",
    "conv_backward",
    "conv_forward",
    "conv_output",
    "convt_backward",
    "convt_forward",
    "convt_output",
    "depthwise_backward",
    "depthwise_forward",
    "local_backward",
    "local_forward",
]
