"""`cnndsl check --plan`: the training and inference plans as text, and as JSON."""

from __future__ import annotations

import dataclasses
import textwrap

import networkx as nx

from cnndsl.memory import format_bytes
from cnndsl.ops.padding import fmt
from cnndsl.plan.lower import lower
from cnndsl.plan.steps import GRADIENT, SAVED, BackwardStep, LossStep, Plan

#: columns right-aligned in the tables
NUMERIC_COLUMNS = ("step", "at", "size", "bwd", "grad at")
#: arena lines name at most this many characters of their buffers
SLOT_NAMES_WIDTH = 72


def plans(graph: nx.DiGraph, batch: int) -> tuple[Plan, Plan]:
    """(training plan, inference plan) of `graph` at `batch`."""
    return lower(graph, batch, train=True), lower(graph, batch, train=False)


def format_plans(graph: nx.DiGraph, batch: int) -> str:
    training, inference = plans(graph, batch)
    sections = [_training_steps(training), _inference_steps(inference),
                _fused(training, inference), _arena(training, "training step"),
                _arena(inference, "inference pass"), _peaks(training, inference)]
    return "\n\n".join(sections)


def _training_steps(plan: Plan) -> str:
    forward = plan.forward_steps
    backward = {s.forward: s for s in plan.steps if isinstance(s, BackwardStep)}
    header = ("step", "kind", "layers", "output", "at", "also kept for backward",
              "bwd", "grad at")
    rows = []
    for step in forward:
        back = backward.get(step.index)
        gradient = f"d{step.output}"
        rows.append((str(step.index + 1), step.kind, step.label, fmt(step.shape),
                     _slot(plan, step.output), ", ".join(_saved(plan, step)),
                     str(back.index + 1) if back else "-",
                     _slot(plan, gradient) if gradient in plan.offsets else "-"))
    loss = next(s for s in plan.steps if isinstance(s, LossStep))
    count = len(backward)
    tail = (f"step {loss.index + 1}: loss (softmax cross-entropy on {loss.inputs[0]}); "
            f"steps {loss.index + 2}-{loss.index + 1 + count}: the backward steps, in "
            f"reverse" if count else f"step {loss.index + 1}: loss")
    title = (f"plan of a training step at batch {plan.batch}: {len(forward)} forward "
             f"steps, loss, {count} backward steps")
    return "\n".join([title, *_aligned(header, rows), tail])


def _inference_steps(plan: Plan) -> str:
    header = ("step", "kind", "layers", "output", "at")
    rows = [(str(s.index + 1), s.kind, s.label, fmt(s.shape), _slot(plan, s.output))
            for s in plan.steps]
    title = f"plan of inference at batch {plan.batch}: {len(plan.steps)} steps"
    return "\n".join([title, *_aligned(header, rows)])


def _slot(plan: Plan, value: str) -> str:
    """The arena offset of `value`'s buffer (a view's output is its input's buffer)."""
    steps = {s.output: s for s in plan.forward_steps}
    while value not in plan.offsets and value in steps and steps[value].inputs:
        value = steps[value].inputs[0]
    return _offset(plan, plan.offsets[value]) if value in plan.offsets else "-"


def _offset(plan: Plan, offset: int) -> str:
    """An arena offset: in bytes in an arena under 100 KB, else in whole KB (1000 bytes),
    which tells apart any two buffers of 1 KB or more: 384, 803K, 13,665K."""
    if plan.arena < 100_000:
        return f"{offset:,}"
    return f"{offset / 1000:,.0f}K"


def _saved(plan: Plan, step) -> list[str]:
    """What the step keeps for its backward beyond its inputs and output."""
    prefixes = tuple(f"{layer}:" for layer in step.layers)
    return [f"{b.name.replace(':kept', '').replace(':indices', ' argmax')}"
            f"@{_slot_of(plan, b.name)}"
            for b in plan.buffers if b.kind == SAVED and b.name.startswith(prefixes)]


def _slot_of(plan: Plan, buffer: str) -> str:
    return _offset(plan, plan.offsets[buffer])


def _fused(training: Plan, inference: Plan) -> str:
    lines = []
    for name, plan in (("training", training), ("inference", inference)):
        groups = plan.groups
        covered = sum(len(g) for g in groups)
        lines.append(f"fused groups, {name}: {len(groups)}, covering {covered} of "
                     f"{sum(len(s.layers) for s in plan.forward_steps)} layers")
    only_inference = [g for g in inference.groups if g not in training.groups]
    if only_inference:
        lines += textwrap.wrap(
            "at inference only (batchnorm folded into the weights): "
            + ", ".join("+".join(g) for g in only_inference),
            width=100, initial_indent="  ", subsequent_indent="    ",
            break_on_hyphens=False)
    return "\n".join(lines)


def _arena(plan: Plan, what: str) -> str:
    """The arena by offset: each offset where buffers start, the largest of them, and
    their names in step order (buffers starting at one offset reuse the same memory)."""
    header = ("at", "size", "buffers (activation; *saved, d gradient, ~workspace)")
    members: dict[int, list] = {}
    for buffer in sorted(plan.buffers, key=lambda b: (b.first, b.name)):
        members.setdefault(plan.offsets[buffer.name], []).append(buffer)
    rows = [(_offset(plan, offset), format_bytes(max(b.nbytes for b in found)),
             _clipped(", ".join(_buffer_text(b) for b in found)))
            for offset, found in sorted(members.items())]
    title = (f"arena of the {what} ({format_bytes(plan.arena)}): {len(plan.buffers)} "
             f"buffers at {len(members)} offsets")
    return "\n".join([title, *_aligned(header, rows)])


def _buffer_text(buffer) -> str:
    if buffer.kind == SAVED:
        return "*" + buffer.name.split(":")[0] + (" argmax" if "indices" in buffer.name
                                                  else "")
    if buffer.kind == GRADIENT:
        return buffer.name
    if buffer.kind == "workspace":
        return "~" + buffer.name.split(":")[0]
    return buffer.name


def _clipped(text: str) -> str:
    if len(text) <= SLOT_NAMES_WIDTH:
        return text
    cut = text[:SLOT_NAMES_WIDTH].rsplit(", ", 1)[0]
    more = text.count(", ") - cut.count(", ")
    return f"{cut}, +{more} more"


def _peaks(training: Plan, inference: Plan) -> str:
    title = (f"planned peak at batch {training.batch} (activations, saved tensors and "
             "gradients; not parameters):")
    lines = [title]
    width = max(len(format_bytes(p.planned_bytes)) for p in (training, inference))
    for name, plan in (("training step", training), ("inference", inference)):
        saved = 1 - plan.planned_bytes / plan.unplanned_bytes if plan.unplanned_bytes else 0
        lines.append(f"  {name:<15}{format_bytes(plan.planned_bytes):>{width}}  "
                     f"({format_bytes(plan.unplanned_bytes)} without reuse, "
                     f"{saved:.0%} less)")
    return "\n".join(lines)


def _aligned(header: tuple, rows: list[tuple]) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    right = {i for i, title in enumerate(header) if title in NUMERIC_COLUMNS}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), *(line(row) for row in rows)]


def plan_json(graph: nx.DiGraph, batch: int) -> dict:
    """The `plan` object of `check --json --plan`: both plans, every step and buffer."""
    training, inference = plans(graph, batch)
    return {"batch": batch, "training": _plan_json(training),
            "inference": _plan_json(inference)}


def _plan_json(plan: Plan) -> dict:
    return {
        "steps": [{"kind": s.kind, **_jsonable(dataclasses.asdict(s))} for s in plan.steps],
        "buffers": [{**_jsonable(dataclasses.asdict(b)), "bytes": b.nbytes,
                     "offset": plan.offsets[b.name]} for b in plan.buffers],
        "planned_bytes": plan.planned_bytes,
        "unplanned_bytes": plan.unplanned_bytes,
    }


def _jsonable(record: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}
