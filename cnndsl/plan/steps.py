"""The typed steps, buffers and plan of cnndsl.plan: frozen dataclasses, one per kind.

A step covers one fused group of IR layers (`layers`, anchor first) and writes one value,
named after its last layer. Shapes are per example, channels-last as declared (a Buffer's
shape has the batch in front: N×H×W×C). `index` is the step's place in the plan's timeline:
forward steps, then (training) the loss and the backward steps in reverse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Step:
    index: int
    layers: tuple[str, ...]
    #: values read (outputs of earlier steps, or the network's input)
    inputs: tuple[str, ...]
    #: the value written: the last layer's output
    output: str
    shape: tuple[int, ...]
    #: training: fused intermediates the backward still reads, so they stay in memory
    kept: tuple[str, ...] = ()
    kind: ClassVar[str] = "op"

    @property
    def label(self) -> str:
        return "+".join(self.layers)


@dataclass(frozen=True)
class ConvStep(Step):
    """A convolution with its epilogue applied in one pass over its output: `epilogue`
    names what follows the multiply-accumulate, in order (bias, batchnorm folded at
    inference, activations, a pool)."""

    epilogue: tuple[str, ...] = ()
    kind: ClassVar[str] = "conv"


@dataclass(frozen=True)
class DenseStep(Step):
    """A fully connected layer with its epilogue (bias, batchnorm folded, activations)."""

    epilogue: tuple[str, ...] = ()
    kind: ClassVar[str] = "dense"


@dataclass(frozen=True)
class MergeStep(Step):
    """`+` ("sum", with an elementwise epilogue such as ReLU) or a concatenation."""

    reduction: str = "sum"
    epilogue: tuple[str, ...] = ()
    kind: ClassVar[str] = "merge"


@dataclass(frozen=True)
class ElementwiseStep(Step):
    """A chain of pointwise ops computed in one pass: y = f_k(...f_1(x))."""

    ops: tuple[str, ...] = ()
    kind: ClassVar[str] = "eltwise"


@dataclass(frozen=True)
class NormStep(Step):
    """A normalisation with running statistics kept as a step (training: batch
    statistics), with an elementwise epilogue."""

    epilogue: tuple[str, ...] = ()
    kind: ClassVar[str] = "norm"


@dataclass(frozen=True)
class ViewStep(Step):
    """A pass-through (Identity): its output is its input's buffer; nothing is computed."""

    kind: ClassVar[str] = "view"


@dataclass(frozen=True)
class OpStep(Step):
    """Any other layer, run by its op class as one step (pools, concat-free reshapes,
    local norms, dropout...)."""

    op: str = ""
    kind: ClassVar[str] = "op"


@dataclass(frozen=True)
class LossStep(Step):
    """Training: softmax cross-entropy on the logits, seeding their gradient."""

    kind: ClassVar[str] = "loss"


@dataclass(frozen=True)
class BackwardStep(Step):
    """Training: the backward of forward step `forward` (same layers, reversed), reading
    the gradient of its output and what it saved, writing its inputs' gradients."""

    forward: int = 0
    kind: ClassVar[str] = "backward"


#: kinds of Buffer
ACTIVATION, SAVED, GRADIENT, WORKSPACE = "activation", "saved", "gradient", "workspace"


@dataclass(frozen=True)
class Buffer:
    """One array of a training step or an inference pass, live from step `first` to step
    `last` inclusive (two buffers may share memory only if those intervals do not meet).
    shape: (N, *shape), channels-last."""

    name: str
    kind: str
    shape: tuple[int, ...]
    itemsize: int
    first: int
    last: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Plan:
    """A lowered network at one batch size: steps in timeline order, buffers, and each
    buffer's byte offset in one arena of `arena` bytes (cnndsl.plan.memory)."""

    train: bool
    batch: int
    steps: tuple[Step, ...]
    buffers: tuple[Buffer, ...]
    offsets: Mapping[str, int]
    arena: int

    @property
    def forward_steps(self) -> list[Step]:
        return [s for s in self.steps if not isinstance(s, (LossStep, BackwardStep))]

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """The fused groups: layers run as one step (two or more)."""
        return [s.layers for s in self.forward_steps if len(s.layers) > 1]

    @property
    def planned_bytes(self) -> int:
        """Peak memory of the plan's buffers: its arena."""
        return self.arena

    @property
    def unplanned_bytes(self) -> int:
        """Every buffer allocated on its own (aligned alike), none reused."""
        from cnndsl.plan.memory import footprint

        return sum(footprint(b.nbytes) for b in self.buffers)

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)
