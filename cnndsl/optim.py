"""Optimizers that update a model's parameters in place (PyTorch's update rules).

`step(grads)` takes the name -> gradient dict of `Model.backward` / `loss_and_grads`.
State (momentum buffers, Adam moments) is a name -> array dict, so it can be saved and
restored exactly (`state_dict` / `load_state_dict`). Loading checks every array's shape
and dtype against its parameter before changing anything: never a broadcast or a cast.
"""

from __future__ import annotations

import numpy as np


class StateError(ValueError):
    """Optimizer state that does not fit the parameters (the first difference)."""


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "a scalar"


def _checked_state(state: dict, slots: dict) -> int:
    """The step count of `state`, after checking it holds an array like each of `slots`
    (key -> the array it will be copied into). KeyError when none of the slots is there
    (state of another optimizer), StateError naming the first other difference."""
    steps = state["steps"]
    if not (isinstance(steps, np.ndarray) and steps.shape == () and steps.dtype.kind in "iu"
            and int(steps) >= 0):
        raise StateError(f"'steps' must be a whole number >= 0, got {steps!r:.60}")
    if slots and not any(key in state for key in slots):
        raise KeyError(next(iter(slots)))
    for key, slot in slots.items():
        if key not in state:
            raise StateError(f"it has no '{key}'")
        array = state[key]
        if not isinstance(array, np.ndarray) or array.shape != slot.shape:
            shape = _shape(array.shape) if isinstance(array, np.ndarray) else type(array)
            raise StateError(f"'{key}' is {shape} there but {_shape(slot.shape)} here")
        if array.dtype != slot.dtype:
            raise StateError(f"'{key}' is {array.dtype} there but {slot.dtype} here")
    return int(steps)


class SGD:
    """p -= lr * v, v = momentum * v + (g + weight_decay * p); Nesterov uses g + momentum*v."""

    def __init__(self, params: dict, lr: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self.velocity = {name: np.zeros_like(p) for name, p in params.items()} \
            if momentum else {}
        self.steps = 0

    def step(self, grads: dict) -> None:
        for name, p in self.params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self.velocity[name]
                if self.steps == 0:
                    v[...] = g  # PyTorch starts the buffer at the first gradient
                else:
                    v *= self.momentum
                    v += g
                g = g + self.momentum * v if self.nesterov else v
            p -= self.lr * g
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": np.array(self.steps),
                **{f"velocity/{name}": v for name, v in self.velocity.items()}}

    def load_state_dict(self, state: dict) -> None:
        slots = {f"velocity/{name}": v for name, v in self.velocity.items()}
        self.steps = _checked_state(state, slots)
        for key, slot in slots.items():
            slot[...] = state[key]


class Adam:
    """Adam, or AdamW with `decoupled=True` (weight decay applied to p, not to g)."""

    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.steps = 0

    def step(self, grads: dict) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.steps
        correction2 = 1 - beta2**self.steps
        for name, p in self.params.items():
            g = grads[name]
            if self.weight_decay and self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p
            m, v = self.m[name], self.v[name]
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            denominator = np.sqrt(v / correction2) + self.eps
            p -= (self.lr / correction1) * m / denominator

    def state_dict(self) -> dict:
        return {"steps": np.array(self.steps), **{f"m/{n}": a for n, a in self.m.items()},
                **{f"v/{n}": a for n, a in self.v.items()}}

    def load_state_dict(self, state: dict) -> None:
        slots = {**{f"m/{n}": a for n, a in self.m.items()},
                 **{f"v/{n}": a for n, a in self.v.items()}}
        self.steps = _checked_state(state, slots)
        for key, slot in slots.items():
            slot[...] = state[key]
