"""Normalisations within one example: LRN (local response normalisation across channels,
AlexNet's and GoogLeNet v1's) and LayerNorm (over the channels at each position, or over
the whole example). Neither uses batch statistics, so training and inference compute the
same thing. Plain NumPy, vectorised: no kernels of their own."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from cnndsl.errors import ShapeMismatch
from cnndsl.ops import Op, at_most_3d, register
from cnndsl.ops.args import Choice, Count, Real, arg
from cnndsl.ops.padding import Window

#: a bound for LRN's alpha, beta and k: far beyond any published use, finite for the checks
LARGE = 1e6


def _changed(p, defaults, positional: str = "") -> str:
    """The arguments that differ from a bare call, for tables and diagrams: `positional`
    (LRN's size) as its value, the others as `name=value`; empty for the defaults."""
    return ", ".join(_show(getattr(p, name)) if name == positional
                     else f"{name}={_show(getattr(p, name))}"
                     for name in (f.name for f in fields(defaults))
                     if getattr(p, name) != getattr(defaults, name))


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- LRN ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LRNParams:
    size: int = arg(Count(1), 5)
    alpha: float = arg(Real(0.0, LARGE), 1e-4)
    beta: float = arg(Real(0.0, LARGE), 0.75)
    k: float = arg(Real(0.0, LARGE, low_open=True), 1.0)


def window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """s[..., c] = v[..., c - before] + ... + v[..., c + after], channels outside [0, C)
    counting as zeros; v, s (..., C) in v's dtype. One shifted add per channel offset
    (at most size of them, fewer when the window is wider than the channels): unlike a
    cumulative sum it subtracts nothing, so float32 loses nothing to cancellation, and
    it needs no float64 copy of an AlexNet-sized activation."""
    channels = v.shape[-1]
    s = np.zeros_like(v)
    for offset in range(-min(before, channels - 1), min(after, channels - 1) + 1):
        if offset >= 0:
            s[..., :channels - offset] += v[..., offset:]
        else:
            s[..., -offset:] += v[..., :channels + offset]
    return s


@register
class LRN(Op):
    """Local response normalisation across channels (Krizhevsky et al. 2012), as PyTorch's
    nn.LocalResponseNorm and Caffe compute it: x, y (N, *spatial, C) channels-last or flat
    (N, C),

        y_c = x_c / (k + alpha / size * sum of x_j^2 over j in [c - size//2, c + (size-1)//2])^beta

    channels beyond the edges counting as zeros (an even size reaches one channel further
    back than forward, as PyTorch pads). Bare `LRN` is bvlc_alexnet's and GoogLeNet v1's
    (size 5, alpha 1e-4, beta 0.75, k 1). The AlexNet paper's formula does not divide alpha
    by the size: its n=5, alpha=1e-4, k=2 is LRN(5, alpha=5e-4, k=2) here. No parameters."""

    name = "LRN"
    Params = LRNParams
    family = "norm"
    explain_bare = True
    examples = (("6x5x7", "Conv(8, 3) -> LRN -> ReLU"), ("9x6", "LRN(4, alpha=0.5, k=2)"),
                ("3x4x3x5", "LRN(3, alpha=0.3, beta=0.5)"), ("7", "LRN(2, alpha=1)"))

    @staticmethod
    def shape(p, x):
        at_most_3d(x)
        return x

    @staticmethod
    def describe(p):
        return _changed(p, LRNParams(), positional="size")

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        sums = window_sum(x * x, p.size // 2, (p.size - 1) // 2)
        d = p.k + np.asarray(p.alpha / p.size, x.dtype) * sums
        scale = d ** -np.asarray(p.beta, x.dtype)
        return x * scale, (x, d, scale)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        """dx_i = dy_i d_i^-beta - 2 alpha beta / size * x_i * sum over the outputs c whose
        window holds i (c in [i - (size-1)//2, i + size//2]: the window mirrored) of
        dy_c x_c d_c^(-beta-1)."""
        x, d, scale = saved
        if not ctx.need_dx:
            return [None], {}
        back = window_sum(dy * x * scale / d, (p.size - 1) // 2, p.size // 2)
        dx = dy * scale - np.asarray(2 * p.alpha * p.beta / p.size, x.dtype) * back * x
        return [dx], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        """An odd size: ONNX's LRN (its window is PyTorch's then), on (N, C, H, W) as ONNX
        Runtime requires (other ranks are reshaped to (N, C, positions, 1) and back). An even
        size: the formula (ONNX's LRN window would sit one channel later than PyTorch's,
        and ONNX Runtime refuses even sizes), the window sum as PyTorch takes it: an
        AveragePool of the squares, padded size//2 before and (size-1)//2 after."""
        p, (*sizes, channels) = layer.params, layer.in_shapes[0]
        if p.size % 2 == 0:
            return _onnx_lrn_formula(b, layer, xs[0])
        x = xs[0]
        if len(sizes) != 2:
            x = b.node("Reshape", [x, b.constant(f"{layer.name}/4d", [0, channels, -1, 1])],
                       f"{layer.name}/4d")
        y = b.node("LRN", [x], layer.name if len(sizes) == 2 else f"{layer.name}/lrn",
                   size=p.size, alpha=p.alpha, beta=p.beta, bias=p.k)
        if len(sizes) != 2:
            back = b.constant(f"{layer.name}/shape", [0, channels, *sizes])
            y = b.node("Reshape", [y, back], layer.name)
        return y

    @classmethod
    def pytorch(cls, layer, xs):
        """nn.LocalResponseNorm; a flat (N, C) input gets a length-1 axis (PyTorch's LRN
        wants one spatial axis at least)."""
        p = layer.params
        module = (f"nn.LocalResponseNorm({p.size}, alpha={p.alpha!r}, beta={p.beta!r}, "
                  f"k={p.k!r})")
        if layer.rank == 0:
            return module, f"SELF({xs[0]}.unsqueeze(-1)).squeeze(-1)"
        return module, f"SELF({xs[0]})"


def _onnx_lrn_formula(b, layer, x: str) -> str:
    """LRN as PyTorch computes it, from element-wise nodes and an AveragePool over the
    channels of the squares seen as (N, 1, C, positions)."""
    p, (*sizes, channels) = layer.params, layer.in_shapes[0]
    name = layer.name
    squares = b.node("Mul", [x, x], f"{name}/squares")
    column = b.node("Reshape", [squares, b.constant(f"{name}/column", [0, 1, channels, -1])],
                    f"{name}/column")
    mean = b.node("AveragePool", [column], f"{name}/window_mean", kernel_shape=[p.size, 1],
                  pads=[p.size // 2, 0, (p.size - 1) // 2, 0], count_include_pad=1)
    mean = b.node("Reshape", [mean, b.constant(f"{name}/shape", [0, channels, *sizes])],
                  f"{name}/window_mean_nc")
    scaled = b.node("Mul", [mean, _scalar(b, f"{name}/alpha", p.alpha)], f"{name}/alpha_mean")
    d = b.node("Add", [scaled, _scalar(b, f"{name}/k", p.k)], f"{name}/d")
    powered = b.node("Pow", [d, _scalar(b, f"{name}/beta", p.beta)], f"{name}/d_beta")
    return b.node("Div", [x, powered], name)


def _scalar(b, name: str, value: float) -> str:
    """A float32 scalar initializer under a fresh name."""
    return b.weight(b.fresh(name), np.array(value, np.float32))


# ---- LayerNorm ----------------------------------------------------------------------------
OVER = ("channels", "all")


@dataclass(frozen=True)
class LayerNormParams:
    eps: float = arg(Real(0.0, 1.0, high_open=True, low_open=True), 1e-5)
    over: str = arg(Choice(*OVER), "channels")


@register
class LayerNorm(Op):
    """Layer normalisation (Ba et al. 2016) of each example: x, y (N, *spatial, C)
    channels-last or flat (N, F).

    over=channels (bare): mean and variance over the C channels at each position (the
    ConvNeXt "channels_last" LayerNorm; PyTorch's nn.LayerNorm(C) on a channels-last
    tensor); weight and bias (C,). over=all: over every axis but the batch (PyTorch's
    nn.LayerNorm([C, H, W]) on a channels-first map); weight and bias (C, *spatial),
    channels FIRST, PyTorch's layout, so state_dicts map 1:1. On a flat input both are
    nn.LayerNorm(F). y = (x - mean) / sqrt(var + eps) * weight + bias, var biased."""

    name = "LayerNorm"
    Params = LayerNormParams
    family = "norm"
    explain_bare = True
    examples = (("5x4x6", "Conv(4, 3) -> LayerNorm -> ReLU"), ("7x3", "LayerNorm(eps=0.01)"),
                ("3x4x3x2", "LayerNorm"), ("6", "FC(5) -> LayerNorm"),
                ("5x4x3", "LayerNorm(over=all)"))

    @staticmethod
    def shape(p, x):
        at_most_3d(x)
        count = x[-1] if p.over == "channels" else int(np.prod(x))
        if count == 1:
            what = "1 channel" if p.over == "channels" else "a single value"
            raise ShapeMismatch(
                f"normalising over {what} gives the bias whatever the input",
                hint="write LayerNorm(over=all) to normalise over the whole map"
                if p.over == "channels" and len(x) > 1 else
                "LayerNorm needs more than one value to normalise over")
        return x

    @staticmethod
    def param_shapes(p, x):
        shape = (x[-1],) if p.over == "channels" else (x[-1], *x[:-1])
        return {"weight": shape, "bias": shape}

    @classmethod
    def init(cls, p, x, rng):
        shape = cls.param_shapes(p, x)["weight"]
        return {"weight": np.ones(shape, np.float32), "bias": np.zeros(shape, np.float32)}

    @staticmethod
    def window(p, in_shapes):
        """over=all: every output position depends on the whole map."""
        if p.over == "channels":
            return None
        sizes = tuple(in_shapes[0][:-1])
        return Window(sizes, (1,) * len(sizes), tuple((0, 0) for _ in sizes))

    @staticmethod
    def describe(p):
        return _changed(p, LayerNormParams())

    @staticmethod
    def forward(p, g, w, xs, ctx):
        x = xs[0]
        axes = _axes(p, x)
        centred = x - x.mean(axis=axes, keepdims=True)
        var = (centred * centred).mean(axis=axes, keepdims=True)
        inv_std = 1 / np.sqrt(var + np.asarray(p.eps, x.dtype))
        x_hat = centred * inv_std
        return x_hat * _channels_last(w["weight"]) + _channels_last(w["bias"]), (x_hat, inv_std)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        """dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * weight, the
        means over the normalised axes; the parameter gradients sum over the others."""
        x_hat, inv_std = saved
        summed = (0,) if p.over == "all" else tuple(range(dy.ndim - 1))
        grads = {"weight": _channels_first((dy * x_hat).sum(axis=summed)),
                 "bias": _channels_first(dy.sum(axis=summed))}
        if not ctx.need_dx:
            return [None], grads
        axes = _axes(p, dy)
        scaled = dy * _channels_last(w["weight"])
        dx = inv_std * (scaled - scaled.mean(axis=axes, keepdims=True)
                        - x_hat * (scaled * x_hat).mean(axis=axes, keepdims=True))
        return [dx], grads

    @classmethod
    def onnx(cls, b, layer, xs):
        """ONNX's LayerNormalization (opset 17): over=all on the channels-first map from
        axis 1 (weight and bias are in its layout); over=channels between Transposes that
        bring the channels last and back. Before opset 17: the formula, its means as
        MatMuls (whose meaning no opset changed)."""
        from cnndsl.export.emit import onnx_weights

        p, rank = layer.params, layer.rank
        weight, bias = onnx_weights(b, layer, "weight", "bias")
        x, name = xs[0], layer.name
        last = p.over == "channels" and rank > 0
        if last:
            x = b.node("Transpose", [x], f"{name}/channels_last", perm=[0, *range(2, rank + 2), 1])
        out = f"{name}/normalised" if last else name
        if b.opset >= 17:
            y = b.node("LayerNormalization", [x, weight, bias], out,
                       axis=-1 if p.over == "channels" else 1, epsilon=p.eps)
        else:
            y = _onnx_layer_norm_formula(b, layer, x, weight, bias, out)
        if last:
            y = b.node("Transpose", [y], name, perm=[0, rank + 1, *range(1, rank + 1)])
        return y

    @classmethod
    def pytorch(cls, layer, xs):
        """nn.LayerNorm: over=channels on the input moved channels-last (and back);
        over=all with the channels-first shape, on the channels-first input."""
        p, (*sizes, channels) = layer.params, layer.in_shapes[0]
        eps = "" if p.eps == 1e-5 else f", eps={p.eps!r}"
        if p.over == "all" and sizes:
            return f"nn.LayerNorm({[channels, *sizes]}{eps})", f"SELF({xs[0]})"
        module = f"nn.LayerNorm({channels}{eps})"
        if not sizes:
            return module, f"SELF({xs[0]})"
        return module, f"SELF({xs[0]}.movedim(1, -1)).movedim(-1, 1)"


def _axes(p, x) -> tuple[int, ...]:
    """The axes of x (N, *spatial, C) one mean and variance are taken over."""
    return (-1,) if p.over == "channels" else tuple(range(1, x.ndim))


def _channels_last(a: np.ndarray) -> np.ndarray:
    """A parameter in PyTorch's layout ((C,) or (C, *spatial)) as x's (..., C)."""
    return np.moveaxis(a, 0, -1)


def _channels_first(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 0)


def _onnx_layer_norm_formula(b, layer, x: str, weight: str, bias: str, out: str) -> str:
    """LayerNorm from Sub/Mul/Sqrt/Div nodes, the means as MatMul by a column of 1/n: over
    the last axis of x (channels-last), or (over=all) of x flattened to (N, F) and reshaped
    back before weight and bias."""
    p, (*sizes, channels) = layer.params, layer.in_shapes[0]
    name = layer.name
    whole = p.over == "all" and sizes
    if whole:
        x = b.node("Flatten", [x], f"{name}/flat", axis=1)
    count = channels * int(np.prod(sizes)) if whole else channels
    column = b.weight(b.fresh(f"{name}/mean_column"), np.full((count, 1), 1 / count))
    centred = b.node("Sub", [x, b.node("MatMul", [x, column], f"{name}/mean")],
                     f"{name}/centred")
    squares = b.node("Mul", [centred, centred], f"{name}/squares")
    var = b.node("MatMul", [squares, column], f"{name}/var")
    std = b.node("Sqrt", [b.node("Add", [var, _scalar(b, f"{name}/eps", p.eps)],
                                 f"{name}/var_eps")], f"{name}/std")
    normalised = b.node("Div", [centred, std], f"{name}/x_hat")
    if whole:
        shape = b.constant(f"{name}/shape", [0, channels, *sizes])
        normalised = b.node("Reshape", [normalised, shape], f"{name}/x_hat_map")
    scaled = b.node("Mul", [normalised, weight], f"{name}/scaled")
    return b.node("Add", [scaled, bias], out)
