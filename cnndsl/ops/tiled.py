"""Tiled convolution (Le et al. 2010; Goodfellow, Bengio & Courville, Deep Learning §9.5):
a convolution with t kernel sets per axis, rotated across output positions.

Per spatial axis, the output at position i uses kernel set i mod t, so on a 2-D input the
output at (i, j) uses set (i mod t_h, j mod t_w). tiles=1 is an ordinary Conv (one set,
shared everywhere); tiles = the output size shares nothing, as LocalConv (but with Conv's
padding and one bias per filter).

Parameters, laid out as LocalConv's (one conv weight per kernel set instead of one per
output position): weight (*tiles, F, C, *kernel), bias (F,), shared by every tile as in
Conv (the paper's tiled layers have no bias; a per-tile bias would break the tiles=1
identity with Conv). Initialised as PyTorch initialises a Conv of the same kernel:
U(±1/sqrt(C·prod(kernel))) for both.

Forward and backward are vectorised NumPy (no kernel of their own): the zero-padded input
is cut into windows by sliding_window_view, and each kernel set is applied with one
tensordot to the output positions it owns (a strided slice of the output grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.errors import ShapeMismatch
from cnndsl.kernels import as5d, from5d
from cnndsl.ops import Op, fmt_size, kaiming_uniform, register, spatial
from cnndsl.ops.args import Count, Flag, Padding, Size, arg
from cnndsl.ops.conv import _conv_macs, _extras, _window_text
from cnndsl.ops.padding import fmt, per_axis, sliding_window, to3, window3, window_output


@dataclass(frozen=True)
class TiledParams:
    filters: int = arg(Count())
    kernel: int | tuple = arg(Size())
    tiles: int | tuple = arg(Size())
    stride: int | tuple = arg(Size(), 1)
    pad: str | int | tuple = arg(Padding(), "valid")
    bias: bool = arg(Flag(), True)


def _sizes(p, x) -> tuple[tuple[int, ...], int, tuple[int, ...], tuple[int, ...]]:
    """(output spatial sizes, C, kernel, tiles) per axis; ShapeMismatch on a bad input."""
    sizes, channels = spatial(x, "TiledConv")
    out = window_output("kernel", sizes, p.kernel, p.stride, 1, p.pad)
    tiles = per_axis(p.tiles, len(sizes), "tiles")
    kernel = per_axis(p.kernel, len(sizes), "kernel")
    for axis, (t, n) in enumerate(zip(tiles, out)):
        if t > n:
            raise ShapeMismatch(
                f"tiles {fmt(tiles)} exceed the output {fmt(out)} ({t} > {n} on spatial axis "
                f"{axis + 1}): kernel sets beyond the output would never be used",
                hint=f"use tiles of at most {fmt(out)} ({fmt(out)} shares nothing, as "
                     f"LocalConv does)" + ("" if p.pad == "same" else
                                           ", or pad=same for a larger output"))
    return out, channels, kernel, tiles


def _owned(tile) -> tuple:
    """The slice of a (N, D, H, W, ...) output grid whose positions use kernel set `tile`
    ((a, b, c) of the (D, H, W) tiles): every t-th position from the set's own index."""
    return (slice(None), *(slice(start, None, count) for start, count in tile))


def _tile_slices(g):
    """(kernel set index (a, b, c), the output slice it owns) for every set, in order."""
    import numpy as np

    for tile in np.ndindex(*g["tiles"]):
        yield tile, _owned(zip(tile, g["tiles"]))


def _windows(x5, g):
    """x5 (N, D, H, W, C) -> a read-only view (N, OD, OH, OW, C, KD, KH, KW) of the
    zero-padded input: the window each output position reads."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    pads = [(0, 0), *zip(g["pad_before"], g["pad_after"]), (0, 0)]
    padded = np.pad(x5, pads) if any(b or a for b, a in pads) else x5
    windows = sliding_window_view(padded, g["kernel"], axis=(1, 2, 3))
    return windows[(slice(None), *(slice(0, n * s, s) for n, s in zip(g["out"], g["stride"])))]


def _scatter_windows(dwindows, x_shape, g):
    """The adjoint of _windows: dwindows (N, OD, OH, OW, C, KD, KH, KW) summed back onto
    the input (N, D, H, W, C) (overlapping windows add; padding is cut off)."""
    import numpy as np

    n, *sizes, c = x_shape
    before, after = g["pad_before"], g["pad_after"]
    padded = np.zeros((n, *(m + b + a for m, b, a in zip(sizes, before, after)), c),
                      dwindows.dtype)
    for offset in np.ndindex(*g["kernel"]):
        # for a fixed kernel offset, distinct outputs read distinct inputs: no collisions
        target = tuple(slice(k, k + o * s, s) for k, o, s in zip(offset, g["out"], g["stride"]))
        padded[(slice(None), *target)] += dwindows[(Ellipsis, *offset)]
    return padded[(slice(None), *(slice(b, b + m) for b, m in zip(before, sizes)))]


@register
class TiledConv(Op):
    """Tiled convolution. x: spatial x C -> y: spatial' x F, output as Conv's with the same
    kernel, stride and pad; kernel set (i mod t) per axis at output position i.

    Weight (*tiles, F, C, *kernel), bias (F,) (module docstring)."""

    name = "TiledConv"
    Params = TiledParams
    family = "conv"
    weight_layer = True
    examples = (("7x7x3", "TiledConv(4, 3, 2)"),
                ("9x6x2", "TiledConv(3, 3x2, (3, 2), stride=(2, 1), pad=same, bias=false)"),
                ("8x3", "TiledConv(4, 3, 3, pad=1)"),
                ("4x5x4x2", "TiledConv(3, 2, (1, 2, 3))"))

    @staticmethod
    def shape(p, x):
        out, _, _, _ = _sizes(p, x)
        return (*out, p.filters)

    @staticmethod
    def param_shapes(p, x):
        _, channels, kernel, tiles = _sizes(p, x)
        shapes = {"weight": (*tiles, p.filters, channels, *kernel)}
        if p.bias:
            shapes["bias"] = (p.filters,)
        return shapes

    @staticmethod
    def macs(p, x, y):
        """As torchinfo counts the Conv it generalises: each output position uses one
        kernel set, (F·C·prod(k) + F) multiply-adds."""
        _, channels, kernel, _ = _sizes(p, x)
        shapes = {"weight": (p.filters, channels, *kernel)}
        if p.bias:
            shapes["bias"] = (p.filters,)
        return _conv_macs(shapes, y)

    @staticmethod
    def window(p, in_shapes):
        return sliding_window(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)

    @staticmethod
    def geometry(p, in_shapes):
        """window3's (D, H, W) triples (kernel, stride, pad_before, pad_after...), plus
        `out` (output sizes), `tiles`, and `w8`: the weight as (TD, TH, TW, F, C, KD, KH, KW)."""
        out, channels, kernel, tiles = _sizes(p, in_shapes[0])
        geometry = window3(in_shapes[0][:-1], p.kernel, p.stride, 1, p.pad)
        geometry.update(out=to3(out, 1), tiles=to3(tiles, 1),
                        w8=(*to3(tiles, 1), p.filters, channels, *to3(kernel, 1)))
        return geometry

    @staticmethod
    def init(p, x, rng):
        _, channels, kernel, _ = _sizes(p, x)
        return kaiming_uniform(TiledConv.param_shapes(p, x), rng,
                               fan_in=channels * math.prod(kernel))

    @staticmethod
    def forward(p, g, w, xs, ctx):
        """y[n, i, f] = sum_{c,k} w[i mod t, f, c, k] x_padded[n, i*s + k, c] (+ b[f])."""
        import numpy as np

        x = xs[0]
        w8 = w["weight"].reshape(g["w8"])
        windows = _windows(as5d(x), g)
        y = np.empty((x.shape[0], *g["out"], g["w8"][3]), np.result_type(x, w8))
        for tile, owned in _tile_slices(g):
            # (N, o..., C, k...) . (F, C, k...) over C and k -> (N, o..., F)
            y[owned] = np.tensordot(windows[owned], w8[tile], axes=(range(4, 8), range(1, 5)))
        if p.bias:
            y += w["bias"]
        return from5d(y, x.ndim - 2), x

    @staticmethod
    def backward(p, g, w, x, dy, ctx):
        import numpy as np

        w8 = w["weight"].reshape(g["w8"])
        windows = _windows(as5d(x), g)
        dy5 = as5d(dy)
        dw = np.empty(g["w8"], np.result_type(dy, windows))
        dwindows = np.empty(windows.shape, dw.dtype) if ctx.need_dx else None
        for tile, owned in _tile_slices(g):
            mine = dy5[owned]  # (N, o..., F): the gradient at the positions this set owns
            dw[tile] = np.tensordot(mine, windows[owned], axes=(range(4), range(4)))
            if dwindows is not None:
                dwindows[owned] = np.tensordot(mine, w8[tile], axes=([4], [0]))
        grads = {"weight": dw.reshape(w["weight"].shape)}
        if p.bias:
            grads["bias"] = dy5.sum(axis=(0, 1, 2, 3))
        if dwindows is None:
            return [None], grads
        dx = _scatter_windows(dwindows, as5d(x).shape, g)
        return [from5d(dx, x.ndim - 2)], grads

    @staticmethod
    def describe(p):
        return (f"{p.filters}, {_window_text(p)}, tiles={fmt_size(p.tiles)}"
                + _extras(p, pad="valid", bias=True))

    @classmethod
    def onnx(cls, b, layer, xs):
        """As LocalConv's export, with the weight gathered per position: a grouped Conv with
        one-hot kernels gathers the (padded) windows (exact: one product by 1 per output)
        -> Reshape (N, C·K, P) -> Gather each position's kernel set from the weight
        (T, F, C·K) -> one Einsum -> Reshape (N, F, *out) -> Add bias (F, 1, ...).
        Its cost is one Conv's whatever the tiles (no Conv per kernel set)."""
        from cnndsl.export.emit import onnx_weights, onnx_window

        w, rank = layer.weights["weight"], layer.rank
        tiles, (filters, channels), kernel = w.shape[:rank], w.shape[rank:rank + 2], \
            w.shape[rank + 2:]
        out = layer.shape[:-1]
        taps, positions = math.prod(kernel), math.prod(out)
        gather = b.weight(b.fresh(f"{layer.name}/window_kernel"), _onehot(channels, kernel))
        windows = b.node("Conv", [xs[0], gather], f"{layer.name}/windows", group=channels,
                         **onnx_window(layer))
        flat = b.node("Reshape", [windows, b.constant(f"{layer.name}/windows_shape",
                                                      [0, channels * taps, positions])],
                      f"{layer.name}/windows_flat")
        sets = b.node("Reshape", [*onnx_weights(b, layer, "weight"), b.constant(
            f"{layer.name}/weight_shape", [math.prod(tiles), filters, channels * taps])],
            f"{layer.name}/kernel_sets")
        index = b.constant(f"{layer.name}/tile_of_position", _tile_index(out, tiles))
        per_position = b.node("Gather", [sets, index], f"{layer.name}/weight_per_position",
                              axis=0)
        y = b.node("Einsum", [flat, per_position], f"{layer.name}/matmul",
                   equation="nkp,pfk->nfp")
        has_bias = "bias" in layer.weights
        y = b.node("Reshape", [y, b.constant(f"{layer.name}/shape", [0, filters, *out])],
                   f"{layer.name}/nobias" if has_bias else layer.name)
        if not has_bias:
            return y
        bias = b.node("Reshape", [*onnx_weights(b, layer, "bias"), b.constant(
            f"{layer.name}/bias_shape", [filters] + [1] * rank)], f"{layer.name}/bias_column")
        return b.node("Add", [y, bias], layer.name)

    @classmethod
    def pytorch(cls, layer, xs):
        """The TiledConv helper module (`pytorch_class`); padding as F.pad's list."""
        from cnndsl.export.emit import call

        pads = []
        for before, after in zip(reversed(layer.per_rank("pad_before")),
                                 reversed(layer.per_rank("pad_after"))):
            pads += [before, after]
        w, rank = layer.weights["weight"], layer.rank
        args = [str(layer.in_shapes[0][-1]), str(layer.params.filters),
                f"kernel_size={tuple(w.shape[rank + 2:])}",
                f"tiles={tuple(w.shape[:rank])}",
                f"stride={tuple(layer.per_rank('stride'))}", f"padding={pads}",
                f"out_size={tuple(layer.shape[:-1])}"]
        if not layer.params.bias:
            args.append("bias=False")
        return f"TiledConv({', '.join(args)})", call(layer, xs)

    pytorch_class = '''class TiledConv(nn.Module):
    """Tiled convolution: output position i uses kernel set i mod tiles, per axis
    (cnndsl's layout: weight (*tiles, filters, C, *kernel), bias (filters,), shared by
    every set). padding is F.pad's list (last axis first)."""

    def __init__(self, channels, filters, kernel_size, tiles, stride, padding, out_size,
                 bias=True):
        super().__init__()
        self.kernel_size, self.stride, self.out_size = kernel_size, stride, out_size
        self.padding, self.filters = padding, filters
        self.weight = nn.Parameter(torch.empty(*tiles, filters, channels, *kernel_size))
        self.bias = nn.Parameter(torch.empty(filters)) if bias else None
        bound = (channels * math.prod(kernel_size)) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if bias:
            nn.init.uniform_(self.bias, -bound, bound)
        # the kernel set of each output position, row-major (not in the state_dict)
        tile = torch.zeros(out_size, dtype=torch.long)
        for axis, (n, t) in enumerate(zip(out_size, tiles)):
            shape = [1] * len(out_size)
            shape[axis] = n
            tile = tile * t + (torch.arange(n) % t).reshape(shape)
        self.register_buffer("tile", tile.flatten(), persistent=False)

    def forward(self, x):
        if any(self.padding):
            x = F.pad(x, self.padding)
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            x = x.unfold(2 + axis, k, s)  # at the end: (N, C, *out_size, *kernel_size)
        n, c = x.shape[:2]
        positions, taps = math.prod(self.out_size), math.prod(self.kernel_size)
        windows = x.reshape(n, c, positions, taps)
        w = self.weight.reshape(-1, self.filters, c, taps)[self.tile]  # (P, F, C, K)
        y = torch.einsum("ncpk,pfck->nfp", windows, w).reshape(n, -1, *self.out_size)
        if self.bias is None:
            return y
        return y + self.bias.reshape(-1, *[1] * len(self.out_size))'''


def _onehot(channels: int, kernel):
    """Kernels (C·K, 1, *kernel) of a grouped Conv (group = C) whose output channel
    c·K + t is input channel c at kernel tap t (row-major): the windows, laid out as the
    weight's (C, *kernel) axes."""
    import numpy as np

    taps = math.prod(kernel)
    onehot = np.zeros((channels * taps, 1, *kernel), np.float32)
    for c in range(channels):
        for t in range(taps):
            onehot[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1.0
    return onehot


def _tile_index(out, tiles) -> list[int]:
    """The kernel set (row-major index into tiles) of every output position, row-major."""
    import numpy as np

    grid = np.indices(out).reshape(len(out), -1)
    return np.ravel_multi_index(tuple(g % t for g, t in zip(grid, tiles)), tiles).tolist()
