"""What each layer sees and holds: receptive field, jump, resolved padding, activation
memory, and the network's depth. A pass over the shape-checked IR that needs no data.

Per spatial axis of the network's input, with the layer's Window (cnndsl.ops.padding) of
extent k and stride s, from its input's receptive field r and jump j (the distance, in input
pixels, between neighbouring positions of a feature map):

    r' = r + (k - 1) * j        j' = j * s

starting at r = j = 1 at the input — the standard recurrence (Araujo et al., "Computing
receptive fields of convolutional neural networks", Distill 2019). Dilation is in k (a 3x3
with dilation 4 spans 9), a transposed conv has s = 1/stride, and a layer that reads its
whole input (FC, Flatten, a global pool) has k = its input's size, so an FC after a 7x7 map
sees everything the map saw. Receptive fields are theoretical: they may exceed the input
(ResNet-18's last conv: 435 on a 224 input) and count padding positions. Where branches
merge, each axis takes the largest field and jump of the branches (a residual block's main
path, not its shortcut).

Depth, as papers quote it, counts weight layers (op class `weight_layer`: conv and FC) on
the longest path from the input to the output: VGG-16 = 16, ResNet-18 = 18 (the projection
shortcuts are not on it).
"""

from __future__ import annotations

import math
from fractions import Fraction

import networkx as nx

from cnndsl.ops import OPS

#: bytes per activation element: cnndsl runs in float32
ITEMSIZE = 4


def annotate_node(graph: nx.DiGraph, name: str) -> None:
    """Set `padding`, `receptive_field`, `jump`, `memory` and `depth` on a node whose
    shape (and whose inputs' annotations) are known, and `windowed`: whether it slides a
    window over its input (a conv or pool; not pointwise, not reading it whole)."""
    node = graph.nodes[name]
    node["memory"] = math.prod(node["shape"]) * ITEMSIZE
    if OPS[node["op"]].is_input:
        rank = max(len(node["shape"]) - 1, 0)
        node["receptive_field"], node["jump"] = (1,) * rank, (1,) * rank
        node["padding"], node["depth"], node["windowed"] = (), 0, False
        return
    sources = [graph.nodes[i] for i in node["inputs"]]
    field = tuple(max(axis) for axis in zip(*(s["receptive_field"] for s in sources)))
    jump = tuple(max(axis) for axis in zip(*(s["jump"] for s in sources)))
    in_shapes = [s["shape"] for s in sources]
    rank = max(len(in_shapes[0]) - 1, 0)  # spatial axes of this layer's input
    op = OPS[node["op"]]
    window = op.window(node["params"], in_shapes) if rank else None
    if window is not None and len(window.extent) == len(field):
        # whole input pixels: after a transposed conv (a jump of 1/2) a window may span a
        # fraction of a pixel more, which still reads that pixel (an upper bound, exact
        # without fractional jumps)
        field = tuple(math.ceil(r + (k - 1) * j)
                      for r, k, j in zip(field, window.extent, jump))
        jump = tuple(_exact(j * s) for j, s in zip(jump, window.stride))
        node["padding"] = window.padding
    else:
        node["padding"] = tuple((0, 0) for _ in range(rank))
    node["windowed"] = window is not None and window.extent != tuple(in_shapes[0][:-1])
    node["receptive_field"], node["jump"] = field, jump
    node["depth"] = max(s["depth"] for s in sources) + (1 if op.weight_layer else 0)


def _exact(value):
    """An int where the value is whole (jumps are fractions only after a ConvT)."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


def network_depth(graph: nx.DiGraph) -> int:
    """Weight layers on the longest input-to-output path (see the module docstring)."""
    return graph.nodes[graph.graph["output"]]["depth"]


def activation_bytes(graph: nx.DiGraph) -> int:
    """Bytes of every layer's output for one example in a forward pass (the input too)."""
    return sum(node["memory"] for node in graph.nodes.values() if "memory" in node)


def training_bytes(graph: nx.DiGraph, batch: int) -> int:
    """Activation memory of a training step at `batch`, as torchinfo's "forward/backward
    pass size" counts it: every layer's output and its gradient (the input excluded)."""
    outputs = sum(node["memory"] for node in graph.nodes.values()
                  if "memory" in node and not OPS[node["op"]].is_input)
    return 2 * outputs * batch


def as_number(value):
    """A jump for JSON: an int, or a float after a transposed conv (1/2 -> 0.5)."""
    return value if isinstance(value, int) else float(value)


def format_jump(value) -> str:
    return str(value) if isinstance(value, int) else str(Fraction(value))
