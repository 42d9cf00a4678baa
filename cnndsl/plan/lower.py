"""Lowering: a checked graph -> a typed Plan (steps, buffers with live intervals, offsets).

The timeline of a training step is the forward steps, the loss, then one backward step per
forward step that leads to the logits, in reverse. Buffers:

- activation: each step's output (and the network's input), from the step writing it to
  its last reader: a later forward step, the loss, or the backward of a step that saved
  it (a conv or FC keeps its input, an activation its output); the network's output lives
  to the end;
- saved: what a fused step keeps for its backward besides its output (the ReLU output
  inside conv+relu+maxpool, a max pool's argmax as int32);
- gradient: dL/d(value), from the first backward step writing it (its last reader's
  backward) to the backward of the step that produced the value;
- workspace: a fused step's interior gradient (a pool's input size) during its backward.

What an op's backward reads is declared by role (`SAVES`), or by a `plan_saves` class
attribute on the op. Parameters and their gradients are persistent and not planned here.
"""

from __future__ import annotations

import math

import networkx as nx

from cnndsl.fields import ITEMSIZE
from cnndsl.ops import OPS
from cnndsl.plan import fusion
from cnndsl.plan.fusion import (
    CONCAT,
    ELEMENTWISE,
    FOLD,
    OTHER,
    POOL,
    SUM,
    VIEW,
    WEIGHTED,
    node_role,
)
from cnndsl.plan.memory import arena_bytes, assign_offsets
from cnndsl.plan.steps import (
    ACTIVATION,
    GRADIENT,
    SAVED,
    WORKSPACE,
    BackwardStep,
    Buffer,
    ConvStep,
    DenseStep,
    ElementwiseStep,
    LossStep,
    MergeStep,
    NormStep,
    OpStep,
    Plan,
    Step,
    ViewStep,
)

#: what the backward of a layer of each role reads: its "input", its "output", or
#: "indices" (an int32 array of the output's size: a max pool's argmax)
SAVES = {WEIGHTED: ("input",), ELEMENTWISE: ("output",), POOL: ("indices",),
         FOLD: ("input",), SUM: (), CONCAT: (), VIEW: (), OTHER: ("input", "output")}
INDEX_ITEMSIZE = 4


def lower(graph: nx.DiGraph, batch: int, train: bool, fuse: bool = True,
          itemsize: int = ITEMSIZE) -> Plan:
    """The plan of one training step (`train`) or one inference pass of `graph` (checked,
    shapes known) at `batch`; `fuse` False: one step per layer; `itemsize`: bytes per
    value (4: float32, 8: the float64 of gradient checks)."""
    steps = _forward_steps(graph, train, fuse)
    if train:
        steps += _loss_and_backward(graph, steps)
    buffers = _Liveness(graph, steps, batch, train, itemsize).buffers()
    offsets = assign_offsets(buffers)
    return Plan(train, batch, tuple(steps), tuple(buffers), offsets,
                arena_bytes(buffers, offsets))


def saves(graph: nx.DiGraph, name: str) -> tuple[str, ...]:
    """What layer `name`'s backward reads (see SAVES); nothing for a Softmax the loss
    fuses."""
    op = OPS[graph.nodes[name]["op"]]
    declared = getattr(op, "plan_saves", None)
    if declared is not None:
        return tuple(declared)
    if op.gives_probabilities and name == graph.graph["output"]:
        return ()
    return SAVES[node_role(graph, name)]


def group_saves(graph: nx.DiGraph, group) -> dict[str, tuple[str, ...]]:
    """What each layer of a fused group's backward reads: `saves`, except that an
    activation a pool takes on its input (fusion.pool_activations) keeps nothing and that
    pool keeps its output too (the activation's mask, read where it won)."""
    folded = fusion.pool_activations(graph, group)
    found = {}
    for name, previous in zip(group, (None, *group)):
        found[name] = () if name in folded else saves(graph, name)
        if previous in folded:
            found[name] = tuple(dict.fromkeys((*found[name], "output")))
    return found


# ---- steps -----------------------------------------------------------------------
def _forward_steps(graph: nx.DiGraph, train: bool, fuse: bool) -> list[Step]:
    return [_step(graph, index, group, train)
            for index, group in enumerate(fusion.fuse(graph, train, fuse))]


def _step(graph: nx.DiGraph, index: int, group: list[str], train: bool) -> Step:
    anchor, last = graph.nodes[group[0]], group[-1]
    common = {"index": index, "layers": tuple(group), "inputs": tuple(anchor["inputs"]),
              "output": last, "shape": tuple(graph.nodes[last]["shape"]),
              "kept": _kept(graph, group) if train else ()}
    role = node_role(graph, group[0])
    tail = tuple(OPS[graph.nodes[n]["op"]].name.lower() for n in group[1:])
    if role == WEIGHTED:
        has_bias = "bias" in anchor.get("param_shapes", {}) or any(
            node_role(graph, n) == FOLD for n in group[1:])
        epilogue = (("bias",) if has_bias else ()) + tail
        step_class = DenseStep if OPS[anchor["op"]].family == "dense" else ConvStep
        return step_class(**common, epilogue=epilogue)
    if role in (SUM, CONCAT):
        return MergeStep(**common, reduction="sum" if role == SUM else "concat",
                         epilogue=tail)
    if role == ELEMENTWISE:
        return ElementwiseStep(**common, ops=(OPS[anchor["op"]].name.lower(), *tail))
    if role == FOLD:
        return NormStep(**common, epilogue=tail)
    if role == VIEW:
        return ViewStep(**common)
    return OpStep(**common, op=anchor["op"])


def _kept(graph: nx.DiGraph, group: list[str]) -> tuple[str, ...]:
    """Training: the fused intermediates of `group` its backward reads (a member saving
    its input or output where that is not the group's input or output)."""
    kept = []
    wanted_by = group_saves(graph, group)
    for position, name in enumerate(group):
        wanted = wanted_by[name]
        if "input" in wanted and position > 0:
            kept.append(group[position - 1])
        if "output" in wanted and position < len(group) - 1:
            kept.append(name)
    return tuple(dict.fromkeys(kept))


def _loss_and_backward(graph: nx.DiGraph, forward: list[Step]) -> list[Step]:
    """The loss step, then a backward step for each forward step upstream of the logits,
    in reverse order."""
    logits = fusion.logits_name(graph)
    needed = set(nx.ancestors(graph, logits)) | {logits}
    index = len(forward)
    steps: list[Step] = [LossStep(index, ("loss",), (logits,), f"d{logits}",
                                  tuple(graph.nodes[logits]["shape"]))]
    for step in reversed(forward):
        if step.output not in needed:
            continue
        index += 1
        steps.append(BackwardStep(index, step.layers, (f"d{step.output}",),
                                  ",".join(f"d{i}" for i in step.inputs),
                                  step.shape, forward=step.index))
    return steps


# ---- buffers ---------------------------------------------------------------------
class _Liveness:
    """Buffers and their live intervals over a plan's timeline."""

    def __init__(self, graph: nx.DiGraph, steps: list[Step], batch: int, train: bool,
                 itemsize: int):
        self.graph, self.steps, self.batch, self.train = graph, steps, batch, train
        self.itemsize = itemsize
        self.forward = [s for s in steps if not isinstance(s, (LossStep, BackwardStep))]
        self.producer = {s.output: s for s in self.forward}
        self.backward_of = {s.forward: s.index for s in steps if isinstance(s, BackwardStep)}
        self.loss = next((s.index for s in steps if isinstance(s, LossStep)), None)
        self.end = len(steps) - 1
        self.input_name = next(n for n in graph.nodes if OPS[graph.nodes[n]["op"]].is_input)

    def root(self, value: str) -> str:
        """The value whose buffer `value` is (a view's output is its input's buffer)."""
        while value in self.producer and isinstance(self.producer[value], ViewStep):
            value = self.producer[value].inputs[0]
        return value

    def shape(self, value: str) -> tuple[int, ...]:
        return (self.batch, *self.graph.nodes[value]["shape"])

    def buffers(self) -> list[Buffer]:
        activations = self._activations()
        found = [Buffer(v, ACTIVATION, self.shape(v), self.itemsize, first, last)
                 for v, (first, last) in activations.items()]
        if self.train:
            found += self._saved() + self._gradients() + self._workspaces()
        return found

    def _activations(self) -> dict[str, tuple[int, int]]:
        """root value -> (first, last) step."""
        spans = {self.input_name: [0, 0]}
        for step in self.forward:
            if not isinstance(step, ViewStep):
                spans[step.output] = [step.index, step.index]
        for step in self.forward:
            for value in step.inputs:
                self._extend(spans, value, step.index)
            if isinstance(step, ViewStep):
                continue
            backward = self.backward_of.get(step.index)
            if backward is None:
                continue
            wanted = group_saves(self.graph, step.layers)
            if "input" in wanted[step.layers[0]]:
                for value in step.inputs:
                    self._extend(spans, value, backward)
            if "output" in wanted[step.layers[-1]]:
                self._extend(spans, step.output, backward)
        if self.loss is not None:
            self._extend(spans, fusion.logits_name(self.graph), self.loss)
        self._extend(spans, self.graph.graph["output"], self.end)
        return {value: (first, last) for value, (first, last) in spans.items()}

    def _extend(self, spans: dict, value: str, step: int) -> None:
        span = spans[self.root(value)]
        span[1] = max(span[1], step)

    def _saved(self) -> list[Buffer]:
        saved = []
        for step in self.forward:
            backward = self.backward_of.get(step.index)
            if backward is None:
                continue
            for value in step.kept:
                saved.append(Buffer(f"{value}:kept", SAVED, self.shape(value), self.itemsize,
                                    step.index, backward))
            for layer in step.layers:
                if "indices" in saves(self.graph, layer):
                    saved.append(Buffer(f"{layer}:indices", SAVED, self.shape(layer),
                                        INDEX_ITEMSIZE, step.index, backward))
        return saved

    def _gradients(self) -> list[Buffer]:
        """One gradient per root value that gets one: written first by the backward of its
        latest reader (or the loss), read last by the backward of its producer."""
        first: dict[str, int] = {}
        logits = self.root(fusion.logits_name(self.graph))
        first[logits] = self.loss
        for step in self.forward:
            backward = self.backward_of.get(step.index)
            if backward is None or isinstance(step, ViewStep):
                continue
            for value in step.inputs:
                root = self.root(value)
                first[root] = min(first.get(root, backward), backward)
        gradients = []
        for root, start in first.items():
            if root == self.input_name:
                continue  # nobody asks for the input's gradient in training
            end = self.backward_of[self.producer[root].index]
            gradients.append(Buffer(f"d{root}", GRADIENT, self.shape(root), self.itemsize,
                                    start, end))
        return gradients

    def _workspaces(self) -> list[Buffer]:
        """A fused step whose interior is larger than its output (a pool epilogue) needs
        the interior gradient during its backward."""
        spaces = []
        for step in self.forward:
            backward = self.backward_of.get(step.index)
            interior = [self.shape(n) for n in step.layers[:-1]]
            if backward is None or not interior:
                continue
            largest = max(interior, key=_elements)
            if _elements(largest) > _elements(self.shape(step.output)):
                spaces.append(Buffer(f"{step.output}:dinterior", WORKSPACE, largest,
                                     self.itemsize, backward, backward))
        return spaces


def _elements(shape) -> int:
    return math.prod(shape)
