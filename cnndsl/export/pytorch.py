"""Export a model as a PyTorch module, and bring PyTorch weights back.

`to_pytorch(model, "net.py")` writes a readable, self-contained `net.py` defining
`class <Network>(torch.nn.Module)` (one attribute per layer, named as cnndsl names it) and
`net.pt`, its `state_dict` (torch.save). The module takes and returns cnndsl's
channels-last arrays (N, *input) and permutes to channels-first inside. Its state_dict keys
are cnndsl's parameter and buffer names (`conv1.weight`, `batchnorm1.running_mean`), with
a layer name that is not a Python identifier made into one.

What `forward` returns: for a network that ends in Softmax, the logits (the final
Softmax's input), which is what `nn.CrossEntropyLoss` expects and what cnndsl's own loss
is computed from; `predict_proba(x)` applies that Softmax (over the class axis, the last)
and returns what cnndsl's `model.forward` returns. Any other network: its output, as
`model.forward`, and no `predict_proba`.

`load_pytorch_state(model, state_dict)` copies such a state_dict (say, after training in
PyTorch) into a cnndsl model, checking every name and shape first.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnndsl.export import ExportError, Layer, consumers, layers, python_name

#: names the generated code uses itself (never a layer's attribute or variable)
_RESERVED = {"x", "x0", "self", "torch", "nn", "F", "math", "Path", "load",
             "SeparableConv", "LocalConv", "predict_proba"}


def to_pytorch(model, path) -> None:
    """Write the module source to `path` (.py) and its state_dict next to it (.pt)."""
    torch = _import_torch()
    target = Path(path)
    if target.suffix == ".pt":
        raise ExportError(f"'{path}': the module is Python source; the weights go to a .pt "
                          "file next to it", hint="give a .py path")
    source = module_source(model, weights_file=target.with_suffix(".pt").name)
    compile(source, str(target), "exec")  # a generator bug fails here, before any write
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target.with_suffix(".pt"), lambda f: torch.save(state_dict(model), f))
    _write_atomic(target, lambda f: f.write(source.encode("utf-8")))


def attribute_names(model) -> dict[str, str]:
    """Layer name -> its attribute (and forward variable) name in the generated module."""
    import torch

    taken = set(dir(torch.nn.Module())) | _RESERVED  # incl. `training`
    return {layer.name: python_name(layer.name, taken) for layer in layers(model)}


def state_dict(model) -> dict:
    """The generated module's state_dict: cnndsl's arrays as tensors (copies, same dtype)."""
    torch = _import_torch()
    names = attribute_names(model)
    result = {}
    for layer in layers(model):
        for local, array in layer.weights.items():
            result[f"{names[layer.name]}.{local}"] = torch.from_numpy(array.copy())
        if layer.op == "BatchNorm":
            result[f"{names[layer.name]}.num_batches_tracked"] = torch.tensor(0)
    return result


def load_pytorch_state(model, state) -> None:
    """Copy a state_dict of the generated module (or a path to a saved one) into `model`.

    Every parameter and buffer must be there with its shape, and nothing else but
    BatchNorm's `num_batches_tracked`; all is checked before anything is copied. Values are
    copied exactly (bit for bit when the dtypes agree)."""
    if isinstance(state, (str, os.PathLike)):
        torch = _import_torch()
        state = torch.load(state, map_location="cpu", weights_only=True)
    names = attribute_names(model)
    plan, expected = [], set()
    for layer in layers(model):
        for local, array in layer.weights.items():
            key = f"{names[layer.name]}.{local}"
            expected.add(key)
            if key not in state:
                raise ExportError(f"the state_dict has no '{key}' ({layer.op} "
                                  f"'{layer.name}')", hint=_HINT)
            value = state[key].detach().cpu().numpy()
            if value.shape != array.shape:
                raise ExportError(f"'{key}' is {_fmt(value.shape)} in the state_dict but "
                                  f"{_fmt(array.shape)} in {model.name}", hint=_HINT)
            plan.append((array, value))
    extra = [k for k in state if k not in expected and not k.endswith(".num_batches_tracked")]
    if extra:
        raise ExportError(f"the state_dict has '{extra[0]}', which {model.name} lacks",
                          hint=_HINT)
    for array, value in plan:
        array[...] = value


_HINT = "export this network with to_pytorch and train that module"


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) if shape else "a scalar"


# ---- the generated source ---------------------------------------------------------------
def module_source(model, weights_file: str = "weights.pt") -> str:
    """The Python source of the module (see the module docstring)."""
    names = attribute_names(model)
    readers = consumers(model)
    all_layers = layers(model)
    final = _final_softmax(all_layers, model.output_name)
    order = [model.input_name] + [layer.name for layer in all_layers]
    variables = {}
    for i, node in enumerate(order):
        following = order[i + 1] if i + 1 < len(order) else None
        # a value read only by the next layer lives in `x`; others keep a name for later
        if readers[node] == [following] or node == model.output_name:
            variables[node] = "x"
        else:
            variables[node] = "x0" if node == model.input_name else names[node]
    class_name = python_name(model.name[:1].upper() + model.name[1:], set(_RESERVED))
    init_lines, forward_lines, helpers = [], [], set()
    in_rank = len(model.input_shape) - 1
    if in_rank:
        forward_lines.append(f"{variables[model.input_name]} = x.movedim(-1, 1)"
                             f"  # channels-last -> (N, C, {_axes(in_rank)})")
    elif variables[model.input_name] != "x":
        forward_lines.append("x0 = x")
    for layer in all_layers:
        attribute = names[layer.name]
        if layer is final:  # not in forward: predict_proba applies it, on channels-last
            init_lines.append(f"self.{attribute} = nn.Softmax(dim=-1)"
                              "  # the final Softmax: predict_proba only")
            continue
        module, expression = _EMIT[layer.op](layer, [variables[i] for i in layer.inputs])
        if module is not None:
            init_lines.append(f"self.{attribute} = {module}")
            helpers.update(h for h in ("SeparableConv", "LocalConv") if module.startswith(h))
        forward_lines.append(f"{variables[layer.name]} = "
                             + expression.replace("SELF", f"self.{attribute}"))
    out_rank = len(model.output_shape) - 1
    result = variables[final.inputs[0] if final else model.output_name]
    if final:
        forward_lines.append(f"# logits (N, {_shape(model.output_shape)}): the input of the "
                             "final Softmax, for nn.CrossEntropyLoss;")
        forward_lines.append("# predict_proba(x) returns the probabilities")
    ret = f"{result}.movedim(1, -1)  # back to channels-last" if out_rank else result
    forward_lines.append(f"return {ret}")
    shape_in, shape_out = _shape(model.input_shape), _shape(model.output_shape)
    returns = (_RETURNS_LOGITS if final else _RETURNS_OUTPUT).format(shape_out=shape_out)
    parts = [_HEADER.format(name=model.name, shape_in=shape_in, returns=returns,
                            weights=weights_file, cls=class_name,
                            math="\nimport math" if helpers else "")]
    parts += [_HELPERS[h] for h in ("SeparableConv", "LocalConv") if h in helpers]
    proba = _PROBA.format(shape_out=shape_out, softmax=names[final.name]) if final else ""
    parts.append(_CLASS.format(
        cls=class_name, name=model.name, shape_in=shape_in, shape_out=shape_out,
        what="logits" if final else "y", input_shape=tuple(model.input_shape),
        output_shape=tuple(model.output_shape),
        init="\n".join("        " + line for line in init_lines) or "        pass",
        forward="\n".join("        " + line for line in forward_lines)) + proba)
    parts.append(_LOADER.format(cls=class_name, weights=weights_file))
    return "\n\n\n".join(parts)


def _final_softmax(all_layers: list[Layer], output_name: str) -> Layer | None:
    """The output layer if it is a Softmax (forward then stops at its input, the logits)."""
    last = next(layer for layer in all_layers if layer.name == output_name)
    return last if last.op == "Softmax" else None


def _shape(shape) -> str:
    return ", ".join(map(str, shape))


def _axes(rank: int) -> str:
    return ", ".join(("D", "H", "W")[3 - rank:]) if rank > 1 else "L"


def _size(values) -> str:
    """(3, 3) -> 3; (2, 3) -> (2, 3)."""
    values = tuple(values)
    if len(set(values)) == 1:
        return str(values[0])
    return "(" + ", ".join(map(str, values)) + ")"


def _padding(layer: Layer, fill: str | None = None) -> tuple[str | None, str]:
    """(the module's `padding=` or None, a wrapper for the forward input).

    Symmetric padding goes to the module; asymmetric ('same' with an even window or a
    stride) becomes F.pad in forward, as F.pad's list: last axis first."""
    before, after = layer.per_rank("pad_before"), layer.per_rank("pad_after")
    if before == after:
        return (None if not any(before) else _size(before)), "{}"
    pads = []
    for b, a in zip(reversed(before), reversed(after)):
        pads += [b, a]
    value = f", value={fill}" if fill else ""
    return None, f"F.pad({{}}, [{', '.join(map(str, pads))}]{value})"


def _call(layer, xs, wrap="{}"):
    return "SELF(" + wrap.format(xs[0]) + ")"


def _conv(layer, xs):
    p, rank, channels = layer.params, layer.rank, layer.in_shapes[0][-1]
    padding, wrap = _padding(layer)
    args = [str(channels), str(p.filters), f"kernel_size={_size(layer.per_rank('kernel'))}"]
    if set(layer.per_rank("stride")) != {1}:
        args.append(f"stride={_size(layer.per_rank('stride'))}")
    if padding:
        args.append(f"padding={padding}")
    if set(layer.per_rank("dilation")) != {1}:
        args.append(f"dilation={_size(layer.per_rank('dilation'))}")
    if p.groups != 1:
        args.append(f"groups={p.groups}")
    if not p.bias:
        args.append("bias=False")
    return f"nn.Conv{rank}d({', '.join(args)})", _call(layer, xs, wrap)


def _depthwise(layer, xs):
    rank, channels = layer.rank, layer.in_shapes[0][-1]
    padding, wrap = _padding(layer)
    args = [str(channels), str(layer.shape[-1]), f"kernel_size={_size(layer.per_rank('kernel'))}"]
    if set(layer.per_rank("stride")) != {1}:
        args.append(f"stride={_size(layer.per_rank('stride'))}")
    if padding:
        args.append(f"padding={padding}")
    args.append(f"groups={channels}")
    if not layer.params.bias:
        args.append("bias=False")
    return f"nn.Conv{rank}d({', '.join(args)})", _call(layer, xs, wrap)


def _separable(layer, xs):
    padding, wrap = _padding(layer)
    args = [str(layer.in_shapes[0][-1]), str(layer.params.filters),
            f"kernel_size={tuple(layer.per_rank('kernel'))}",
            f"stride={tuple(layer.per_rank('stride'))}",
            f"padding={tuple(layer.per_rank('pad_before')) if padding else (0,) * layer.rank}"]
    if not layer.params.bias:
        args.append("bias=False")
    return f"SeparableConv({', '.join(args)})", _call(layer, xs, wrap)


def _conv_t(layer, xs):
    p = layer.params
    kernel = layer.weights["weight"].shape[2:]
    args = [str(layer.in_shapes[0][-1]), str(p.filters), f"kernel_size={_size(kernel)}"]
    for key, name in (("stride", "stride"), ("pad", "padding"), ("output_pad", "output_padding")):
        default = 1 if key == "stride" else 0
        if set(layer.per_rank(key)) != {default}:
            args.append(f"{name}={_size(layer.per_rank(key))}")
    if not p.bias:
        args.append("bias=False")
    return f"nn.ConvTranspose{layer.rank}d({', '.join(args)})", _call(layer, xs)


def _local(layer, xs):
    w = layer.weights["weight"]
    rank = layer.rank
    args = [str(layer.in_shapes[0][-1]), str(layer.params.filters),
            f"kernel_size={tuple(w.shape[rank + 2:])}",
            f"stride={tuple(layer.per_rank('stride'))}", f"out_size={tuple(w.shape[:rank])}"]
    if not layer.params.bias:
        args.append("bias=False")
    return f"LocalConv({', '.join(args)})", _call(layer, xs)


def _pool(kind, fill=None):
    def emit(layer, xs):
        padding, wrap = _padding(layer, fill)
        args = [f"kernel_size={_size(layer.per_rank('kernel'))}"]
        if layer.per_rank("stride") != layer.per_rank("kernel"):
            args.append(f"stride={_size(layer.per_rank('stride'))}")
        if kind == "LPPool":
            args.insert(0, "2")
            if padding:  # LPPool takes no padding
                wrap = f"F.pad({{}}, [{', '.join(map(str, _sym(layer)))}])"
        elif padding:
            args.append(f"padding={padding}")
        return f"nn.{kind}{layer.rank}d({', '.join(args)})", _call(layer, xs, wrap)

    return emit


def _sym(layer):
    pads = []
    for b in reversed(layer.per_rank("pad_before")):
        pads += [b, b]
    return pads


def _global(kind):
    def emit(layer, xs):
        return (f"nn.Sequential(nn.Adaptive{kind}Pool{layer.rank}d(1), nn.Flatten())",
                _call(layer, xs))

    return emit


def _flatten(layer, xs):
    return "nn.Flatten()", _call(layer, xs)


def _fc(layer, xs):
    units, features = layer.weights["weight"].shape
    bias = "" if layer.params.bias else ", bias=False"
    wrap = "{}.flatten(1)" if layer.rank else "{}"  # channel-major, as cnndsl
    return f"nn.Linear({features}, {units}{bias})", _call(layer, xs, wrap)


def _simple(template):
    def emit(layer, xs):
        return template.format(p=layer.params), _call(layer, xs)

    return emit


def _batchnorm(layer, xs):
    p = layer.params
    extra = "" if p.eps == 1e-5 else f", eps={p.eps!r}"
    extra += "" if p.momentum == 0.1 else f", momentum={p.momentum!r}"
    return f"nn.BatchNorm{max(layer.rank, 1)}d({layer.shape[-1]}{extra})", _call(layer, xs)


def _concat(layer, xs):
    return None, f"torch.cat([{', '.join(xs)}], dim=1)"


def _add(layer, xs):
    return None, " + ".join(xs)


_EMIT = {
    "Conv": _conv, "DepthwiseConv": _depthwise, "SeparableConv": _separable,
    "ConvT": _conv_t, "LocalConv": _local,
    "MaxPool": _pool("MaxPool", "float('-inf')"), "AvgPool": _pool("AvgPool"),
    "L2Pool": _pool("LPPool"),
    "GlobalAvgPool": _global("Avg"), "GlobalMaxPool": _global("Max"),
    "Flatten": _flatten, "FC": _fc,
    "ReLU": _simple("nn.ReLU()"), "LeakyReLU": _simple("nn.LeakyReLU({p.alpha!r})"),
    "Sigmoid": _simple("nn.Sigmoid()"), "Tanh": _simple("nn.Tanh()"),
    "Softmax": _simple("nn.Softmax(dim=1)"),  # over channels
    "BatchNorm": _batchnorm, "Dropout": _simple("nn.Dropout({p.p!r})"),
    "Identity": _simple("nn.Identity()"),
    "Concat": _concat, "Add": _add,
}

_HEADER = '''"""{name}, exported by cnndsl as a PyTorch module.

{returns}

Input (N, {shape_in}) and output are channels-last, as cnndsl declares them; forward()
permutes to channels-first and back. Weights: {weights} next to this file
(a state_dict): `model = load()` builds {cls} with them, in eval mode.
Asymmetric padding ('same' with a stride or an even kernel) is an F.pad before the layer
(F.pad lists the last axis first).
"""
{math}
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn'''

_HELPERS = {
    "SeparableConv": '''class SeparableConv(nn.Module):
    """Depthwise conv (no bias), then a 1x1 conv to `filters` with bias (cnndsl's layout:
    depthwise (C, 1, *kernel), pointwise (filters, C, 1, ...), bias (filters,))."""

    def __init__(self, channels, filters, kernel_size, stride, padding, bias=True):
        super().__init__()
        rank = len(kernel_size)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        self.stride, self.padding = stride, padding
        self.depthwise = nn.Parameter(torch.empty(channels, 1, *kernel_size))
        self.pointwise = nn.Parameter(torch.empty(filters, channels, *[1] * rank))
        self.bias = nn.Parameter(torch.empty(filters)) if bias else None
        for weight in (self.depthwise, self.pointwise):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if bias:
            nn.init.uniform_(self.bias, -channels ** -0.5, channels ** -0.5)

    def forward(self, x):
        x = self.conv(x, self.depthwise, None, self.stride, self.padding, groups=x.shape[1])
        return self.conv(x, self.pointwise, self.bias)''',
    "LocalConv": '''class LocalConv(nn.Module):
    """Locally connected layer: a valid conv with one weight per output position
    (cnndsl's layout: weight (*out_size, filters, C, *kernel), bias (filters, *out_size))."""

    def __init__(self, channels, filters, kernel_size, stride, out_size, bias=True):
        super().__init__()
        self.kernel_size, self.stride, self.out_size = kernel_size, stride, out_size
        self.weight = nn.Parameter(torch.empty(*out_size, filters, channels, *kernel_size))
        self.bias = nn.Parameter(torch.empty(filters, *out_size)) if bias else None
        bound = (channels * math.prod(kernel_size)) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if bias:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            x = x.unfold(2 + axis, k, s)  # (N, C, *out_size, *kernel_size)
        n, c = x.shape[:2]
        positions, taps = math.prod(self.out_size), math.prod(self.kernel_size)
        patches = x.reshape(n, c, positions, taps)
        w = self.weight.reshape(positions, -1, c, taps)
        y = torch.einsum("ncpk,pfck->nfp", patches, w).reshape(n, -1, *self.out_size)
        return y if self.bias is None else y + self.bias''',
}

_RETURNS_LOGITS = """\
forward(x) returns LOGITS, (N, {shape_out}): the network ends in Softmax and forward
stops before it, so its result is what nn.CrossEntropyLoss expects (cnndsl's training takes
its loss from the same logits). predict_proba(x) returns the probabilities, (N, {shape_out}):
that Softmax over the last axis (the classes), i.e. what cnndsl's model.forward(x) returns."""

_RETURNS_OUTPUT = """\
forward(x) returns the network's output, (N, {shape_out}): what cnndsl's
model.forward(x) returns. The network does not end in Softmax (cnndsl's training treats this
output as logits, as nn.CrossEntropyLoss does), so there is no predict_proba."""

_PROBA = '''

    def predict_proba(self, x):
        """Probabilities (N, {shape_out}): the final Softmax, over the last axis (the
        classes), of forward(x)'s logits; what cnndsl's model.forward(x) returns."""
        return self.{softmax}(self(x))'''

_CLASS = '''class {cls}(nn.Module):
    """{name}: x (N, {shape_in}) -> {what} (N, {shape_out}), channels-last in and out."""

    input_shape = {input_shape}
    output_shape = {output_shape}

    def __init__(self):
        super().__init__()
{init}

    def forward(self, x):
{forward}'''

_LOADER = '''def load(weights=None):
    """{cls} with the weights saved next to this file (or `weights`), in eval mode."""
    model = {cls}()
    path = weights or Path(__file__).with_name("{weights}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
'''


def _write_atomic(target: Path, write) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ExportError("exporting to PyTorch needs the 'torch' package",
                          hint="pip install torch") from None
    return torch
