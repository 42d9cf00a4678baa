"""What every conv-family module shares: the `Geometry` record the kernels take, the `kernel`
decorator that names them, per-thread scratch buffers, block sizes, and `_span`.

Layouts (see `cnndsl.kernels`): x, y, dx, dy are channels-last N×D×H×W×C; every size is a
(D, H, W) triple of ints; weights keep PyTorch's layouts.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

from cnndsl.kernels import jit
from cnndsl.kernels.jit import helper

U = np.uint64  # an index type without the negative-index wraparound test (see im2col.py)

_BLOCK_BYTES = 8 << 20  # patch-matrix bytes per block: well inside this machine's 32 MiB L3
_THREAD_BLOCK_BYTES = 256 << 10  # patch bytes per block and thread: well inside L2 here
_BLOCKED_MAX_IMAGE_BYTES = 256 << 10  # see `blocked.is_blocked`


class Geometry(NamedTuple):
    """Where a conv's taps read, as the 15 ints the kernels take in one argument: output
    pixel (od, oh, ow), tap (a, b, e) reads input (od·sd − pd0 + a·dd, oh·sh − ph0 + b·dh,
    ow·sw − pw0 + e·dw), zero outside the input (the zeros after only change the output
    size). Kernels unpack it in their first line.

    Flat on purpose: Numba 0.68 cannot pass a tuple of tuples into a `prange` body (the
    blocked kernels call their im2col helpers there), while a flat one of ints is fine. The
    triples, for Python code: `.kernel`, `.stride`, `.dilation`, `.pad`, `.out`."""

    kd: int
    kh: int
    kw: int
    sd: int  # stride
    sh: int
    sw: int
    dd: int  # dilation
    dh: int
    dw: int
    pd0: int  # zeros before
    ph0: int
    pw0: int
    od: int  # output size
    oh: int
    ow: int

    @property
    def kernel(self) -> tuple:
        return self[0:3]

    @property
    def stride(self) -> tuple:
        return self[3:6]

    @property
    def dilation(self) -> tuple:
        return self[6:9]

    @property
    def pad(self) -> tuple:
        return self[9:12]

    @property
    def out(self) -> tuple:
        return self[12:15]


def geometry(kernel, stride, dilation, pad_before, out) -> Geometry:
    """A `Geometry` of the five (D, H, W) triples, as plain Python ints (one Numba type,
    whatever int types or sequences the caller holds)."""
    return Geometry(*(int(v) for triple in (kernel, stride, dilation, pad_before, out)
                      for v in triple))


def kernel(fn):
    """`cnndsl.kernels.jit.kernel`, named `conv.<function>` whichever module of this package
    defines it: the name `cnndsl.warmup` reports (and its tests expect) is the kernel
    family's, as for the one-file families (`pool.`, `norm.`...)."""
    k = jit.kernel(fn)
    k.name = f"conv.{fn.__name__}"
    return k


@helper
def _span(offset, step, n_in, n_out):
    """The outputs o in [lo, hi) whose input index o·step + offset lies in [0, n_in)."""
    lo = max(0, (step - 1 - offset) // step)
    hi = min(n_out, (n_in - 1 - offset) // step + 1)
    return lo, hi


# -------------------------------------------------------------------------------------- scratch
# `cols` / `dcols` live in per-thread buffers that grow to the largest block seen and are
# reused by later calls (large fresh allocations page-fault on every step). They never escape
# a wrapper, so outputs stay independent, and each thread has its own, so wrappers may run on
# several threads at once (the model's data-parallel steps do).

_per_thread = threading.local()  # .scratch: (slot, dtype) -> reusable flat array


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
