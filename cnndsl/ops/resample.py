"""Resampling without weights: Upsample (nearest or linear, by a whole factor per axis) and
AdaptiveAvgPool (to a given output size, PyTorch's bins), on 1-D, 2-D and 3-D inputs.

Both act on each spatial axis on its own: y is x with a matrix M (out x in) applied along
every spatial axis in turn, so forward applies the matrices and backward their transposes
(the adjoint of a product of per-axis maps is the product of the transposed maps). Plain
NumPy, one batched matmul per axis, no kernel of its own; nearest upsampling is a repeat
and its backward a sum over each repeated block.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cnndsl.ops import Op, fmt_size, fmt_stride, register, spatial
from cnndsl.ops.args import Choice, Size, arg
from cnndsl.ops.padding import Window, per_axis

UPSAMPLE_MODES = ("nearest", "bilinear")


# ---- per-axis matrices (float64, read-only, cached: a network asks for few sizes) -------
def _frozen(matrix: np.ndarray) -> np.ndarray:
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=64)
def linear_matrix(n: int, factor: int) -> np.ndarray:
    """(n*factor) x n: linear interpolation with half-pixel centres (PyTorch's
    align_corners=False): output i reads the input at (i + 0.5) / factor - 0.5, clamped to
    [0, n - 1], from its two neighbours."""
    source = np.maximum((np.arange(n * factor) + 0.5) / factor - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    weight = source - low  # of the higher neighbour
    rows = np.arange(n * factor)
    matrix = np.zeros((n * factor, n))
    np.add.at(matrix, (rows, low), 1.0 - weight)  # add: at the last input low == high
    np.add.at(matrix, (rows, high), weight)
    return _frozen(matrix)


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: output i averages input [floor(i*n/out),
    ceil((i+1)*n/out)); bins may overlap, and repeat when out > n."""
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]


def adaptive_window(n: int, out: int) -> tuple[int, int | Fraction]:
    """(longest bin, longest step between the starts of neighbouring bins) of n -> out
    adaptive bins, in closed form (a file may ask for billions of cells). With
    n = q*out + r and x_i = i*n mod out, bin i holds q + ceil((x_i + r) / out) inputs and
    bin i + 1 starts q + floor((x_i + r) / out) after it. x_i runs over the multiples of
    g = gcd(n, out) below out, so the longest bin holds q + 2 when r > g, else q + 1; a
    step of q + 1 needs x_i >= out - r for some i < out - 1, which fails only when r = 1
    (x_i = out - 1 only at i = out - 1). Where one size divides the other the stride is
    n / out exactly (AvgPool's windows, or nearest upsampling's copies)."""
    q, r = divmod(n, out)
    if r == 0:
        return q, q
    extent = q + 2 if r > math.gcd(n, out) else q + 1
    if out % n == 0:
        return extent, Fraction(1, out // n)
    return extent, q if r == 1 else q + 1


@functools.lru_cache(maxsize=64)
def averaging_matrix(n: int, out: int) -> np.ndarray:
    """out x n: row i holds 1/len over bin i (adaptive_bins)."""
    matrix = np.zeros((out, n))
    for i, (start, end) in enumerate(adaptive_bins(n, out)):
        matrix[i, start:end] = 1.0 / (end - start)
    return _frozen(matrix)


def along(x: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """x (N, *spatial, C) with `matrix` (out x in) applied along axis `axis` of x (1 is
    the first spatial axis): a batched matmul over the (in, C) planes."""
    moved = np.moveaxis(x, axis, -2)  # (..., in, C)
    return np.moveaxis(np.matmul(matrix.astype(x.dtype, copy=False), moved), -2, axis)


def apply_per_axis(x: np.ndarray, matrices, transpose: bool = False) -> np.ndarray:
    """x (N, *spatial, C) with matrices[k] applied along spatial axis k (or their
    transposes, for backward); channels-last and contiguous out."""
    for axis, matrix in enumerate(matrices, start=1):
        x = along(x, matrix.T if transpose else matrix, axis)
    return np.ascontiguousarray(x)


# ---- the layers ----------------------------------------------------------------------------
class PerAxisLinear(Op):
    """A layer that is one matrix per spatial axis: x (N, *spatial, C) -> y (N,
    *spatial', C), spatial'[k] = matrices[k].shape[0]. Backward: the transposes."""

    @staticmethod
    def matrices(p, sizes) -> list[np.ndarray]:
        raise NotImplementedError

    @classmethod
    def forward(cls, p, g, w, xs, ctx):
        x = xs[0]
        return apply_per_axis(x, cls.matrices(p, x.shape[1:-1])), x.shape

    @classmethod
    def backward(cls, p, g, w, x_shape, dy, ctx):
        if not ctx.need_dx:
            return [None], {}
        return [apply_per_axis(dy, cls.matrices(p, x_shape[1:-1]), transpose=True)], {}


@dataclass(frozen=True)
class UpsampleParams:
    factor: int | tuple = arg(Size(), 2)
    mode: str = arg(Choice(*UPSAMPLE_MODES), "nearest")


@register
class Upsample(PerAxisLinear):
    """x (N, *spatial, C) channels-last -> y (N, *spatial * factor, C), factor per axis.

    nearest: each value repeated `factor` times along each axis (PyTorch's mode="nearest"
    and ONNX Resize's asymmetric/floor agree for whole factors). bilinear: linear, bilinear
    or trilinear by rank, with half-pixel centres (PyTorch's align_corners=False, Keras'
    UpSampling2D(interpolation="bilinear")). Backward: the sum over each repeated block,
    or the transposed interpolation."""

    name = "Upsample"
    Params = UpsampleParams
    family = "shape"  # a resolution change without weights, as Keras files UpSampling2D
    explain_bare = True
    examples = (("4x3x2", "Upsample(2)"), ("3x4x2", "Upsample(2x3, mode=bilinear)"),
                ("5x2", "Upsample(3, mode=bilinear)"), ("2x3x2x2", "Upsample((1, 2, 3))"),
                ("2x3x2x2", "Upsample(2, mode=bilinear)"))

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "Upsample")
        factors = per_axis(p.factor, len(sizes), "factor")
        return (*(n * f for n, f in zip(sizes, factors)), channels)

    @staticmethod
    def describe(p):
        return f"x{fmt_stride(p.factor)}, {p.mode}"

    @staticmethod
    def window(p, in_shapes):
        """Each output reads 1 input (nearest) or up to 2 (linear, per axis); neighbouring
        outputs lie 1/factor input positions apart (as for a transposed conv)."""
        sizes = in_shapes[0][:-1]
        factors = per_axis(p.factor, len(sizes), "factor")
        # linear: an output between two inputs reads both; with factor 1 (or one input)
        # every output sits on an input
        extent = tuple(2 if p.mode == "bilinear" and f > 1 and n > 1 else 1
                       for n, f in zip(sizes, factors))
        return Window(extent, tuple(Fraction(1, f) for f in factors),
                      tuple((0, 0) for _ in sizes))

    @staticmethod
    def matrices(p, sizes):
        factors = per_axis(p.factor, len(sizes), "factor")
        return [linear_matrix(n, f) for n, f in zip(sizes, factors)]

    @classmethod
    def forward(cls, p, g, w, xs, ctx):
        if p.mode != "nearest":
            return super().forward(p, g, w, xs, ctx)
        x = y = xs[0]
        for axis, f in enumerate(per_axis(p.factor, x.ndim - 2, "factor"), start=1):
            y = np.repeat(y, f, axis=axis)
        return y, x.shape

    @classmethod
    def backward(cls, p, g, w, x_shape, dy, ctx):
        if p.mode != "nearest" or not ctx.need_dx:
            return super().backward(p, g, w, x_shape, dy, ctx)
        dx = dy
        for axis, f in enumerate(per_axis(p.factor, dy.ndim - 2, "factor"), start=1):
            blocks = (*dx.shape[:axis], dx.shape[axis] // f, f, *dx.shape[axis + 1:])
            dx = dx.reshape(blocks).sum(axis=axis + 1)
        return [dx], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        """Resize by constant scales (1, 1, *factors): nearest as asymmetric/floor (output
        i reads input floor(i / factor)), linear with half-pixel centres."""
        factors = per_axis(layer.params.factor, layer.rank, "factor")
        scales = b.weight(b.fresh(f"{layer.name}/scales"),
                          np.array([1, 1, *factors], dtype=np.float32))
        if layer.params.mode == "nearest":
            modes = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"}
        else:
            modes = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
        return b.node("Resize", [xs[0], "", scales], layer.name, **modes)

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call, size

        factors = per_axis(layer.params.factor, layer.rank, "factor")
        if layer.params.mode == "nearest":
            # the same copies for whole factors; 'nearest' computes floor(i * (1/factor))
            # in float and misses for some (Upsample(41) on 4 inputs), 'nearest-exact'
            # samples mid-cell, half an input away from any rounding edge
            mode = "mode='nearest-exact'"
        else:
            linear = ("linear", "bilinear", "trilinear")[layer.rank - 1]
            mode = f"mode='{linear}', align_corners=False"
        return f"nn.Upsample(scale_factor={size(factors)}, {mode})", call(layer, xs)


@dataclass(frozen=True)
class AdaptiveParams:
    size: int | tuple = arg(Size())


@register
class AdaptiveAvgPool(PerAxisLinear):
    """x (N, *spatial, C) channels-last -> y (N, *size, C): output cell i (per axis)
    averages input [floor(i*in/size), ceil((i+1)*in/size)), PyTorch's bins; they overlap
    where size does not divide the input, and repeat cells where size > in."""

    name = "AdaptiveAvgPool"
    Params = AdaptiveParams
    family = "pool"
    examples = (("6x6x2", "AdaptiveAvgPool(3)"), ("7x5x2", "AdaptiveAvgPool(3)"),
                ("7x3", "AdaptiveAvgPool(3)"), ("3x5x4x2", "AdaptiveAvgPool((2, 7, 3))"),
                ("2x3x2", "AdaptiveAvgPool(5x4)"))

    @staticmethod
    def shape(p, x):
        sizes, channels = spatial(x, "AdaptiveAvgPool")
        return (*per_axis(p.size, len(sizes), "size"), channels)

    @staticmethod
    def describe(p):
        return fmt_size(p.size)

    @staticmethod
    def window(p, in_shapes):
        """Bins vary in length and spacing, which a Window (one extent, one stride) cannot
        say, so per axis (adaptive_window): extent = the longest bin, stride = in/out when
        one divides the other (then the bins are exactly AvgPool's windows, or the copies
        of Upsample(out/in)'s nearest mode, a fractional stride as there), else the longest
        step between neighbouring bins. Any run of k neighbouring cells then reads at most
        extent + (k - 1) * stride inputs: with whole strides the receptive fields are upper
        bounds, exact when the sizes divide."""
        sizes = in_shapes[0][:-1]
        outs = per_axis(p.size, len(sizes), "size")
        windows = [adaptive_window(n, out) for n, out in zip(sizes, outs)]
        return Window(tuple(extent for extent, _ in windows),
                      tuple(stride for _, stride in windows), tuple((0, 0) for _ in sizes))

    @staticmethod
    def matrices(p, sizes):
        outs = per_axis(p.size, len(sizes), "size")
        return [averaging_matrix(n, out) for n, out in zip(sizes, outs)]

    @classmethod
    def onnx(cls, b, layer, xs):
        """ONNX has no adaptive pool: per axis, a MatMul by the constant averaging matrix
        (transposed: MatMul works on the last axis), moving each spatial axis last in turn
        with a Transpose. An AveragePool where every size divides evenly."""
        (*sizes, _), outs = layer.in_shapes[0], layer.shape[:-1]
        if all(n % out == 0 for n, out in zip(sizes, outs)):
            window = [n // out for n, out in zip(sizes, outs)]
            return b.node("AveragePool", [xs[0]], layer.name, kernel_shape=window,
                          strides=window)
        rank, x = len(sizes), xs[0]
        for k, (n, out) in enumerate(zip(sizes, outs)):
            matrix = b.weight(b.fresh(f"{layer.name}/average{k}"),
                              averaging_matrix(n, out).T)
            if k == rank - 1:  # the last axis: no transposes
                return b.node("MatMul", [x, matrix], layer.name)
            perm = list(range(rank + 2))  # swap this axis with the last one, and back
            perm[2 + k], perm[-1] = perm[-1], perm[2 + k]
            x = b.node("Transpose", [x], f"{layer.name}/axis{k}", perm=perm)
            x = b.node("MatMul", [x, matrix], f"{layer.name}/mm{k}")
            x = b.node("Transpose", [x], f"{layer.name}/back{k}", perm=perm)
        return x

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import call, size

        return (f"nn.AdaptiveAvgPool{layer.rank}d({size(layer.shape[:-1])})",
                call(layer, xs))
