"""Numba kernels (forward and backward) for every layer, and their NumPy twins.

Conventions shared by every kernel module:

- Activations are channels-last, as the DSL declares them, and every spatial kernel works
  on the 5-D form `x: N×D×H×W×C`. A 1-D input (N, L, C) is viewed as (N, 1, 1, L, C), a 2-D
  input (N, H, W, C) as (N, 1, H, W, C); `as5d` / `from5d` do that without copying.
- Sizes are passed as plain ints per axis in (D, H, W) order: `kd, kh, kw`, `sd, sh, sw`
  (stride), `dd, dh, dw` (dilation), `pd0, ph0, pw0` (zeros before), `pd1, ph1, pw1`
  (zeros after). 1-D and 2-D callers pass 1 / 0 for the missing leading axes.
- Weights keep PyTorch's layouts (docs/language.md), 5-D for kernels: conv weight
  `F×(C/groups)×KD×KH×KW`; a kernel may re-layout them internally.
- Kernels are dtype-generic (float32 in training, float64 in gradient checks). Wrappers pass
  them C-contiguous arrays, Python ints, floats and bools only, so that each kernel compiles
  once per dtype.
- `cnndsl/kernels/<name>.py` holds `@kernel` functions (cnndsl.kernels.jit: `prange` loops,
  compiled on first use as a parallel and a serial variant, `cache=True, nogil=True`; nogil:
  the model runs shards of a batch on several Python threads at once) that write their
  results into arrays they are given and return nothing, plus thin Python wrappers with the
  signatures the ops call; `cnndsl/kernels/reference/<name>.py` holds plain NumPy functions
  with the SAME wrapper signatures and results, written to be obviously correct rather than
  fast. Tests compare the two.
"""

from __future__ import annotations

import numpy as np


def as5d(x: np.ndarray) -> np.ndarray:
    """(N, *spatial, C) with 1-3 spatial axes -> a (N, D, H, W, C) view."""
    n, *spatial, c = x.shape
    return x.reshape(n, *([1] * (3 - len(spatial))), *spatial, c)


def from5d(y: np.ndarray, rank: int) -> np.ndarray:
    """(N, D, H, W, C) -> (N, *spatial, C) with `rank` spatial axes (a view)."""
    n, d, h, w, c = y.shape
    return y.reshape(n, *(d, h, w)[3 - rank:], c)


def weight5d(w: np.ndarray) -> np.ndarray:
    """A conv weight (F, C, *kernel) with 1-3 kernel axes -> (F, C, KD, KH, KW) view."""
    f, c, *kernel = w.shape
    return w.reshape(f, c, *([1] * (3 - len(kernel))), *kernel)


def out_buffer(out, shape, dtype):
    """`out` checked (C-contiguous, exact shape and dtype), or a fresh array."""
    if out is None:
        return np.empty(shape, dtype)
    if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} {tuple(shape)}, got "
                         f"{out.dtype} {out.shape}")
    return out
