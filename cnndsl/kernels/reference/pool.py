"""Pooling in plain NumPy: the obviously-correct twins of `cnndsl.kernels.pool` (same signatures).

x: N×D×H×W×C, y: N×Do×Ho×Wo×C, sizes as (D, H, W) triples; argmax: int32 flat spatial index
d·H·W + h·W + w (-1 for an all-padding window). Each output window is sliced out of the
*unpadded* input, clipped to it, so padding never wins a max and adds zero to a sum.
"""

from __future__ import annotations

import itertools

import numpy as np


def _into(out, value):
    if out is None:
        return value
    if out.shape != value.shape or out.dtype != value.dtype:
        raise ValueError(f"out must be {value.dtype} {value.shape}, got {out.dtype} {out.shape}")
    np.copyto(out, value)
    return out


def _windows(x_shape, kernel, stride, pad_before, pad_after):
    """Yield (output index (od, oh, ow), slices of the clipped window in x)."""
    size = x_shape[1:-1]
    out = [(i + a + b - k) // s + 1
           for i, k, s, a, b in zip(size, kernel, stride, pad_before, pad_after)]
    for o in itertools.product(*(range(m) for m in out)):
        starts = [oi * s - p for oi, s, p in zip(o, stride, pad_before)]
        yield o, tuple(slice(max(st, 0), min(st + k, i))
                       for st, k, i in zip(starts, kernel, size))


def _out_shape(x_shape, kernel, stride, pad_before, pad_after):
    n, *size, c = x_shape
    return (n, *((i + a + b - k) // s + 1
                 for i, k, s, a, b in zip(size, kernel, stride, pad_before, pad_after)), c)


def maxpool_forward(x, kernel, stride, pad_before, pad_after, *, relu=False, out=None,
                    indices=True):
    if not indices:  # inference: the values alone
        y, _ = maxpool_forward(x, kernel, stride, pad_before, pad_after, relu=relu)
        return _into(None if out is None else out[0], y), None
    if relu:  # the pool of ReLU(x): ReLU commutes with max; argmax stays x's
        y, am = maxpool_forward(x, kernel, stride, pad_before, pad_after)
        y = np.where((am >= 0) & (y < 0), np.zeros_like(y), y)
        yo, ao = (None, None) if out is None else out
        return _into(yo, y), _into(ao, am)
    n, d, h, w, c = x.shape
    y = np.full(_out_shape(x.shape, kernel, stride, pad_before, pad_after), -np.inf, x.dtype)
    am = np.full(y.shape, -1, np.int32)
    flat = np.arange(d * h * w).reshape(d, h, w)
    for o, (sd, sh, sw) in _windows(x.shape, kernel, stride, pad_before, pad_after):
        win = x[:, sd, sh, sw, :].reshape(n, -1, c)
        if win.shape[1] == 0:
            continue
        j = np.argmax(win, axis=1)              # first maximum (NaN counts as the maximum)
        y[(slice(None), *o)] = np.take_along_axis(win, j[:, None, :], axis=1)[:, 0, :]
        am[(slice(None), *o)] = flat[sd, sh, sw].reshape(-1)[j]
    yo, ao = (None, None) if out is None else out
    return _into(yo, y), _into(ao, am)


def maxpool_backward(dy, argmax, x_shape, *, y=None, out=None):
    if y is not None:  # a pool that took a ReLU on its input: the ReLU's mask first
        dy = np.where(y > 0, dy, np.zeros_like(dy))
    n, *_, c = x_shape
    dx = np.zeros((n, int(np.prod(x_shape[1:-1])), c), dy.dtype)
    nn, _, cc = np.indices(argmax.reshape(n, -1, c).shape)
    keep = argmax.reshape(n, -1, c) >= 0
    np.add.at(dx, (nn[keep], argmax.reshape(n, -1, c)[keep], cc[keep]), dy.reshape(n, -1, c)[keep])
    return _into(out, dx.reshape(x_shape))


def avgpool_forward(x, kernel, stride, pad_before, pad_after, *, out=None):
    y = np.zeros(_out_shape(x.shape, kernel, stride, pad_before, pad_after), x.dtype)
    for o, (sd, sh, sw) in _windows(x.shape, kernel, stride, pad_before, pad_after):
        y[(slice(None), *o)] = x[:, sd, sh, sw, :].sum(axis=(1, 2, 3)) / np.prod(kernel)
    return _into(out, y)


def avgpool_backward(dy, x_shape, kernel, stride, pad_before, pad_after, *, out=None):
    dx = np.zeros(x_shape, dy.dtype)
    for o, (sd, sh, sw) in _windows(x_shape, kernel, stride, pad_before, pad_after):
        dx[:, sd, sh, sw, :] += dy[(slice(None), *o)][:, None, None, None, :] / np.prod(kernel)
    return _into(out, dx)


def l2pool_forward(x, kernel, stride, pad_before, pad_after, *, out=None):
    y = np.zeros(_out_shape(x.shape, kernel, stride, pad_before, pad_after), x.dtype)
    for o, (sd, sh, sw) in _windows(x.shape, kernel, stride, pad_before, pad_after):
        y[(slice(None), *o)] = np.sqrt((x[:, sd, sh, sw, :] ** 2).sum(axis=(1, 2, 3)))
    return _into(out, y)


def l2pool_backward(x, y, dy, kernel, stride, pad_before, pad_after, *, out=None):
    dx = np.zeros(x.shape, np.result_type(x, dy))
    safe_y = np.where(y > 0, y, 1)
    g = np.where(y > 0, dy / safe_y, 0)         # d sqrt(Σx²) / dx = x / y; 0 where y == 0
    for o, (sd, sh, sw) in _windows(x.shape, kernel, stride, pad_before, pad_after):
        dx[:, sd, sh, sw, :] += x[:, sd, sh, sw, :] * g[(slice(None), *o)][:, None, None, None, :]
    return _into(out, dx)


def global_avgpool_forward(x, *, out=None):
    return _into(out, x.mean(axis=(1, 2, 3)).astype(x.dtype))


def global_avgpool_backward(dy, x_shape, *, out=None):
    s = int(np.prod(x_shape[1:-1]))
    dx = np.broadcast_to((dy / s)[:, None, None, None, :], x_shape)
    return _into(out, np.ascontiguousarray(dx, dtype=dy.dtype))


def global_maxpool_forward(x, *, out=None):
    n, c = x.shape[0], x.shape[-1]
    x3 = x.reshape(n, -1, c)
    am = np.argmax(x3, axis=1).astype(np.int32)
    y = np.take_along_axis(x3, am[:, None, :], axis=1)[:, 0, :]
    yo, ao = (None, None) if out is None else out
    return _into(yo, y), _into(ao, am)


def global_maxpool_backward(dy, argmax, x_shape, *, out=None):
    n, c = x_shape[0], x_shape[-1]
    dx = np.zeros((n, int(np.prod(x_shape[1:-1])), c), dy.dtype)
    np.put_along_axis(dx, argmax[:, None, :].astype(np.intp), dy[:, None, :], axis=1)
    return _into(out, dx.reshape(x_shape))
