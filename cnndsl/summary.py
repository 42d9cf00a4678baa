"""`cnndsl check` output: the layer table (torchinfo-like) and the JSON of docs/language.md."""

from __future__ import annotations

import dataclasses

import networkx as nx

from cnndsl.errors import CnnDslError
from cnndsl.fields import (
    ITEMSIZE,
    activation_bytes,
    as_number,
    format_jump,
    training_bytes,
)
from cnndsl.memory import format_bytes
from cnndsl.ops import OPS
from cnndsl.ops.padding import fmt
from cnndsl.shapes import totals

#: the batch `check` sizes a training step's activations for, unless the file's train
#: block or --batch says otherwise (the trainer's default)
DEFAULT_BATCH = 64


def layer_rows(graph: nx.DiGraph) -> list[dict]:
    """One dict per layer (the input excluded), in source order: every layer that was
    checked and, after a shape error, the failing one (with its `error`)."""
    rows = []
    for name, node in graph.nodes(data=True):
        if OPS[node["op"]].is_input:
            continue
        if "error" in node:
            rows.append({"name": name, "op": node["op"], "error": node["error"]})
            break
        if "shape" not in node:
            break
        rows.append({"name": name, "op": node["op"], "shape": list(node["shape"]),
                     "params": node["params_count"], "macs": node["macs"],
                     "padding": [list(sides) for sides in node["padding"]],
                     "receptive_field": list(node["receptive_field"]),
                     "jump": [as_number(j) for j in node["jump"]],
                     "memory": node["memory"]})
    return rows


def training_batch(graph: nx.DiGraph, batch: int | None = None) -> int:
    """--batch, else the file's `train { batch = ... }`, else the trainer's default."""
    if batch is not None:
        return batch
    return (graph.graph.get("train_settings") or {}).get("batch", DEFAULT_BATCH)


def to_json(graph: nx.DiGraph, batch: int | None = None) -> dict:
    params, macs = totals(graph)
    batch = training_batch(graph, batch)
    return {
        "name": graph.graph["name"],
        "input": list(graph.graph["input_shape"]),
        "output": list(graph.nodes[graph.graph["output"]]["shape"]),
        "params": params,
        "macs": macs,
        "depth": graph.graph["depth"],
        "memory": {"forward_per_example": activation_bytes(graph), "batch": batch,
                   "training_step": training_bytes(graph, batch),
                   "params": params * ITEMSIZE},
        "layers": layer_rows(graph),
    }


def error_json(error: CnnDslError) -> dict:
    """`check --json` of a file with an error: the error, located, and after a shape error
    the network's name, input and the layers checked before it (then the failing one)."""
    span = error.span
    failing = getattr(error, "graph", None)
    described = {
        "kind": type(error).__name__,
        "message": error.message,
        "file": error.filename,
        "line": span.line if span else None,
        "col": span.col if span else None,
        "end_line": span.end_line if span else None,
        "end_col": span.end_col if span else None,
        "hint": error.hint,
        "notes": [{"message": note, "line": s.line if s else None, "col": s.col if s else None}
                  for note, s in error.notes],
        "layer": None,
    }
    if failing is None:
        return {"error": described, "layers": []}
    rows = layer_rows(failing)
    described["layer"] = rows[-1]["name"] if rows and "error" in rows[-1] else None
    return {"name": failing.graph["name"],
            "input": list(failing.graph["input_shape"]),
            "error": described, "layers": rows}


def op_text(node: dict) -> str:
    """`Conv(32, 3x3/2)`: the op with its arguments as resolved (defaults shown)."""
    return OPS[node["op"]].table_text(node["params"])


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which optional columns the table shows (`check --rf`, `--memory`)."""

    rf: bool = False  # resolved padding and jump (the receptive field is always shown)
    memory: bool = False  # activation bytes per example


def _row(name: str, node: dict, columns: Columns) -> tuple:
    cells = [name, op_text(node), fmt(node["shape"]), _per_axis(node["receptive_field"])]
    if columns.rf:
        padding = padding_text(node["padding"]) if node["windowed"] else ""
        cells += [padding, _per_axis(node["jump"], format_jump)]
    if columns.memory:
        cells.append(format_bytes(node["memory"]))
    return (*cells, f"{node['params_count']:,}", f"{node['macs']:,}")


def _header(columns: Columns) -> tuple:
    cells = ["layer", "op", "output shape", "RF"]
    if columns.rf:
        cells += ["padding", "jump"]
    if columns.memory:
        cells.append("memory")
    return (*cells, "params", "MACs")


def _per_axis(values, show=str) -> str:
    """(7, 7) -> 7x7; nothing (a flat network) -> -."""
    return "x".join(show(v) for v in values) or "-"


def padding_text(sides) -> str:
    """Once when every axis is padded alike, before+after when the sides differ:
    ((1, 1), (1, 1)) -> 1, ((0, 1), (0, 1)) -> 0+1, ((1, 1), (2, 2)) -> 1x2."""
    each = [str(before) if before == after else f"{before}+{after}" for before, after in sides]
    return each[0] if len(set(each)) == 1 else "x".join(each)


def _aligned(header: tuple, rows: list[tuple]) -> list[str]:
    """Header and rows as lines, text left-aligned and counts right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows] if i < len(r))
              for i in range(len(header))]
    right = [False] * (len(header) - 2) + [True, True]

    def line(cells):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_table(graph: nx.DiGraph, columns: Columns = Columns(),
                 batch: int | None = None) -> str:
    header = _header(columns)
    rows = [_row(name, node, columns) for name, node in graph.nodes(data=True)]
    head, *body = _aligned(header, rows)
    rule = "-" * max(len(line) for line in [head, *body])
    params, macs = totals(graph)
    output = graph.nodes[graph.graph["output"]]["shape"]
    batch = training_batch(graph, batch)
    title = f"network {graph.graph['name']}: input {fmt(graph.graph['input_shape'])} -> " \
            f"output {fmt(output)}, {len(rows) - 1} layers"
    lines = [title, rule, head, rule, *body, rule,
             f"total params: {params:,}",
             f"total MACs:   {macs:,} ({human_count(macs)} per example)",
             f"depth:        {graph.graph['depth']} (conv and FC layers on the longest path)",
             f"activations:  {format_bytes(activation_bytes(graph))} per example (forward)",
             (f"              {format_bytes(training_bytes(graph, batch))} for a training step "
             f"at batch {batch} (outputs and their gradients)")]
    lines += bare_call_notes(graph)
    bindings = graph.graph.get("bindings") or {}
    if bindings:
        shown = ", ".join(f"{k} = {v}" for k, v in bindings.items())
        lines.append(f"bindings:     {shown}")
    return "\n".join(lines)


def format_partial_table(graph: nx.DiGraph, columns: Columns = Columns()) -> str:
    """The table of a network whose shape check failed: the layers that checked, then the
    failing one marked (the error itself follows on stderr)."""
    header = _header(columns)
    rows, failing = [], None
    for name, node in graph.nodes(data=True):
        if "error" in node:
            failing = name
            rows.append((name, op_text(node), "shape error"))
            break
        if "shape" not in node:
            break
        rows.append(_row(name, node, columns))
    head, *body = _aligned(header, rows)
    if failing is not None:
        body[-1] += "   <-- the error below"
    rule = "-" * max(len(line) for line in [head, *body])
    title = (f"network {graph.graph['name']}: input "
             f"{fmt(graph.graph['input_shape'])}, stopped at '{failing}' "
             f"({_count(len(rows) - 2, 'layer')} checked before it)")
    return "\n".join([title, rule, head, rule, *body, rule])


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def human_count(count: int) -> str:
    """18,767,242 -> 18.77 M."""
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
