"""A checked graph as a runnable, differentiable model (LANGUAGE.md §7).

Forward runs the layers in the IR's (topological) order, each op's `forward` returning its
output and what its backward needs. Backward walks the same order reversed, calls each
op's `backward`, and adds up the gradients of nodes that fan out (micrograd's scheme).
Arrays are channels-last as declared: x is (N, *input).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import networkx as nx
import numpy as np

from cnndsl.ops import OPS, Ctx

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_tuned = False


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory instead of returning it to the kernel.

    A training step frees and reallocates the same activation-sized arrays; by default
    glibc trims the heap top and serves arrays above a (moving) threshold with fresh mmaps,
    so every step faults its memory in again, which is expensive on this VM (net A 5.8 ->
    4.4 ms/step, net B 48 -> 43 ms single-threaded). Peak memory is unchanged: only the
    release after a peak is skipped. Process-wide; done once, on Linux/glibc only, and not
    when the user set glibc's own MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if not sys.platform.startswith("linux") or any(
            k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum; larger arrays still use mmap


class Model:
    def __init__(self, graph: nx.DiGraph, seed: int = 0, dtype=np.float32,
                 backend: str = "numba"):
        self.graph = graph
        self.name = graph.graph["name"]
        self.input_shape = tuple(graph.graph["input_shape"])
        self.output_name = graph.graph["output"]
        self.output_shape = tuple(graph.nodes[self.output_name]["shape"])
        self.dtype = np.dtype(dtype)
        _keep_freed_memory()
        self.ctx = Ctx(train=False, rng=np.random.default_rng(seed), backend=backend)
        self.layers = []  # (name, op class, params, geometry, local arrays, inputs)
        self._params: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
        init_rng = np.random.default_rng(seed)
        for name, node in graph.nodes(data=True):
            if node["op"] == "Input":
                self.input_name = name
                continue
            op = OPS[node["op"]]
            in_shapes = [graph.nodes[i]["shape"] for i in node["inputs"]]
            local = {}
            for kind, arrays, store in (
                    ("param", op.init(node["params"], in_shapes[0], init_rng), self._params),
                    ("buffer", op.init_buffers(node["params"], in_shapes[0]), self._buffers)):
                for local_name, array in arrays.items():
                    array = np.ascontiguousarray(array, dtype=self.dtype)
                    local[local_name] = array
                    store[f"{name}.{local_name}"] = array
            geometry = op.geometry(node["params"], in_shapes)
            self.layers.append((name, op, node["params"], geometry, local, node["inputs"]))
        self._consumers = {name: 0 for name in graph.nodes}
        for *_, inputs in self.layers:
            for source in inputs:
                self._consumers[source] += 1
        last = graph.nodes[self.output_name]
        # a network ending in Softmax is trained on the logits before it (fused loss)
        self.logits_name = last["inputs"][0] if last["op"] == "Softmax" else self.output_name
        self._fuse_activations()
        self._saved = None
        self._eval_input = None
        self._logits = None

    def _fuse_activations(self) -> None:
        """The fusion plan, made once: a layer whose op lists an activation in
        `fusable_activations`, read only by a layer of that activation, computes it itself
        (geometry["activation"]); the activation layer becomes a pass-through. Saves a pass
        over the activations each way and one activation-sized array."""
        index = {name: i for i, (name, *_) in enumerate(self.layers)}
        for i, (name, op, params, geometry, local, inputs) in enumerate(self.layers):
            kind = getattr(op, "activation", None)
            if kind is None or len(inputs) != 1 or inputs[0] not in index:
                continue
            source = inputs[0]
            j = index[source]
            producer = self.layers[j]
            if (kind not in getattr(producer[1], "fusable_activations", ())
                    or self._consumers[source] != 1 or source == self.logits_name
                    or not isinstance(producer[3], dict) or "activation" in producer[3]):
                continue
            self.layers[j] = (*producer[:3], {**producer[3], "activation": kind},
                              *producer[4:])
            self.layers[i] = (name, _FusedInto, params, geometry, local, inputs)

    # ---- parameters -------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(a.size for a in self._params.values())

    def parameters(self) -> dict[str, np.ndarray]:
        """name -> array, in source order, weight before bias. The arrays themselves:
        writing into them changes the model."""
        return dict(self._params)

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trained state (BatchNorm running statistics), name -> array."""
        return dict(self._buffers)

    # ---- forward / backward -----------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x: (N, *input) -> (N, *output). `train` uses batch statistics and dropout.

        With `train=False` no backward state is kept (each activation is freed once read),
        only a reference to x: a `backward()` after it runs this forward again, saving."""
        x = self._check_input(x)
        y = self._run(x, train, save=train)
        self._eval_input = None if train else x
        return y

    def _run(self, x: np.ndarray, train: bool, save: bool) -> np.ndarray:
        self.ctx.train = train
        values = {self.input_name: x}
        remaining = dict(self._consumers)
        saved = {}
        self._saved = None
        for name, op, params, geometry, local, inputs in self.layers:
            y, state = op.forward(params, geometry, local, [values[i] for i in inputs],
                                  self.ctx)
            if save:
                saved[name] = state
            values[name] = y
            for source in inputs:  # free what no later layer reads
                remaining[source] -= 1
                if remaining[source] == 0 and source != self.logits_name:
                    del values[source]
        self._saved = saved if save else None
        self._logits = values[self.logits_name]
        return values[self.output_name]

    def backward(self, gy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """After a forward: gradient of the input and of every parameter, given dL/dy."""
        gy = np.ascontiguousarray(gy, dtype=self.dtype)
        if gy.shape[1:] != self.output_shape:
            raise ValueError(f"gy must be (N, {', '.join(map(str, self.output_shape))}), "
                             f"got {gy.shape}")
        return self._backward({self.output_name: gy})

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray, train: bool = True):
        """Mean softmax cross-entropy of integer `labels`, and its gradients.

        Fused and numerically stable: the loss is computed from the logits (the input of
        a final Softmax, or the output itself if there is none). Returns
        (loss, probabilities, grads) where grads is name -> array as `parameters()`."""
        self._run(self._check_input(x), train, save=True)
        self._eval_input = None
        logits = self._logits.reshape(self._logits.shape[0], -1)
        labels = np.asarray(labels, dtype=np.int64)
        loss, dlogits = self.ctx.kernels("loss").softmax_cross_entropy(logits, labels)
        probs = self.ctx.kernels("loss").softmax_forward(logits)
        _, grads = self._backward({self.logits_name: dlogits.reshape(self._logits.shape)},
                                  need_input_grad=False)
        return float(loss), probs, grads

    def _backward(self, seeds: dict, need_input_grad: bool = True):
        if self._saved is None and self._eval_input is not None:
            self._run(self._eval_input, train=False, save=True)  # forward(train=False) kept none
        if self._saved is None:
            raise RuntimeError("backward() needs a forward() first")
        pending = dict(seeds)
        owned = {}  # node -> True once its gradient is an array we allocated (safe to +=)
        grads = {}
        for name, op, params, geometry, local, inputs in reversed(self.layers):
            dy = pending.pop(name, None)
            if dy is None:
                continue  # not on a path to the seeds (e.g. the Softmax behind the logits)
            self.ctx.need_dx = need_input_grad or any(i != self.input_name for i in inputs)
            dxs, dws = op.backward(params, geometry, local, self._saved[name], dy, self.ctx)
            for local_name, grad in dws.items():
                grads[f"{name}.{local_name}"] = grad.astype(self.dtype, copy=False)
            for source, dx in zip(inputs, dxs):
                if dx is None or (source == self.input_name and not need_input_grad):
                    continue
                if source not in pending:
                    pending[source] = dx
                elif owned.get(source):
                    pending[source] += dx
                else:  # fan-out: sum into a new array, never into one an op may share
                    pending[source] = pending[source] + dx
                    owned[source] = True
        ordered = {}
        for name, array in self._params.items():
            grad = grads.get(name)
            ordered[name] = grad if grad is not None else np.zeros_like(array)
        self.ctx.need_dx = True
        return pending.get(self.input_name), ordered

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.name} takes input of shape (N, {expected}), got "
                             f"{tuple(x.shape)}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def __repr__(self) -> str:
        return (f"<cnndsl.Model {self.name}: {self.input_shape} -> {self.output_shape}, "
                f"{self.num_params:,} parameters, {len(self.layers)} layers>")




class _FusedInto:
    """Stands in for an activation layer folded into the layer before it (see
    `Model._fuse_activations`): passes the value and its gradient through."""

    name = "FusedActivation"

    @staticmethod
    def forward(p, g, w, xs, ctx):
        return xs[0], None

    @staticmethod
    def backward(p, g, w, saved, dy, ctx):
        return [dy], {}
