"""IR -> graphviz diagram (`cnndsl render`).

One node per layer, labelled with its op and key arguments and coloured by family; every
edge carries the tensor shape it transports; repetitions (`×k`) and macro calls
(`block(64)`) are clusters. `collapse=True` draws each repetition once, with its `×k`
badge. A graph whose shape check failed is drawn up to the error: the failing layer in
red with the message beside it, the layers after it grey.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import networkx as nx

from cnndsl.ops import OPS
from cnndsl.ops.args import Size

FONT = "Helvetica"
FAMILY_COLOURS = {
    "conv": "#cfe2f3", "pool": "#d9ead3", "dense": "#fce5cd", "activation": "#fff2cc",
    "norm": "#ead1dc", "merge": "#eeeeee", "io": "#d0e0e3", "shape": "#f3f3f3",
    "other": "#ffffff",
}
ERROR_RED = "#cc0000"
# the diagram's own nodes: the front end refuses labels that begin with '__', so no layer
# can clash with them
OUTPUT_NODE, ERROR_NODE = "__output__", "__error__"
# graphviz lays out a thousand boxes in about a second, and slows down faster than linearly
MAX_DRAWN = 1000


def times(text: str) -> str:
    """3x3 -> 3×3, only between digits (so 'max' stays 'max')."""
    return re.sub(r"(?<=\d)x(?=\d)", "×", text)


def shape_text(shape) -> str:
    return "×".join(str(s) for s in shape)


def node_label(node: dict, rank: int = 0) -> str:
    """`Conv 32 3×3/2`: the op and its key arguments in short; sizes per spatial axis."""
    return times(OPS[node["op"]].diagram_label(_per_axis(node["params"], rank)))


def _per_axis(params, rank: int):
    """Size arguments written as one number become one per axis (3 -> 3x3 in 2-D)."""
    if rank < 2 or not dataclasses.is_dataclass(params):
        return params
    changes = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(f.metadata.get("kind"), Size) and isinstance(value, int) and \
                f.name != "output_pad":
            changes[f.name] = (value,) * rank
    return dataclasses.replace(params, **changes)


@dataclass
class _Cluster:
    key: str
    label: str
    kind: str
    nodes: list = field(default_factory=list)
    children: dict = field(default_factory=dict)


def to_dot(graph: nx.DiGraph, collapse: bool = False, rankdir: str = "TB",
           tooltips: dict[str, str] | None = None) -> graphviz.Digraph:
    """Build the diagram of an IR graph (shape-checked, or checked up to an error).
    `tooltips` maps layer names (and OUTPUT_NODE) to the text a browser shows when the
    pointer rests on the layer's box in the SVG (several lines allowed); a layer without
    one shows its name.
    GraphError when it would have more than MAX_DRAWN boxes."""
    shown = _representatives(graph) if collapse else {n: n for n in graph.nodes}
    _check_drawable(graph, shown, collapse)
    dot = graphviz.Digraph(graph.graph.get("name", "network"))
    dot.attr(rankdir=rankdir, fontname=FONT, nodesep="0.3", ranksep="0.35",
             label=_title(graph), labelloc="t", fontsize="16")
    dot.attr("node", fontname=FONT, fontsize="11", style="rounded,filled", shape="box",
             penwidth="1", color="#555555", margin="0.12,0.05", height="0.3")
    dot.attr("edge", fontname=FONT, fontsize="9", color="#555555", fontcolor="#333333",
             arrowsize="0.6")

    root = _Cluster("", "", "root")
    for name, node in graph.nodes(data=True):
        if shown[name] != name:
            continue
        where = root
        for scope in node["scopes"]:
            where = where.children.setdefault(
                scope.id, _Cluster(scope.id, _scope_label(scope, collapse), scope.kind))
        where.nodes.append(name)
    _emit(dot, root, graph, tooltips or {})

    drawn_edges = set()
    for source, target in graph.edges:
        edge = (shown[source], shown[target])
        if edge[0] == edge[1] or edge in drawn_edges or _backwards(graph, source, target,
                                                                    shown):
            continue
        drawn_edges.add(edge)
        shape = graph.nodes[source].get("shape")
        dot.edge(*edge, label=f" {shape_text(shape)} " if shape else None,
                 style=None if shape else "dashed")
    output = graph.graph["output"]
    if "shape" in graph.nodes[output]:
        extra = {"tooltip": _escaped(tooltips[OUTPUT_NODE])} if OUTPUT_NODE in (
            tooltips or {}) else {}
        dot.node(OUTPUT_NODE, f"output {shape_text(graph.nodes[output]['shape'])}",
                 shape="box", style="rounded,filled", fillcolor=FAMILY_COLOURS["io"], **extra)
        dot.edge(shown[output], OUTPUT_NODE)
    _draw_error(dot, graph)
    return dot


def _check_drawable(graph: nx.DiGraph, shown: dict, collapse: bool) -> None:
    from cnndsl.errors import GraphError

    drawn = [name for name in graph.nodes if shown[name] == name]
    if len(drawn) <= MAX_DRAWN:
        return
    hint = ("draw each repetition once with --collapse" if not collapse else
            "use repetitions ('* n') for the repeated parts, or draw a smaller network")
    raise GraphError(f"the diagram would have {len(drawn):,} layers; at most {MAX_DRAWN:,} "
                     "are drawn", graph.nodes[drawn[MAX_DRAWN]]["span"], hint=hint)


def _title(graph) -> str:
    if "error" in graph.graph:
        return f"{graph.graph.get('name', 'network')} (shape error)"
    params = sum(n.get("params_count", 0) for n in graph.nodes.values())
    return f"{graph.graph.get('name', 'network')} — {params:,} parameters"


def _scope_label(scope, collapse: bool) -> str:
    if scope.kind == "repeat":
        return f"{scope.label} (drawn once)" if collapse and scope.count > 1 else scope.label
    return scope.label


def _emit(dot, cluster: _Cluster, graph, tooltips: dict) -> None:
    for name in cluster.nodes:
        _emit_node(dot, name, graph.nodes[name], _rank(graph, name),
                   tooltips.get(name, name))
    for child in cluster.children.values():
        with dot.subgraph(name=f"cluster_{child.key}") as sub:
            repeat = child.kind == "repeat"
            sub.attr(label=child.label, fontname=FONT + (" Bold" if repeat else ""),
                     fontsize="13" if repeat else "11", style="rounded,dashed" if repeat
                     else "rounded", color="#3d85c6" if repeat else "#999999",
                     fontcolor="#3d85c6" if repeat else "#666666", labeljust="l")
            _emit(sub, child, graph, tooltips)


def _rank(graph, name: str) -> int:
    inputs = graph.nodes[name]["inputs"]
    shape = graph.nodes[inputs[0]].get("shape") if inputs else None
    return len(shape) - 1 if shape else 0


def _emit_node(dot, name: str, node: dict, rank: int, tooltip: str) -> None:
    op = OPS[node["op"]]
    attrs = {"fillcolor": FAMILY_COLOURS.get(op.family, "#ffffff"),
             "tooltip": _escaped(tooltip)}
    attrs.update(op.diagram_style)
    label = node_label(node, rank)
    if op.diagram_names_layer:
        label = f"{label}\n{node['label'] or name}"
    if "error" in node:
        attrs.update(color=ERROR_RED, penwidth="2.5", fontcolor=ERROR_RED, fillcolor="#f4cccc")
    elif "shape" not in node:
        attrs.update(style="rounded,dashed", fillcolor="#ffffff", fontcolor="#999999",
                     color="#bbbbbb")
    dot.node(name, _two_sizes(label), **attrs)


def _escaped(text: str) -> str:
    """`text` as a DOT string graphviz shows literally. Graphviz reads escapes twice in a
    tooltip (`\\\\N` would become the node's name), so a backslash is written as four;
    quotes are escaped here because the Python library leaves a quote after a backslash
    alone; newlines become `\\n`, which the SVG carries as line breaks of the tooltip."""
    text = text.replace("\\", "\\" * 4).replace('"', '\\"').replace("\n", "\\n")
    return graphviz.nohtml(text)


def _two_sizes(label: str) -> str:
    """First line as is, the layer's name below in small grey (an HTML-like label)."""
    if "\n" not in label:
        return label
    head, name = label.split("\n", 1)
    return (f"<{_html(head)}<BR/><FONT POINT-SIZE=\"8\" COLOR=\"#666666\">{_html(name)}"
            "</FONT>>")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _draw_error(dot, graph) -> None:
    error = graph.graph.get("error")
    if error is None:
        return
    failing = next(n for n, d in graph.nodes(data=True) if "error" in d)
    message = _wrap(times(error.message), 60)
    dot.node(ERROR_NODE, message, shape="note", style="filled", fillcolor="#fff0f0",
             color=ERROR_RED, fontcolor=ERROR_RED, fontsize="10")
    dot.edge(failing, ERROR_NODE, style="dashed", color=ERROR_RED, arrowhead="none")


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\\l".join(lines) + "\\l"


# ---- files ----------------------------------------------------------------------------------

@dataclass
class RenderOutcome:
    written: str
    error: object = None  # the ShapeError the diagram stops at, if any
    text: str = ""
    missing_dot: bool = False


def render_to_file(path: str, bindings: dict, out: str, fmt: str, collapse: bool = False,
                   rankdir: str = "TB") -> RenderOutcome:
    """Check `path` and draw it to `out`. Syntax and name errors raise (nothing written);
    a shape error still draws the network up to it and is returned in the outcome."""
    from cnndsl.errors import ShapeError
    from cnndsl.frontend import nesting_guard
    from cnndsl.ir import build_ir
    from cnndsl.parser import parse
    from cnndsl.shapes import infer_shapes
    from cnndsl.source import read_source

    text = read_source(path)
    error = None
    with nesting_guard():
        graph = build_ir(parse(text), bindings, text)
        try:
            infer_shapes(graph)
        except ShapeError as shape_error:
            error = shape_error
        dot = to_dot(graph, collapse=collapse, rankdir=rankdir)
    if fmt == "dot":
        _write_atomically(out, dot.source.encode("utf-8"))
        return RenderOutcome(out, error, text)
    try:
        data = dot.pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        source_path = str(Path(out).with_suffix(".dot"))
        _write_atomically(source_path, dot.source.encode("utf-8"))
        return RenderOutcome(source_path, error, text, missing_dot=True)
    _write_atomically(out, data)
    return RenderOutcome(out, error, text)


def _write_atomically(path: str, data: bytes) -> None:
    """Through the one atomic writer weights use: a unique temporary file beside `path`,
    renamed when complete, removed on any failure (a full disk leaves no debris), and a
    clear error saying why."""
    from cnndsl.checkpoint import write_atomically

    write_atomically(path, lambda handle: handle.write(data), what="the diagram")


# ---- --collapse: draw every repetition once -----------------------------------------------

def _representatives(graph: nx.DiGraph) -> dict[str, str]:
    """Map each node to the node drawn for it: itself, or the node at the same position in
    iteration 0 of the outermost repetition it is a later iteration of."""
    members: dict[tuple[str, int], list[str]] = {}
    positions: dict[tuple[str, str], int] = {}  # (scope id, node) -> place in its iteration
    for name, node in graph.nodes(data=True):
        for scope in node["scopes"]:
            if scope.kind == "repeat":
                group = members.setdefault((scope.id, scope.index), [])
                positions[(scope.id, name)] = len(group)
                group.append(name)

    found: dict[str, str] = {}

    def representative(name: str) -> str:
        if name not in found:
            found[name] = name
            for scope in graph.nodes[name]["scopes"]:
                if scope.kind == "repeat" and scope.index > 0:
                    first = members[(scope.id, 0)]
                    position = positions[(scope.id, name)]
                    found[name] = representative(first[min(position, len(first) - 1)])
                    break
        return found[name]

    return {name: representative(name) for name in graph.nodes}


def _backwards(graph, source, target, shown) -> bool:
    """An edge between two iterations of one collapsed repetition (drawn as the badge)."""
    if shown[source] == source and shown[target] == target:
        return False
    source_scopes = {(s.id, s.index) for s in graph.nodes[source]["scopes"]
                     if s.kind == "repeat"}
    for scope in graph.nodes[target]["scopes"]:
        if scope.kind == "repeat" and (scope.id, scope.index) not in source_scopes and any(
                sid == scope.id for sid, _ in source_scopes):
            return True
    return False
