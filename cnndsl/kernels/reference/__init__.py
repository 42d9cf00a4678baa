"""Plain NumPy twins of the Numba kernels (same signatures), for tests and checks."""

import numpy as np


def into(out, value, dtype):
    value = np.asarray(value).astype(dtype, copy=False)
    if out is None:
        return value
    if out.shape != value.shape or out.dtype != value.dtype:
        raise ValueError(f"out must be {value.dtype} {value.shape}, got {out.dtype} {out.shape}")
    np.copyto(out, value)
    return out
