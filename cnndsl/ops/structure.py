"""Graph plumbing: the input, Identity, and the two branch merges (concat and sum)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnndsl.errors import ShapeMismatch
from cnndsl.ops import Op, register
from cnndsl.ops.padding import fmt


@dataclass(frozen=True)
class InputParams:
    shape: tuple[int, ...]


@register
class Input(Op):
    """The network's input; shape as declared by `input` (spatial..., C)."""

    name = "Input"
    Params = InputParams
    arity = 0
    user_callable = False
    family = "io"
    is_input = True
    diagram_style = (("shape", "box"),)
    diagram_names_layer = False

    @classmethod
    def diagram_label(cls, p):
        return f"input {fmt(p.shape)}"

    @classmethod
    def table_text(cls, p):
        return "Input"

    @staticmethod
    def shape(p):
        return p.shape

    @staticmethod
    def describe(p):
        return fmt(p.shape)

    @classmethod
    def onnx(cls, b, layer, xs):
        """The graph's "input" (N, *input) channels-last, transposed once to NC*."""
        rank = layer.rank
        if not rank:
            return "input"
        return b.node("Transpose", ["input"], "input_nchw", name="to_channels_first",
                      perm=[0, rank + 1, *range(1, rank + 1)])

    @classmethod
    def pytorch(cls, layer, xs):
        """forward()'s `x` (N, *input) channels-last, moved to channels-first."""
        from cnndsl.export.emit import axes

        if not layer.rank:
            return None, "x"
        return None, f"x.movedim(-1, 1)  # channels-last -> (N, C, {axes(layer.rank)})"


@register
class Identity(Op):
    """y = x."""

    name = "Identity"
    examples = (("5x5x3", "Identity"),)
    family = "shape"

    @staticmethod
    def shape(p, x):
        return x

    @staticmethod
    def forward(p, g, w, xs, ctx):
        return xs[0], None

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        return [dy], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        return xs[0]  # nothing to compute: the tensor is passed on

    @classmethod
    def pytorch(cls, layer, xs):
        from cnndsl.export.emit import torch_simple

        return torch_simple(layer, xs, "nn.Identity()")


@register
class Concat(Op):
    """`{ A | B }`: concatenate along channels; spatial sizes must agree."""

    name = "Concat"
    arity = None
    user_callable = False
    family = "merge"
    diagram_style = (("shape", "box"), ("fontsize", "12"), ("width", "0.3"),
                     ("style", "filled"))
    diagram_names_layer = False

    @classmethod
    def diagram_label(cls, p):
        return "concat"

    @classmethod
    def table_text(cls, p):
        return "{ | } concat"

    @staticmethod
    def shape(p, *xs):
        first = xs[0]
        for i, x in enumerate(xs[1:], start=2):
            if len(x) != len(first) or x[:-1] != first[:-1]:
                raise ShapeMismatch(
                    "'|' branches must have the same spatial size to concatenate along "
                    f"channels, but branch 1 gives {fmt(first)} and branch {i} gives {fmt(x)}",
                    hint="give every branch the same strides and padding (e.g. pad=same)")
        return (*first[:-1], sum(x[-1] for x in xs))

    @staticmethod
    def forward(p, g, w, xs, ctx):
        return np.concatenate(xs, axis=-1), [x.shape[-1] for x in xs]

    @staticmethod
    def backward(p, g, w, channels, dy, ctx):
        bounds = np.cumsum(channels)[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dy, bounds, axis=-1)], {}

    @classmethod
    def onnx(cls, b, layer, xs):
        return b.node("Concat", xs, layer.name, axis=1)  # channels, inside the graph

    @classmethod
    def pytorch(cls, layer, xs):
        return None, f"torch.cat([{', '.join(xs)}], dim=1)"


@register
class Add(Op):
    """`{ A + B }`: element-wise sum; shapes must be equal."""

    name = "Add"
    arity = None
    user_callable = False
    family = "merge"
    diagram_style = (("shape", "circle"), ("fontsize", "12"), ("width", "0.3"),
                     ("style", "filled"))
    diagram_names_layer = False

    @classmethod
    def diagram_label(cls, p):
        return "+"

    @classmethod
    def table_text(cls, p):
        return "{ + } sum"

    @staticmethod
    def shape(p, *xs):
        first = xs[0]
        for i, x in enumerate(xs[1:], start=2):
            if x != first:
                raise ShapeMismatch(
                    f"'+' branches must have the same shape to be summed, but branch 1 gives "
                    f"{fmt(first)} and branch {i} gives {fmt(x)}",
                    hint="match channels and strides, e.g. a 1x1 Conv with the same stride "
                         "on the shortcut")
        return first

    #: a following ReLU may be folded in (`+` -> ReLU of a residual block): geometry then
    #: is {"activation": "relu"}
    fusable_activations = ("relu",)

    @staticmethod
    def forward(p, g, w, xs, ctx):
        y = np.add(xs[0], xs[1], out=ctx.out)
        for x in xs[2:]:
            y += x
        relu = g is not None and g.get("activation") == "relu"
        if relu:
            ctx.kernels("elementwise").relu_forward(y, out=y)
        return y, (len(xs), y if relu else None)

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        count, y = saved
        if y is not None:  # the folded ReLU's backward
            dy = ctx.kernels("elementwise").relu_backward(y, dy)
        return [dy] * count, {}

    @classmethod
    def onnx(cls, b, layer, xs):
        return b.node("Add" if len(xs) == 2 else "Sum", xs, layer.name)

    @classmethod
    def pytorch(cls, layer, xs):
        return None, " + ".join(xs)
