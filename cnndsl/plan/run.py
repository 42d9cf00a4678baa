"""Running a Plan: its steps in order, every value between steps in one arena.

`PlanRunner(model, plan)` allocates the plan's arena once (one byte array of `plan.arena`
bytes) and makes every Buffer a view of it at its offset; a value written by a step lives
in its buffer's bytes until its last reader, and then those bytes belong to the next buffer
placed there. A step runs its fused group through the layers' op classes (the anchor
computes a fusable activation itself, a pool that takes a ReLU on its input folds it in:
the `fusable_activations` / `fusable_input_activations` of the op classes; at inference
a conv computes the max pool after it, `fusable_pools`); its output is
written into its buffer, the gradients of its inputs into theirs (added up where a value
fans out). What an op keeps inside a step (its im2col scratch, a pool's argmax, a
BatchNorm's normalised input) is the op's own array, not the arena's.

`poison=True` overwrites every buffer's bytes with NaN (-1 for int32) after its last step,
and the whole arena before each pass: a plan that gave two live values the same bytes, or
an op whose backward reads a value the plan thought dead, then yields NaN or a wrong
gradient instead of passing unnoticed (tests/test_plan_run.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnndsl.ops import Ctx, graph_layer, with_geometry, with_pool
from cnndsl.plan import fusion
from cnndsl.plan.memory import ALIGNMENT
from cnndsl.plan.steps import (
    BackwardStep,
    LossStep,
    Plan,
    ViewStep,
)

#: the byte every poisoned buffer is filled with: NaN as float32/float64, -1 as int32
POISON = 0xFF


class PlanRunner:
    """Runs `plan` (cnndsl.plan.lower of the model's graph) on `model`'s parameters."""

    def __init__(self, model, plan: Plan, poison: bool = False):
        self.model, self.plan, self.poison = model, plan, poison
        graph = model.graph
        self.input_name = model.input_name
        if any(b.itemsize != model.dtype.itemsize for b in plan.buffers
               if not b.name.endswith(":indices")):
            raise ValueError(f"the plan's values are not {model.dtype} "
                             "(lower it with itemsize=model.dtype.itemsize)")
        self._arena = _aligned_bytes(plan.arena)
        self._views = {b.name: self._view(b) for b in plan.buffers}
        # a view's output is its input's buffer: each value's root, followed once here
        views = {s.output: s.inputs[0] for s in plan.forward_steps if isinstance(s, ViewStep)}
        self._roots = {}
        for value in views:
            root = value
            while root in views:
                root = views[root]
            self._roots[value] = root
        self._dying = {}  # step index -> buffers whose last step it is
        for b in plan.buffers:
            self._dying.setdefault(b.last, []).append(b.name)
        self.ctx = Ctx(train=plan.train, rng=model.ctx.rng, backend=model.backend,
                       saves=plan.train)
        self._work = {name: {} for name in graph if name != self.input_name}
        self._members = {s.index: _members(model, s, plan.train)
                         for s in plan.forward_steps}
        self._states: dict[int, list] = {}

    # ---- buffers ------------------------------------------------------------------
    def _view(self, buffer) -> np.ndarray:
        # a max pool's argmax is int32; every other buffer holds the model's dtype
        dtype = np.int32 if buffer.name.endswith(":indices") else self.model.dtype
        count = int(np.prod(buffer.shape))
        offset = self.plan.offsets[buffer.name]
        nbytes = count * np.dtype(dtype).itemsize
        return self._arena[offset:offset + nbytes].view(dtype).reshape(buffer.shape)

    def root(self, value: str) -> str:
        """The value whose buffer `value` is (a view's output is its input's)."""
        return self._roots.get(value, value)

    def value(self, name: str) -> np.ndarray:
        return self._views[self.root(name)]

    def gradient(self, name: str) -> np.ndarray:
        return self._views[f"d{self.root(name)}"]

    def _finish(self, index: int) -> None:
        """After step `index`: poison the buffers it was the last step of (not after the
        plan's last step: the caller still reads the output)."""
        if self.poison and index < len(self.plan.steps) - 1:
            for name in self._dying.get(index, ()):
                view = self._views[name]
                view.view(np.uint8).reshape(-1)[:] = POISON

    # ---- passes -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network's output for x: (batch, *input), a copy (the arena is reused)."""
        self._run_forward(x)
        return self.value(self.model.output_name).copy()

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray):
        """A training plan's step: (mean cross-entropy, probabilities, name -> gradient),
        as Model.loss_and_grads."""
        if not self.plan.train:
            raise ValueError("loss_and_grads needs a plan lowered with train=True")
        self._run_forward(x)
        grads: dict[str, np.ndarray] = {}
        written: set[str] = set()
        loss = probs = None
        for step in self.plan.steps:
            if isinstance(step, LossStep):
                loss, probs = self._loss(step, labels)
                written.add(f"d{self.root(step.inputs[0])}")
            elif isinstance(step, BackwardStep):
                self._backward(step, grads, written)
            else:
                continue
            self._finish(step.index)
        return loss, probs, self.model._summed([grads])

    def _run_forward(self, x: np.ndarray) -> None:
        x = self.model._check_input(x)
        if len(x) != self.plan.batch:
            raise ValueError(f"the plan is for batches of {self.plan.batch}, got {len(x)}")
        if self.poison:
            self._arena[:] = POISON
        np.copyto(self.value(self.input_name), x)
        self._states = {}
        for step in self.plan.forward_steps:
            if not isinstance(step, ViewStep):
                self._forward(step)
            self._finish(step.index)

    def _forward(self, step) -> None:
        values = [self.value(name) for name in step.inputs]
        states = []
        out = self.value(step.output)
        members = self._members[step.index]
        for position, (layer, op) in enumerate(members):
            self.ctx.work = self._work[layer.name]
            # the last layer may write straight into the step's buffer
            self.ctx.out = out if position == len(members) - 1 else None
            y, state = op.forward(layer.params, layer.geometry, layer.weights, values,
                                  self.ctx)
            values = [y]
            states.append(state)
        self.ctx.out = None
        if values[0].ctypes.data != out.ctypes.data:  # the op wrote an array of its own
            np.copyto(out, values[0].reshape(out.shape))
        if self.plan.train:
            self._states[step.index] = states

    def _loss(self, step, labels):
        logits = self.value(step.inputs[0]).reshape(self.plan.batch, -1)
        kernels = self.ctx.kernels("loss")
        labels = np.asarray(labels, dtype=np.int64)
        loss, dlogits = kernels.softmax_cross_entropy(logits, labels)
        if self.root(step.inputs[0]) != self.input_name:  # else no layer to train
            target = self.gradient(step.inputs[0])
            np.copyto(target, dlogits.reshape(target.shape))
        return float(loss), kernels.softmax_forward(logits)

    def _backward(self, step: BackwardStep, grads: dict, written: set) -> None:
        forward = self.plan.steps[step.forward]
        if isinstance(forward, ViewStep):
            return  # its output's gradient is its input's buffer
        dy = self.gradient(forward.output)
        members = self._members[forward.index]
        states = self._states[forward.index]
        self.ctx.need_dx = any(i != self.input_name for i in forward.inputs)
        dxs = [dy]
        for (layer, op), state in zip(reversed(members), reversed(states)):
            self.ctx.work = self._work[layer.name]
            dxs, dws = op.backward(layer.params, layer.geometry, layer.weights, state,
                                   dxs[0], self.ctx)
            for local_name, grad in dws.items():
                grads[f"{layer.name}.{local_name}"] = grad.astype(self.model.dtype,
                                                                   copy=False)
        self.ctx.need_dx = True
        for source, dx in zip(forward.inputs, dxs):
            if dx is None or self.root(source) == self.input_name:
                continue
            target = self.gradient(source)
            key = f"d{self.root(source)}"
            if key in written:
                target += dx.reshape(target.shape)
            else:
                np.copyto(target, dx.reshape(target.shape))
                written.add(key)


def _members(model, step, train: bool) -> list:
    """(Layer, op class) per layer of `step` that computes something of its own: a ReLU a
    pool takes on its input (fusion.pool_activations) is folded into the pool, one the
    layer before computes itself (its op's `fusable_activations`) into that layer, and at
    inference a BatchNorm into the conv or FC before it (fusion.fold_batchnorm, on copies
    of the weights: the model's own are not touched) and a max pool into the conv before
    it (cnndsl.ops.with_pool)."""
    graph = model.graph
    into_pool = fusion.pool_activations(graph, step.layers)
    members = []
    pending_input_activation = None
    for name in step.layers:
        layer = graph_layer(graph, name, model._arrays[name])
        kind = getattr(layer.kind, "activation", None)
        if name in into_pool:
            pending_input_activation = kind
            continue
        if pending_input_activation is not None:
            layer = with_geometry(layer, input_activation=pending_input_activation)
            pending_input_activation = None
        elif members and kind is not None and kind in getattr(
                members[-1][1], "fusable_activations", ()) \
                and "activation" not in (members[-1][0].geometry or {}):
            members[-1] = (with_geometry(members[-1][0], activation=kind), members[-1][1])
            continue
        elif (not train and members and fusion.node_role(graph, name) == fusion.FOLD
              and getattr(members[-1][1], "folds_batchnorm", False)):
            members[-1] = (_folded(members[-1][0], layer), members[-1][1])
            continue
        members.append((layer, layer.kind))
    if not train and len(members) >= 2:  # a conv computing the max pool after it
        fused = with_pool(members[-2][0], members[-1][0])
        if fused is not None:
            members[-2:] = [(fused, fused.kind)]
    return members


def _folded(layer, norm):
    """`layer` (a conv or FC whose op sets `folds_batchnorm`: its weight's first axis is
    the output channel) with the BatchNorm `norm` after it folded into a copy of its
    weight and bias."""
    w = norm.weights
    weight, bias = fusion.fold_batchnorm(
        layer.weights["weight"], layer.weights.get("bias"), w["weight"], w["bias"],
        w["running_mean"], w["running_var"], norm.params.eps)
    params = dataclasses.replace(layer.params, bias=True)
    return dataclasses.replace(layer, params=params,
                               weights={**layer.weights, "weight": weight, "bias": bias})


def _aligned_bytes(nbytes: int) -> np.ndarray:
    """A uint8 array of `nbytes` whose first byte is ALIGNMENT-aligned (so is every
    buffer: offsets are multiples of ALIGNMENT)."""
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes]
