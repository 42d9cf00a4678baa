"""Export a compiled model to run elsewhere: ONNX (`onnx.to_onnx`) and a PyTorch module
(`pytorch.to_pytorch`, and `pytorch.load_pytorch_state` for the way back).

Both exporters walk `layers(model, with_input=True)`: the IR's nodes in execution
(topological) order as `cnndsl.ops.Layer` records, the runtime's own (the model's unfused
run plan; its fused plan folds activations into the layer before them), and ask each
node's op class to emit it (`OPS[layer.op].onnx(...)` / `.pytorch(...)`, helpers in
cnndsl.export.emit): neither exporter knows any layer kind by name. Exported networks
compute what `model.forward(x, train=False)` computes, on channels-last arrays (N, *input).
"""

from __future__ import annotations

import keyword
import re

import numpy as np

from cnndsl.errors import CnnDslError
from cnndsl.ops import Layer, graph_layer


class ExportError(CnnDslError):
    """The network (or a setting) cannot be exported to the requested format."""


def layers(model, with_input: bool = False) -> list[Layer]:
    """The model's layers in execution order (its unfused run plan: each layer computes
    its own output); its Input first too if `with_input` (the exporters' walk: every
    node, each emitted by its op class's hook)."""
    plan = model.make_layers(fuse=False)
    return [graph_layer(model.graph, model.input_name), *plan] if with_input else plan


def consumers(model) -> dict[str, list[str]]:
    """Node name -> the layers reading it, in execution order."""
    readers: dict[str, list[str]] = {name: [] for name in model.graph.nodes}
    for layer in layers(model):
        for source in layer.inputs:
            readers[source].append(layer.name)
    return readers


def python_name(name: str, taken: set[str]) -> str:
    """A valid, unused Python identifier close to `name` (added to `taken`)."""
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit():
        base = "l_" + base
    if keyword.iskeyword(base):
        base += "_"
    candidate, i = base, 1
    while candidate in taken:
        i += 1
        candidate = f"{base}_{i}"
    taken.add(candidate)
    return candidate


def as_float32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


__all__ = ["ExportError", "Layer", "consumers", "layers", "python_name"]
