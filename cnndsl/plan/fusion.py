"""Which layers run as one step: roles of the op classes and the fusion patterns over them.

A pattern never names an op: it is a table keyed by *roles*, and a role is read from the op
class's existing attributes (`weight_layer`, `family`, `is_input`, `gives_probabilities`,
its base class), or from a `plan_role` class attribute where an op wants to say it itself.
A group starts at an anchor; each following layer joins while it is the only reader of the
group's output so far and its role is accepted by the anchor's epilogue grammar:

    weighted (Conv, FC...)   [fold?] [elementwise*] [pool?]   bias + BN + activation + pool
    sum merge (`+`)          [elementwise*] [pool?]            Add -> ReLU
    elementwise              [elementwise*] [pool?]            chains of activations
    affine norm (BatchNorm)  [elementwise*] [pool?]            BN -> ReLU when not folded

`fold` (a per-channel affine normalisation with running statistics: BatchNorm) joins only
at inference, where it is a fixed scale and shift that `fold_batchnorm` moves into the
weights; in training it needs batch statistics and stays a step of its own.
"""

from __future__ import annotations

import itertools

import networkx as nx

from cnndsl.ops import OPS, Op
from cnndsl.ops.activations import Elementwise
from cnndsl.ops.pool import WindowPool

#: roles a layer can have in a plan
INPUT, WEIGHTED, ELEMENTWISE, POOL, FOLD, SUM, CONCAT, VIEW, OTHER = (
    "input", "weighted", "elementwise", "pool", "fold", "sum", "concat", "view", "other")

#: the epilogue grammar of each anchor role: (role accepted, repeatable) stages in order;
#: a FOLD stage is skipped in training
EPILOGUES: dict[str, tuple[tuple[str, bool], ...]] = {
    WEIGHTED: ((FOLD, False), (ELEMENTWISE, True), (POOL, False)),
    SUM: ((ELEMENTWISE, True), (POOL, False)),
    ELEMENTWISE: ((ELEMENTWISE, True), (POOL, False)),
    FOLD: ((ELEMENTWISE, True), (POOL, False)),
}


def role(op: type[Op], in_shapes=(), out_shape=()) -> str:
    """The op class's role in a plan: its `plan_role` if it declares one, else read from
    its attributes (shapes tell a `+` from a concatenation and a pass-through from a
    reshape that copies)."""
    declared = getattr(op, "plan_role", None)
    if declared is not None:
        return declared
    if op.is_input:
        return INPUT
    if op.weight_layer:
        return WEIGHTED
    if issubclass(op, Elementwise) and not op.gives_probabilities:
        return ELEMENTWISE  # pointwise: y[i] = f(x[i])
    if issubclass(op, WindowPool):
        return POOL
    if _has_running_statistics(op):
        return FOLD
    same_shapes = all(tuple(s) == tuple(out_shape) for s in in_shapes)
    if op.family == "merge":
        return SUM if same_shapes else CONCAT
    if op.family == "shape" and same_shapes and len(in_shapes) == 1:
        return VIEW  # passes its input on (Identity): no step of its own, no buffer
    return OTHER


def _has_running_statistics(op: type[Op]) -> bool:
    """A per-channel normalisation whose inference is a fixed affine map (BatchNorm): it
    keeps running mean and variance buffers per channel."""
    if op.family != "norm":
        return False
    try:
        buffers = op.buffer_shapes(None, (1,))
    except (AttributeError, TypeError, IndexError, KeyError, ValueError):
        # an op whose buffer_shapes needs real params: not this kind
        return False
    return {"running_mean", "running_var"} <= set(buffers)


def node_role(graph: nx.DiGraph, name: str) -> str:
    node = graph.nodes[name]
    in_shapes = [graph.nodes[i]["shape"] for i in node.get("inputs", ())]
    return role(OPS[node["op"]], in_shapes, node["shape"])


def consumers(graph: nx.DiGraph) -> dict[str, list[str]]:
    """node -> the nodes reading it, once per input slot, in graph order."""
    readers = {name: [] for name in graph.nodes}
    for name, node in graph.nodes(data=True):
        for source in node.get("inputs", ()):
            readers[source].append(name)
    return readers


def logits_name(graph: nx.DiGraph) -> str:
    """The layer training reads (the input of a final Softmax, which the loss fuses)."""
    last = graph.graph["output"]
    node = graph.nodes[last]
    return node["inputs"][0] if OPS[node["op"]].gives_probabilities else last


def fuse(graph: nx.DiGraph, train: bool, enabled: bool = True) -> list[list[str]]:
    """The checked graph cut into groups of layers, each run as one step, in topological
    order (the Input is not in any group; a view is a group of its own). `enabled` False:
    one layer per group (the unfused plan the tests compare the fused one with).

    A layer joins the group before it only if it reads nothing else, it is the only
    reader of the group's output (fan-out blocks fusion: the other reader needs that
    value), and that output is neither the network's output nor the logits."""
    readers = consumers(graph)
    protected = {graph.graph["output"], logits_name(graph)}
    grouped: set[str] = set()
    groups = []
    for name in graph.nodes:
        if name in grouped or node_role(graph, name) == INPUT:
            continue
        group = [name]
        stages = [stage for stage in EPILOGUES.get(node_role(graph, name), ())
                  if enabled and not (train and stage[0] == FOLD)]
        stage = 0
        while True:
            tail = group[-1]
            if tail in protected or len(readers[tail]) != 1:
                break
            follower = readers[tail][0]
            if len(graph.nodes[follower].get("inputs", ())) != 1:
                break
            stage = _accepting_stage(stages, stage, node_role(graph, follower))
            if stage is None:
                break
            group.append(follower)
        grouped.update(group)
        groups.append(group)
    return groups


def _accepting_stage(stages, start: int, follower_role: str) -> int | None:
    """The index of the first stage at or after `start` that takes `follower_role`, and
    where the next follower starts looking (the same stage if it repeats); None: none."""
    for index in range(start, len(stages)):
        accepted, repeats = stages[index]
        if accepted == follower_role:
            return index if repeats else index + 1
    return None


def pool_activations(graph: nx.DiGraph, group) -> list[str]:
    """The activations of `group` that the pool right after them takes on its input (its
    op's `fusable_input_activations`: a max pool computes max(ReLU(x)) as ReLU(max(x)) in
    its own pass), so the layer before keeps no ReLU mask."""
    folded = []
    for name, follower in itertools.pairwise(group):
        kind = getattr(OPS[graph.nodes[name]["op"]], "activation", None)
        if kind is not None and kind in getattr(
                OPS[graph.nodes[follower]["op"]], "fusable_input_activations", ()):
            folded.append(name)
    return folded


def fold_batchnorm(weight, bias, gamma, beta, mean, var, eps: float):
    """BatchNorm at inference folded into the conv or FC layer before it.

    weight: F×(C/g)×K... (conv) or F×I (FC), PyTorch's layouts; bias: (F,) or None;
    gamma, beta, mean, var: (F,). BN(conv(x)) = s * (w*x + b - mean) + beta with
    s = gamma / sqrt(var + eps), so the folded layer has w' = w * s (per output channel,
    axis 0) and b' = s * (b - mean) + beta. Returns (w', b') in the weight's dtype."""
    import numpy as np

    scale = np.asarray(gamma) / np.sqrt(np.asarray(var) + eps)
    w = np.asarray(weight)
    folded_w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b = np.zeros_like(scale) if bias is None else np.asarray(bias)
    folded_b = scale * (b - np.asarray(mean)) + np.asarray(beta)
    return folded_w.astype(w.dtype, copy=False), folded_b.astype(w.dtype, copy=False)
