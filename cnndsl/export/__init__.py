"""Export a compiled model to run elsewhere: ONNX (`onnx.to_onnx`) and a PyTorch module
(`pytorch.to_pytorch`, and `pytorch.load_pytorch_state` for the way back).

Both exporters walk `layers(model)`: the IR's nodes in execution (topological) order with
what an exporter needs, read from the graph and the op registry, not from the model's
run plan (which folds activations into the layer before them). Exported networks compute
what `model.forward(x, train=False)` computes, on channels-last arrays (N, *input).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

import numpy as np

from cnndsl.errors import CnnDslError
from cnndsl.ops import OPS


class ExportError(CnnDslError):
    """The network (or a setting) cannot be exported to the requested format."""


@dataclass(frozen=True)
class Layer:
    """One IR node, as exporters see it. Shapes are cnndsl's (spatial..., C) or (F,)."""

    name: str
    op: str  # canonical registry name: Conv, MaxPool, Concat, ...
    params: object
    geometry: dict | None  # the op's geometry(): (D, H, W) triples
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]
    weights: dict  # local name -> the model's array (parameters, then buffers)

    @property
    def rank(self) -> int:
        """Spatial axes of the (first) input: 0 for a flat (N, F) tensor."""
        return len(self.in_shapes[0]) - 1 if self.in_shapes else len(self.shape) - 1

    def per_rank(self, key: str) -> tuple[int, ...]:
        """A geometry triple cut down to the input's spatial axes."""
        return tuple(self.geometry[key][3 - self.rank:])


def layers(model) -> list[Layer]:
    """The model's layers (not its Input) in execution order."""
    graph = model.graph
    arrays = {**model.parameters(), **model.buffers()}
    result = []
    for name, node in graph.nodes(data=True):
        if node["op"] == "Input":
            continue
        op = OPS[node["op"]]
        in_shapes = tuple(tuple(graph.nodes[i]["shape"]) for i in node["inputs"])
        weights = {key.split(".", 1)[1]: array for key, array in arrays.items()
                   if key.split(".", 1)[0] == name}
        result.append(Layer(name, op.name, node["params"], op.geometry(node["params"], in_shapes),
                            tuple(node["inputs"]), in_shapes, tuple(node["shape"]), weights))
    return result


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
