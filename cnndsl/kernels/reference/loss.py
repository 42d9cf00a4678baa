"""Softmax and softmax + cross-entropy in plain NumPy: twins of `cnndsl.kernels.loss`.

x2, y2, logits: N×K (softmax over the last axis), labels: N ints in [0, K).
"""

from __future__ import annotations

import numpy as np

from cnndsl.kernels.reference import into as _into


def softmax_forward(x2, *, out=None):
    e = np.exp(x2 - x2.max(axis=1, keepdims=True))
    return _into(out, e / e.sum(axis=1, keepdims=True), x2.dtype)


def softmax_backward(y2, dy2, *, out=None):
    return _into(out, y2 * (dy2 - (dy2 * y2).sum(axis=1, keepdims=True)), dy2.dtype)


def softmax_cross_entropy(logits, labels, *, out=None):
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = float(-log_softmax[rows, labels].mean())
    onehot = np.zeros_like(logits)
    onehot[rows, labels] = 1
    return loss, _into(out, (np.exp(log_softmax) - onehot) / n, logits.dtype)
