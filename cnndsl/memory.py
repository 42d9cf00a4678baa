"""Will a network fit in this machine's memory? Said before allocating, not as MemoryError.

Every size is known once the graph is checked: parameters from the layers' parameter
shapes, activations from their output shapes times the batch. The estimates are deliberately
simple upper bounds of what cnndsl allocates (a training step keeps each layer's output and
its gradient, plus scratch of the same order; an optimizer keeps up to two arrays per
parameter): they exist to refuse a network that cannot possibly run here (`FC(10^12)`,
`Conv(8, 1000000000)`) with its size and the layer responsible, not to predict RSS.
"""

from __future__ import annotations

import math
import os

import networkx as nx

from cnndsl.errors import CnnDslError

#: bytes a training step holds per activation element: the output, its gradient and scratch
#: (im2col patches, masks) of about the same size
TRAIN_FACTOR = 3
#: parameters, their gradients and up to two optimizer arrays (Adam's moments)
TRAIN_WEIGHT_FACTOR = 4


class ResourceError(CnnDslError):
    """The network (at this batch size) needs more memory than this machine has."""


def available_bytes() -> int:
    """Memory this process may still use: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: never refuse


def layer_sizes(graph: nx.DiGraph) -> list[tuple[str, int, int]]:
    """(layer, weight elements, activation elements per example) for every layer."""
    sizes = []
    for name, node in graph.nodes(data=True):
        weights = sum(math.prod(s) for s in node.get("param_shapes", {}).values())
        weights += sum(math.prod(s) for s in node.get("buffer_shapes", {}).values())
        sizes.append((name, weights, math.prod(node["shape"])))
    return sizes


def check_fits(graph: nx.DiGraph, itemsize: int = 4, batch: int = 0,
               train: bool = False) -> None:
    """Raise ResourceError, located at the largest layer, when the weights (and, for
    `batch` > 0, the activations of a batch) cannot fit in the memory available now."""
    sizes = layer_sizes(graph)
    weight_factor = TRAIN_WEIGHT_FACTOR if train else 1
    activation_factor = (TRAIN_FACTOR if train else 1) * batch
    weights = sum(w for _, w, _ in sizes) * itemsize * weight_factor
    activations = sum(a for _, _, a in sizes) * itemsize * activation_factor
    have = available_bytes()
    if weights + activations <= have:
        return
    by_weights = weights >= activations
    name, w, a = max(sizes, key=lambda s: s[1] if by_weights else s[2])
    node = graph.nodes[name]
    what = "weights" if by_weights else f"activations at batch {batch}"
    largest = (w * weight_factor if by_weights else a * activation_factor) * itemsize
    mode = "training" if train else "running"
    parts = (f" ({format_bytes(weights)} for weights, {format_bytes(activations)} for "
             f"activations at batch {batch})") if batch else " for its weights"
    raise ResourceError(
        f"{mode} this network needs {format_bytes(weights + activations)}{parts}, but this "
        f"machine has "
        f"{format_bytes(have)} available; {node['op']} '{name}' alone needs "
        f"{format_bytes(largest)} for its {what}",
        node.get("span"),
        hint="make the layers smaller (fewer units or filters, more downsampling)"
             + (" or the batch smaller (--batch)" if not by_weights else ""))


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
