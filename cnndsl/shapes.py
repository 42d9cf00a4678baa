"""Shape inference and checking: a pass over the IR that needs no data.

Walks the nodes in (topological) insertion order and annotates each with
    shape         output shape without the batch axis, in declared order (spatial..., C)
    param_shapes  {name: shape} in PyTorch layouts; `params` their element count
    buffer_shapes {name: shape} (BatchNorm running statistics)
    macs          multiply-accumulates per example, as torchinfo counts them
    padding, receptive_field, jump, memory, depth   see cnndsl.fields
A layer that cannot take its input raises ShapeError naming it, what it received and
what it needed; nodes before it keep their annotations, so a diagram can show the
network up to the error (the failing node gets `error`).
"""

from __future__ import annotations

import math

import networkx as nx

from cnndsl.errors import ShapeError, ShapeMismatch
from cnndsl.fields import annotate_node, network_depth
from cnndsl.ops import OPS
from cnndsl.ops.padding import fmt

# no machine holds a layer beyond these (4 TiB in float32); refusing them here keeps the
# arithmetic of later passes small and says why before anything is allocated
MAX_ELEMENTS = 2**40


def infer_shapes(graph: nx.DiGraph) -> nx.DiGraph:
    # a repeated layer meets the same shapes again: compute each (op, params, inputs) once
    known: dict = {}
    for name, node in graph.nodes(data=True):
        in_shapes = [graph.nodes[i]["shape"] for i in node["inputs"]]
        key = (node["op"], node["params"], tuple(in_shapes))
        try:
            found = known.get(key)
        except TypeError:  # unhashable params: nothing to share
            key, found = None, None
        if found is None:
            try:
                found = _infer(OPS[node["op"]], node["params"], in_shapes)
            except ShapeMismatch as mismatch:
                error = _located(graph, name, node, in_shapes, mismatch)
                node["error"] = error.message
                graph.graph["error"] = error
                error.graph = graph  # checked up to here: `check` shows the table so far
                raise error from None
            if key is not None:
                known[key] = found
        out, param_shapes, count, buffer_shapes, macs = found
        node["macs"] = macs
        node["shape"] = out
        node["param_shapes"] = dict(param_shapes)
        node["params_count"] = count
        node["buffer_shapes"] = dict(buffer_shapes)
        annotate_node(graph, name)
    graph.graph["depth"] = network_depth(graph)
    return graph


def _infer(op, params, in_shapes: list) -> tuple:
    """(shape, param_shapes, parameter count, buffer_shapes, MACs) of one layer."""
    out = op.shape(params, *in_shapes)
    first_in = in_shapes[0] if in_shapes else out
    param_shapes = op.param_shapes(params, first_in)
    macs = int(op.macs(params, first_in, out))
    _check_size(out, param_shapes)
    count = sum(math.prod(s) for s in param_shapes.values())
    return tuple(out), param_shapes, count, op.buffer_shapes(params, first_in), macs


def _check_size(out, param_shapes) -> None:
    elements = math.prod(out)
    if elements > MAX_ELEMENTS:
        raise ShapeMismatch(f"its output {fmt(tuple(out))} has {elements:,} elements per "
                            f"example (at most 2^40), {_bytes(elements)} in float32",
                            hint="use fewer channels, a larger stride or more pooling")
    weights = sum(math.prod(s) for s in param_shapes.values())
    if weights > MAX_ELEMENTS:
        raise ShapeMismatch(f"it has {weights:,} weights (at most 2^40), {_bytes(weights)} in "
                            "float32", hint="use fewer units or channels, or pool first")


def _bytes(elements: int) -> str:
    size = elements * 4
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError


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
