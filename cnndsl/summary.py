"""`cnndsl check` output: the layer table (torchinfo-like) and the JSON of docs/language.md."""

from __future__ import annotations

import dataclasses

import networkx as nx

from cnndsl.ops import OPS
from cnndsl.ops.padding import fmt
from cnndsl.shapes import totals


def layer_rows(graph: nx.DiGraph) -> list[dict]:
    """One dict per layer (the input excluded), in source order."""
    rows = []
    for name, node in graph.nodes(data=True):
        if node["op"] == "Input":
            continue
        rows.append({"name": name, "op": node["op"], "shape": list(node["shape"]),
                     "params": node["params_count"], "macs": node["macs"]})
    return rows


def to_json(graph: nx.DiGraph) -> dict:
    params, macs = totals(graph)
    return {
        "name": graph.graph["name"],
        "input": list(graph.graph["input_shape"]),
        "output": list(graph.nodes[graph.graph["output"]]["shape"]),
        "params": params,
        "macs": macs,
        "layers": layer_rows(graph),
    }


def op_text(node: dict) -> str:
    """`Conv(32, 3x3/2)`: the op with its arguments as resolved (defaults shown)."""
    args = OPS[node["op"]].describe(node["params"]) if node["op"] != "Input" else ""
    name = node["op"] if node["op"] != "Input" else "Input"
    if node["op"] == "Concat":
        return "{ | } concat"
    if node["op"] == "Add":
        return "{ + } sum"
    return f"{name}({args})" if args else name


def format_table(graph: nx.DiGraph) -> str:
    header = ("layer", "op", "output shape", "params", "MACs")
    rows = []
    for name, node in graph.nodes(data=True):
        rows.append((name, op_text(node), fmt(node["shape"]), f"{node['params_count']:,}",
                     f"{node['macs']:,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = (False, False, False, True, True)

    def line(cells):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    params, macs = totals(graph)
    output = graph.nodes[graph.graph["output"]]["shape"]
    title = f"network {graph.graph['name']}: input {fmt(graph.graph['input_shape'])} -> " \
            f"output {fmt(output)}, {len(rows) - 1} layers"
    lines = [title, rule, line(header), rule, *(line(r) for r in rows), rule,
             f"total params: {params:,}",
             f"total MACs:   {macs:,} ({_human(macs)} per example)"]
    lines += bare_call_notes(graph)
    bindings = graph.graph.get("bindings") or {}
    if bindings:
        shown = ", ".join(f"{k} = {v}" for k, v in bindings.items())
        lines.append(f"bindings:     {shown}")
    return "\n".join(lines)


def bare_call_notes(graph: nx.DiGraph) -> list[str]:
    """Say which defaults a bare `Conv`, `FC` or `Pool` took (once per spelling)."""
    notes, seen = [], []
    for name, node in graph.nodes(data=True):
        params = node["params"]
        fields = dataclasses.fields(params)
        explain = OPS[node["op"]].explain_bare
        if node.get("bare") and explain and node["written"] not in seen:
            seen.append(node["written"])
            values = ", ".join(f"{f.name}={_value(getattr(params, f.name))}" for f in fields)
            notes.append(f"note: bare {node['written']} (first: {name}) means "
                         f"{node['op']}({values})")
    return notes


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "size"
    return fmt(value) if isinstance(value, tuple) else str(value)


def _human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def dump_ir(graph: nx.DiGraph) -> str:
    """A debug listing of every node and its attributes (`cnndsl check --dump-ir`)."""
    lines = []
    for name, node in graph.nodes(data=True):
        scopes = " / ".join(f"{s.id}:{s.label}[{s.index}]" for s in node["scopes"]) or "-"
        lines.append(f"{name}: {node['op']} {node['params']!r}")
        lines.append(f"    inputs={node['inputs']} span={node['span']} scopes={scopes}")
        if "shape" in node:
            lines.append(f"    shape={node['shape']} params={node['param_shapes']} "
                         f"buffers={node['buffer_shapes']} macs={node['macs']}")
    return "\n".join(lines)
