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
from cnndsl.ops import OPS


def _helper_ops() -> list:
    """Op classes whose export defines a helper module class (named as the op), in
    registry order."""
    return list({cls.name: cls for cls in OPS.values() if cls.pytorch_class}.values())


def _reserved() -> set[str]:
    """Names the generated code uses itself (never a layer's attribute or variable)."""
    return {"x", "x0", "self", "torch", "nn", "F", "math", "Path", "load", "predict_proba",
            *(cls.name for cls in _helper_ops())}


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

    taken = set(dir(torch.nn.Module())) | _reserved()  # incl. `training`
    return {layer.name: python_name(layer.name, taken) for layer in layers(model)}


def state_dict(model) -> dict:
    """The generated module's state_dict: cnndsl's arrays as tensors (copies, same dtype)."""
    torch = _import_torch()
    names = attribute_names(model)
    result = {}
    for layer in layers(model):
        for local, array in layer.weights.items():
            result[f"{names[layer.name]}.{local}"] = torch.from_numpy(array.copy())
        for counter in OPS[layer.op].pytorch_counters:
            result[f"{names[layer.name]}.{counter}"] = torch.tensor(0)
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
    class_name = python_name(model.name[:1].upper() + model.name[1:], _reserved())
    init_lines, forward_lines, helpers = [], [], set()
    for layer in layers(model, with_input=True):  # the Input's hook: to channels-first
        attribute = names.get(layer.name)
        if final and layer.name == final.name:
            # not in forward: predict_proba applies it, on channels-last
            init_lines.append(f"self.{attribute} = nn.Softmax(dim=-1)"
                              "  # the final Softmax: predict_proba only")
            continue
        op = OPS[layer.op]
        module, expression = op.pytorch(layer, [variables[i] for i in layer.inputs])
        if module is not None:
            init_lines.append(f"self.{attribute} = {module}")
            if op.pytorch_class:
                helpers.add(op.name)
        if expression != variables[layer.name]:  # `x = x` says nothing
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
    parts += [cls.pytorch_class for cls in _helper_ops() if cls.name in helpers]
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
    return last if last.kind.gives_probabilities else None


def _shape(shape) -> str:
    return ", ".join(map(str, shape))


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
