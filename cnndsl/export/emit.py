"""Helpers the op classes' export hooks share (`Op.onnx`, `Op.pytorch`, cnndsl/ops/*.py).

Each op class writes its own ONNX nodes and its own PyTorch module; what several kinds
write alike lives here. The ops import this module inside their hooks, so `cnndsl check`
(which imports every op) never loads it, nor onnx or torch (neither is imported here).

ONNX hooks receive `b` (cnndsl.export.onnx's builder: `b.node(op, inputs, output, **attrs)`,
`b.weight`, `b.constant`, `b.fresh`), the `Layer` (cnndsl.export.Layer) and `xs`, the input
tensor names, channels-first (N, C, *spatial) inside the graph; they return the name of the
output tensor. PyTorch hooks receive the `Layer` and `xs`, the input variable names in the
generated forward(), channels-first; they return (the `nn.Module` expression for
`self.<layer> = ...` or None, the forward expression, where SELF stands for the module).
"""

from __future__ import annotations


def no_emitter(op_name: str, target: str):
    """The named error of a layer kind without an emitter for `target` (ONNX, PyTorch)."""
    from cnndsl.export import ExportError

    return ExportError(f"the layer kind {op_name} has no {target} emitter",
                       hint=f"this network cannot be exported to {target} yet")


# ---- ONNX --------------------------------------------------------------------------------
def onnx_weights(b, layer, *names) -> list[str]:
    """Initializer names of the layer's weights that exist, in the order given."""
    return [b.weight(f"{layer.name}.{n}", layer.weights[n]) for n in names
            if n in layer.weights]


def onnx_window(layer, dilation: bool = False) -> dict:
    """kernel_shape, strides, pads (begins then ends) [and dilations] from the geometry."""
    attributes = {"kernel_shape": list(layer.per_rank("kernel")),
                  "strides": list(layer.per_rank("stride")),
                  "pads": [*layer.per_rank("pad_before"), *layer.per_rank("pad_after")]}
    if dilation:
        attributes["dilations"] = list(layer.per_rank("dilation"))
    return attributes


def onnx_flipped(b, layer, weight: str) -> str:
    """The conv weight tensor `weight` (F, C, *kernel) reversed on its kernel axes: a Slice
    with step -1 (INT64_MIN ends: through index 0), so the initializer stays the weight as
    cnndsl stores it."""
    rank = layer.rank
    name = f"{layer.name}/flip"
    inputs = [weight, b.constant(f"{name}_starts", [-1] * rank),
              b.constant(f"{name}_ends", [-(2**63)] * rank),
              b.constant(f"{name}_axes", list(range(2, 2 + rank))),
              b.constant(f"{name}_steps", [-1] * rank)]
    return b.node("Slice", inputs, f"{layer.name}/weight_flipped")


def onnx_single(b, layer, xs, onnx_op: str, **attributes) -> str:
    """One ONNX node of the inputs as they are, named after the layer."""
    return b.node(onnx_op, xs, layer.name, **attributes)


def onnx_pool(b, layer, xs, onnx_op: str, **extra) -> str:
    """A windowed pool (MaxPool, AveragePool, LpPool) over the layer's window."""
    return b.node(onnx_op, [xs[0]], layer.name, **onnx_window(layer), **extra)


def onnx_global(b, layer, xs, onnx_op: str) -> str:
    """A global pool, then Flatten to (N, C) as cnndsl's global pools give."""
    pooled = b.node(onnx_op, [xs[0]], f"{layer.name}/pool")
    return b.node("Flatten", [pooled], layer.name, axis=1)


# ---- PyTorch -----------------------------------------------------------------------------
def size(values) -> str:
    """(3, 3) -> 3; (2, 3) -> (2, 3)."""
    values = tuple(values)
    if len(set(values)) == 1:
        return str(values[0])
    return "(" + ", ".join(map(str, values)) + ")"


def axes(rank: int) -> str:
    """The channels-first axes' letters after N, C: L; H, W; D, H, W."""
    return ", ".join(("D", "H", "W")[3 - rank:]) if rank > 1 else "L"


def padding(layer, fill: str | None = None) -> tuple[str | None, str]:
    """(the module's `padding=` or None, a wrapper for the forward input).

    Symmetric padding goes to the module; asymmetric ('same' with an even window or a
    stride) becomes F.pad in forward, as F.pad's list: last axis first."""
    before, after = layer.per_rank("pad_before"), layer.per_rank("pad_after")
    if before == after:
        return (None if not any(before) else size(before)), "{}"
    pads = []
    for b, a in zip(reversed(before), reversed(after)):
        pads += [b, a]
    value = f", value={fill}" if fill else ""
    return None, f"F.pad({{}}, [{', '.join(map(str, pads))}]{value})"


def pad_call(layer, fill: str | None = None) -> str:
    """A wrapper for the forward input padding it as the geometry says (F.pad's list, last
    axis first), for a module that takes no padding; "{}" where nothing is padded."""
    before, after = layer.per_rank("pad_before"), layer.per_rank("pad_after")
    if not any(before) and not any(after):
        return "{}"
    pads = []
    for b, a in zip(reversed(before), reversed(after)):
        pads += [b, a]
    value = f", value={fill}" if fill else ""
    return f"F.pad({{}}, [{', '.join(map(str, pads))}]{value})"


def symmetric_pads(layer) -> list[int]:
    """F.pad's list (last axis first) padding `pad_before` on both sides of every axis."""
    pads = []
    for b in reversed(layer.per_rank("pad_before")):
        pads += [b, b]
    return pads


def call(layer, xs, wrap: str = "{}") -> str:
    """The forward expression applying the layer's module to its (wrapped) input."""
    return "SELF(" + wrap.format(xs[0]) + ")"


def torch_simple(layer, xs, module: str) -> tuple[str, str]:
    """A module applied to the one input (`module` may use {p}, the layer's Params)."""
    return module.format(p=layer.params), call(layer, xs)


def torch_pool(layer, xs, kind: str, fill: str | None = None) -> tuple[str, str]:
    """nn.{kind}{rank}d over the layer's window; asymmetric padding as an F.pad (filled
    with `fill`), and LPPool, which takes no padding, always padded by F.pad."""
    pad, wrap = padding(layer, fill)
    args = [f"kernel_size={size(layer.per_rank('kernel'))}"]
    if layer.per_rank("stride") != layer.per_rank("kernel"):
        args.append(f"stride={size(layer.per_rank('stride'))}")
    if kind == "LPPool":
        args.insert(0, "2")
        if pad:  # LPPool takes no padding
            wrap = f"F.pad({{}}, [{', '.join(map(str, symmetric_pads(layer)))}])"
    elif pad:
        args.append(f"padding={pad}")
    return f"nn.{kind}{layer.rank}d({', '.join(args)})", call(layer, xs, wrap)


def torch_global(layer, xs, kind: str) -> tuple[str, str]:
    """Adaptive{kind}Pool to 1, then Flatten to (N, C)."""
    return (f"nn.Sequential(nn.Adaptive{kind}Pool{layer.rank}d(1), nn.Flatten())",
            call(layer, xs))
