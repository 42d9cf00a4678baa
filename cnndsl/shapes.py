"""Shape inference and checking: a pass over the IR that needs no data.

Walks the nodes in (topological) insertion order and annotates each with
    shape         output shape without the batch axis, in declared order (spatial..., C)
    param_shapes  {name: shape} in PyTorch layouts; `params` their element count
    buffer_shapes {name: shape} (BatchNorm running statistics)
    macs          multiply-accumulates per example, as torchinfo counts them
A layer that cannot take its input raises ShapeError naming it, what it received and
what it needed; nodes before it keep their annotations, so a diagram can show the
network up to the error (the failing node gets `error`).
"""

from __future__ import annotations

import math

import networkx as nx

from cnndsl.errors import ShapeError, ShapeMismatch
from cnndsl.ops import OPS
from cnndsl.ops.padding import fmt


def infer_shapes(graph: nx.DiGraph) -> nx.DiGraph:
    for name, node in graph.nodes(data=True):
        op = OPS[node["op"]]
        in_shapes = [graph.nodes[i]["shape"] for i in node["inputs"]]
        try:
            out = op.shape(node["params"], *in_shapes)
            first_in = in_shapes[0] if in_shapes else out
            param_shapes = op.param_shapes(node["params"], first_in)
            node["macs"] = int(op.macs(node["params"], first_in, out))
        except ShapeMismatch as mismatch:
            error = _located(graph, name, node, in_shapes, mismatch)
            node["error"] = error.message
            graph.graph["error"] = error
            raise error from None
        node["shape"] = tuple(out)
        node["param_shapes"] = param_shapes
        node["params_count"] = sum(math.prod(s) for s in param_shapes.values())
        node["buffer_shapes"] = op.buffer_shapes(node["params"], first_in)
    return graph


def _located(graph, name, node, in_shapes, mismatch: ShapeMismatch) -> ShapeError:
    written = node["written"] if node["op"] not in ("Concat", "Add") else "branch merge"
    if len(in_shapes) == 1:
        received = f"input {fmt(in_shapes[0])}"
    else:
        received = "inputs " + ", ".join(fmt(s) for s in in_shapes)
    error = ShapeError(f"{written} '{name}' ({received}): {mismatch.message}", node["span"],
                       hint=mismatch.hint)
    for scope in reversed(node["scopes"]):
        if scope.kind == "macro":
            error.with_note(f"in {scope.label}, called here", scope.span)
        else:
            error.with_note(f"in repetition {scope.index + 1} of {scope.count}", scope.span)
    return error


def totals(graph: nx.DiGraph) -> tuple[int, int]:
    """(parameters, MACs) of the whole network."""
    nodes = graph.nodes.values()
    return sum(n["params_count"] for n in nodes), sum(n["macs"] for n in nodes)
