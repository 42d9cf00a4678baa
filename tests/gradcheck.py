"""Shared by the kernel tests: central differences in float64."""

import numpy as np


def numgrad(f, x, w, h=1e-6):
    """Central differences of Σ f(x)·w with respect to x (float64)."""
    g = np.zeros_like(x)
    xf, gf = x.reshape(-1), g.reshape(-1)
    for i in range(xf.size):
        old = xf[i]
        xf[i] = old + h
        fp = np.sum(f(x) * w)
        xf[i] = old - h
        fm = np.sum(f(x) * w)
        xf[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g
