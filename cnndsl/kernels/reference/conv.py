"""Plain-NumPy twins of `cnndsl.kernels.conv`: same signatures, same results, any float dtype.

Written to be obviously correct: every convolution is a sum over kernel taps of
`strided window of the zero-padded input @ weight tap`, and every backward is the adjoint
of that sum, tap by tap. Layouts are the ones `cnndsl.kernels.conv` documents:
x, y, dx, dy: N×D×H×W×C (channels-last 5-D); triples are (D, H, W) ints.
"""

from __future__ import annotations

import itertools

import numpy as np


def _window(start: int, step: int, count: int) -> slice:
    """`count` indices start, start+step, ... as a slice."""
    return slice(start, start + step * (count - 1) + 1, step)


def _taps(kernel):
    return itertools.product(*(range(k) for k in kernel))


def _conv_out(sizes, kernel, stride, dilation, pad_before, pad_after):
    return tuple((n + p0 + p1 - d * (k - 1) - 1) // s + 1
                 for n, k, s, d, p0, p1 in zip(sizes, kernel, stride, dilation,
                                               pad_before, pad_after))


def _pad(x, pad_before, pad_after):
    return np.pad(x, ((0, 0), *zip(pad_before, pad_after), (0, 0)))


def _tap_window(tap, stride, dilation, out):
    """The (N, OD, OH, OW) window of the padded input that kernel tap `tap` reads."""
    return (slice(None), *(_window(t * d, s, o) for t, s, d, o in zip(tap, stride, dilation, out)))


def conv_forward(x, w, b, stride, dilation, pad_before, pad_after, groups, relu=False,
                 keep=None, out=None, pool=None):
    """y[n, o, f] = b[f] + sum_{tap, c} xpad[n, o*s + tap*d, g(f)*C/g + c] * w[f, c, tap],
    then max(y, 0) if `relu`. `keep` (work left for the backward) is unused here; `out`:
    the array y is written into. `pool`: (kernel, stride, pad_before, pad_after) of a max
    pool of y, returned instead (inference).

    x: N×D×H×W×C, w: F×(C/groups)×KD×KH×KW, b: (F,) or None -> y: N×OD×OH×OW×F.
    """
    x, w = np.asarray(x), np.asarray(w, dtype=x.dtype)
    cg, kernel = w.shape[1], w.shape[2:]
    f, fg = w.shape[0], w.shape[0] // groups
    sizes = _conv_out(x.shape[1:4], kernel, stride, dilation, pad_before, pad_after)
    xp = _pad(x, pad_before, pad_after)
    y = np.zeros((x.shape[0], *sizes, f), x.dtype)
    for g in range(groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for tap in _taps(kernel):
            patch = xp[_tap_window(tap, stride, dilation, sizes)][..., cs]
            y[..., fs] += patch @ w[(fs, slice(None), *tap)].T
    if b is not None:
        y += np.asarray(b, dtype=x.dtype)
    y = np.where(y < 0, 0, y) if relu else y
    if pool is not None:
        from cnndsl.kernels.reference.pool import maxpool_forward

        y, _ = maxpool_forward(y, *pool, indices=False)
    if out is None:
        return y
    out[...] = y
    return out


def conv_backward(x, w, dy, stride, dilation, pad_before, pad_after, groups, need_dx=True,
                  y=None, keep=None):
    """Gradients of `conv_forward` -> (dx or None, dw, db); db = dy summed over N, D, H, W.
    `y`: the output of a forward with `relu`; dy counts only where y > 0."""
    x, w, dy = np.asarray(x), np.asarray(w, dtype=x.dtype), np.asarray(dy, dtype=x.dtype)
    if y is not None:
        dy = np.where(y > 0, dy, 0).astype(x.dtype)
    cg, kernel = w.shape[1], w.shape[2:]
    fg = w.shape[0] // groups
    out = dy.shape[1:4]
    xp = _pad(x, pad_before, pad_after)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(groups):
        cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        for tap in _taps(kernel):
            window = _tap_window(tap, stride, dilation, out)
            patch = xp[window][..., cs]
            dw[(fs, slice(None), *tap)] += np.einsum("ndhwf,ndhwc->fc", dy[..., fs], patch)
            dxp[window + (cs,)] += dy[..., fs] @ w[(fs, slice(None), *tap)]
    d, h, wd = x.shape[1:4]
    (pd, ph, pw) = pad_before
    dx = dxp[:, pd:pd + d, ph:ph + h, pw:pw + wd] if need_dx else None
    return dx, dw, dy.sum(axis=(0, 1, 2, 3))


def _convt_sizes(x_sizes, kernel, stride, pad, output_pad):
    out = tuple((n - 1) * s - 2 * p + k + o
                for n, k, s, p, o in zip(x_sizes, kernel, stride, pad, output_pad))
    # every input pixel scatters a full kernel into `full`; y is its crop [pad, pad + out)
    full = tuple(max((n - 1) * s + k, p + o)
                 for n, k, s, p, o in zip(x_sizes, kernel, stride, pad, out))
    return out, full


def convt_forward(x, w, b, stride, pad, output_pad):
    """Transposed convolution as PyTorch's ConvTranspose (groups 1, dilation 1).

    x: N×D×H×W×C, w: C×F×KD×KH×KW, b: (F,) or None -> y: N×OD×OH×OW×F with
    OD = (D-1)·sd - 2·pd + KD + output_pad_d. Input pixel i scatters x[i] @ w[:, :, tap]
    to position i·s + tap of an uncropped output, which is then cropped by `pad`.
    """
    x, w = np.asarray(x), np.asarray(w, dtype=x.dtype)
    kernel = w.shape[2:]
    out, full = _convt_sizes(x.shape[1:4], kernel, stride, pad, output_pad)
    yfull = np.zeros((x.shape[0], *full, w.shape[1]), x.dtype)
    for tap in _taps(kernel):
        yfull[_tap_window(tap, stride, (1, 1, 1), x.shape[1:4])] += x @ w[(slice(None), slice(None), *tap)]
    y = yfull[(slice(None), *(slice(p, p + o) for p, o in zip(pad, out)))].copy()
    if b is not None:
        y += np.asarray(b, dtype=x.dtype)
    return y


def convt_backward(x, w, dy, stride, pad, output_pad, need_dx=True):
    """Gradients of `convt_forward` -> (dx or None, dw, db)."""
    x, w, dy = np.asarray(x), np.asarray(w, dtype=x.dtype), np.asarray(dy, dtype=x.dtype)
    kernel = w.shape[2:]
    out, full = _convt_sizes(x.shape[1:4], kernel, stride, pad, output_pad)
    dyfull = np.zeros((x.shape[0], *full, w.shape[1]), x.dtype)
    dyfull[(slice(None), *(slice(p, p + o) for p, o in zip(pad, out)))] = dy
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for tap in _taps(kernel):
        window = dyfull[_tap_window(tap, stride, (1, 1, 1), x.shape[1:4])]
        dx += window @ w[(slice(None), slice(None), *tap)].T
        dw[(slice(None), slice(None), *tap)] = np.einsum("ndhwc,ndhwf->cf", x, window)
    return (dx if need_dx else None), dw, dy.sum(axis=(0, 1, 2, 3))


def depthwise_forward(x, w, b, stride, pad_before, pad_after):
    """Depthwise conv = grouped conv with groups = C. w: (C·m)×1×KD×KH×KW."""
    return conv_forward(x, w, b, stride, (1, 1, 1), pad_before, pad_after, x.shape[-1])


def depthwise_backward(x, w, dy, stride, pad_before, pad_after, need_dx=True):
    return conv_backward(x, w, dy, stride, (1, 1, 1), pad_before, pad_after, x.shape[-1],
                         need_dx)


def local_forward(x, w, b, stride):
    """Locally connected layer (unshared weights, valid padding).

    x: N×D×H×W×C, w: OD×OH×OW×F×C×KD×KH×KW, b: F×OD×OH×OW or None -> y: N×OD×OH×OW×F,
    y[n, o, f] = b[f, o] + sum_{c, tap} x[n, o·s + tap, c] * w[o, f, c, tap].
    """
    x, w = np.asarray(x), np.asarray(w, dtype=x.dtype)
    out, kernel = w.shape[:3], w.shape[5:]
    y = np.zeros((x.shape[0], *out, w.shape[3]), x.dtype)
    for o in _taps(out):
        patch = x[(slice(None), *(slice(i * s, i * s + k) for i, s, k in zip(o, stride, kernel)))]
        y[(slice(None), *o)] = np.einsum("nabec,fcabe->nf", patch, w[o])
    if b is not None:
        y += np.moveaxis(np.asarray(b, dtype=x.dtype), 0, -1)
    return y


def local_backward(x, w, dy, stride, need_dx=True):
    """Gradients of `local_forward` -> (dx or None, dw, db); db: F×OD×OH×OW."""
    x, w, dy = np.asarray(x), np.asarray(w, dtype=x.dtype), np.asarray(dy, dtype=x.dtype)
    out, kernel = w.shape[:3], w.shape[5:]
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for o in _taps(out):
        window = (slice(None), *(slice(i * s, i * s + k) for i, s, k in zip(o, stride, kernel)))
        dw[o] = np.einsum("nf,nabec->fcabe", dy[(slice(None), *o)], x[window])
        dx[window] += np.einsum("nf,fcabe->nabec", dy[(slice(None), *o)], w[o])
    return (dx if need_dx else None), dw, np.moveaxis(dy.sum(axis=0), -1, 0)
