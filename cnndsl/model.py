"""A checked graph as a runnable, differentiable model (docs/language.md).

Arrays are channels-last as declared: x is (N, *input). `_Runner` does the work (forward
and reverse-mode backward over the layers); `Model` owns the parameters and, when it is
exact, cuts a batch into one shard per thread (cnndsl.parallel) and adds the shards'
gradients up.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import dataclasses
import os
import sys
from functools import partial

import networkx as nx
import numpy as np

from cnndsl.memory import check_fits
from cnndsl.ops import OPS, Ctx, Layer, graph_layer, with_geometry, with_pool
from cnndsl.parallel import SMALL_NET_MACS, ShardGroup, run_sharded, shard_bounds, shard_count

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
    """A compiled network. Parameters (and buffers) live here; running them is a `_Runner`'s
    job: one for whole batches and, for data-parallel steps (cnndsl.parallel), one more per
    extra thread, all reading the same parameter arrays."""

    def __init__(self, graph: nx.DiGraph, seed: int = 0, dtype=np.float32,
                 backend: str = "numba"):
        self.graph = graph
        self.name = graph.graph["name"]
        self.input_shape = tuple(graph.graph["input_shape"])
        self.output_name = graph.graph["output"]
        self.output_shape = tuple(graph.nodes[self.output_name]["shape"])
        self.dtype = np.dtype(dtype)
        self.backend = backend
        #: cut batches across threads when that is exact (see `_shards`); False: never
        self.data_parallel = True
        # a network whose weights cannot fit is refused with its size, not a MemoryError
        check_fits(graph, self.dtype.itemsize)
        _keep_freed_memory()
        self._params: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._arrays: dict[str, dict] = {}  # layer -> its parameters and buffers by local name
        init_rng = np.random.default_rng(seed)
        for name, node in graph.nodes(data=True):
            if OPS[node["op"]].is_input:
                self.input_name = name
                continue
            op = OPS[node["op"]]
            in_shape = graph.nodes[node["inputs"][0]]["shape"]
            local = self._arrays[name] = {}
            for arrays, store in ((op.init(node["params"], in_shape, init_rng), self._params),
                                  (op.init_buffers(node["params"], in_shape), self._buffers)):
                for local_name, array in arrays.items():
                    array = np.ascontiguousarray(array, dtype=self.dtype)
                    local[local_name] = array
                    store[f"{name}.{local_name}"] = array
        self._consumers = {name: 0 for name in graph.nodes}
        for name, node in graph.nodes(data=True):
            for source in node.get("inputs", ()):
                self._consumers[source] += 1
        last = graph.nodes[self.output_name]
        # a network ending in Softmax is trained on the logits before it (fused loss)
        self.logits_name = last["inputs"][0] if OPS[last["op"]].gives_probabilities else self.output_name
        self._small = sum(node.get("macs", 0) for _, node in graph.nodes(data=True)) \
            <= SMALL_NET_MACS
        self._runners = [_Runner(self, np.random.default_rng(seed))]
        self._last_shards = None  # [(runner, start, end)] of the last forward that saved
        self._eval_input = None

    @property
    def ctx(self) -> Ctx:
        """The main runner's context (its `rng` draws the dropout masks)."""
        return self._runners[0].ctx

    @property
    def layers(self) -> list[Layer]:
        """The run plan: one cnndsl.ops.Layer per layer (not the Input), in execution
        order, activations fused (see `make_layers`)."""
        return self._runners[0].layers

    def make_layers(self, fuse: bool = True, inference: bool = False) -> list[Layer]:
        """An execution plan: a cnndsl.ops.Layer per layer (read-only geometry; the
        weights are the model's arrays) with activations fused in (unless `fuse` is
        False: then every layer computes its own output, as `features` and the exporters
        need). `inference`: a plan for forwards no backward follows, with max pools
        fused into the convs before them (`_fuse_pools`)."""
        layers = [graph_layer(self.graph, name, self._arrays[name]) for name in self.graph
                  if name != self.input_name]
        if fuse:
            self._fuse_activations(layers)
            if inference:
                self._fuse_pools(layers)
        return layers

    def _fuse_pools(self, layers: list[Layer]) -> None:
        """Inference: a pool read from a layer that can compute it (`cnndsl.ops.with_pool`:
        a conv and a max pool), through nothing but the ReLU the pool took, is computed
        by that layer in the same pass; the pool and the ReLU become pass-throughs. Only
        where each value on the way has that one reader and is not the logits or output."""
        index = {layer.name: i for i, layer in enumerate(layers)}
        protected = (self.logits_name, self.output_name)
        for i, pool in enumerate(layers):
            if pool.fused_into or len(pool.inputs) != 1 or pool.inputs[0] not in index:
                continue
            chain = [index[pool.inputs[0]]]  # the producer, after the ReLU the pool took
            while (layers[chain[-1]].fused_into == pool.name
                   and layers[chain[-1]].inputs[0] in index):
                chain.append(index[layers[chain[-1]].inputs[0]])
            producer = layers[chain[-1]]
            if any(self._consumers[layers[j].name] != 1 or layers[j].name in protected
                   for j in chain):
                continue
            fused = with_pool(producer, pool)
            if fused is None:
                continue
            layers[chain[-1]] = fused
            for j in [*chain[:-1], i]:
                layers[j] = dataclasses.replace(layers[j], fused_into=producer.name)

    def _fuse_activations(self, layers: list[Layer]) -> None:
        """The fusion plan: a layer whose op lists an activation in `fusable_activations`,
        read only by a layer of that activation, computes it itself
        (geometry["activation"]); the activation layer becomes a pass-through
        (`fused_into` names the layer computing it). Saves a pass over the activations
        each way and one activation-sized array.

        First, an activation read only by a pool whose op lists it in
        `fusable_input_activations` is taken by that pool (geometry["input_activation"]:
        a max pool computes max(ReLU(x)) as ReLU(max(x)) in its own pass, and the layer
        before then keeps no ReLU mask), as cnndsl.plan's steps do."""
        index = {layer.name: i for i, layer in enumerate(layers)}
        readers = {layer.name: [] for layer in layers}
        for i, layer in enumerate(layers):
            for source in layer.inputs:
                if source in readers:
                    readers[source].append(i)
        for i, layer in enumerate(layers):
            kind = getattr(layer.kind, "activation", None)
            if kind is None or len(layer.inputs) != 1 or layer.inputs[0] not in index:
                continue
            reader = readers[layer.name]
            if (len(reader) == 1 and layer.name not in (self.logits_name, self.output_name)
                    and kind in getattr(layers[reader[0]].kind,
                                        "fusable_input_activations", ())):
                pool = layers[reader[0]]
                layers[reader[0]] = with_geometry(pool, input_activation=kind)
                layers[i] = dataclasses.replace(layer, fused_into=pool.name)
                continue
            source = layer.inputs[0]
            j = index[source]
            producer = layers[j]
            if (kind not in getattr(producer.kind, "fusable_activations", ())
                    or self._consumers[source] != 1 or source == self.logits_name
                    or "activation" in (producer.geometry or {})):
                continue
            layers[j] = with_geometry(producer, activation=kind)
            layers[i] = dataclasses.replace(layer, fused_into=source)

    def sandbox(self) -> Model:
        """A model that runs like this one and shares its parameter arrays (which no step
        writes) but nothing a step does write: its own buffers, runners, random state and
        saved activations. For a run that must leave this model as it was (cnndsl.warmup
        traces a step on one)."""
        twin = copy.copy(self)
        twin._buffers = {name: array.copy() for name, array in self._buffers.items()}
        twin._arrays = {layer: {local: twin._buffers.get(f"{layer}.{local}", array)
                                for local, array in arrays.items()}
                        for layer, arrays in self._arrays.items()}
        twin._runners = [_Runner(twin, np.random.default_rng(0))]
        twin._last_shards = twin._eval_input = None
        return twin

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
        outputs = self._forward_shards(x, train, save=train)
        self._eval_input = None if train else x
        return _joined(outputs)

    def features(self, x: np.ndarray, layers=None) -> dict[str, np.ndarray]:
        """Layer outputs for x: (N, *input), in inference mode: name -> (N, *layer shape),
        channels-last. Every layer in execution order (the input is not a layer), or only
        the names in `layers`, in that order; an unknown name is a ValueError.

        Each is the layer's own output even where the run plan fuses: a Conv followed by
        a ReLU gives the Conv's output, before the ReLU. Runs its own unfused plan on the
        whole batch and leaves `forward`'s state alone. A layer that passes its input on
        (Identity, Dropout, Flatten) may return that same array."""
        wanted = self._feature_names(layers)
        x = self._check_input(x)
        ctx, plan = self._unfused_plan()
        values = {self.input_name: x}
        remaining = dict(self._consumers)
        missing = set(wanted)
        for layer in plan:
            name, inputs = layer.name, layer.inputs
            values[name], _ = layer.kind.forward(layer.params, layer.geometry, layer.weights,
                                                 [values[i] for i in inputs], ctx)
            missing.discard(name)
            if not missing:
                break  # the later layers are not asked for
            for source in inputs:  # free what nobody asked for and no later layer reads
                remaining[source] -= 1
                if remaining[source] == 0 and source not in wanted:
                    del values[source]
        return {name: values[name] for name in wanted}

    def _feature_names(self, layers) -> list[str]:
        """The layers `features` returns: all (execution order) or `layers`, checked."""
        names = [layer.name for layer in self.layers]
        if layers is None:
            return names
        if isinstance(layers, str):
            layers = [layers]
        known = set(names)
        for name in layers:
            if name not in known:
                from cnndsl.errors import did_you_mean

                hint = did_you_mean(str(name), names) or f"its layers: {', '.join(names[:12])}" \
                    + (", ..." if len(names) > 12 else "")
                raise ValueError(f"{self.name} has no layer '{name}'; {hint}")
        return list(dict.fromkeys(layers))

    def _unfused_plan(self) -> tuple[Ctx, list]:
        """(inference context, plan without fused activations) for `features`, made on
        first use; remade for a `sandbox` twin, whose buffers are its own."""
        cached = getattr(self, "_features_plan", None)
        if cached is None or cached[0] is not self._arrays:
            cached = self._features_plan = (
                self._arrays, Ctx(train=False, rng=np.random.default_rng(0),
                                  backend=self.backend), self.make_layers(fuse=False))
        return cached[1], cached[2]

    def _forward_shards(self, x: np.ndarray, train: bool, save: bool) -> list:
        shards = self._shards(len(x))
        outputs = self._run_shards(
            shards, lambda runner, start, end: runner.run(x[start:end], train, save))
        self._last_shards = shards if save else None
        return outputs

    def backward(self, gy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """After a forward: gradient of the input and of every parameter, given dL/dy."""
        gy = np.ascontiguousarray(gy, dtype=self.dtype)
        if gy.shape[1:] != self.output_shape:
            raise ValueError(f"gy must be (N, {', '.join(map(str, self.output_shape))}), "
                             f"got {gy.shape}")
        if self._last_shards is None and self._eval_input is not None:
            # forward(train=False) kept nothing: run it again, saving
            self._forward_shards(self._eval_input, train=False, save=True)
        if self._last_shards is None:
            raise RuntimeError("backward() needs a forward() first")
        if len(gy) != self._last_shards[-1][2]:
            raise ValueError(f"gy has {len(gy)} rows but the last forward had "
                             f"{self._last_shards[-1][2]}")
        results = self._run_shards(self._last_shards, lambda runner, start, end: (
            runner.backward({self.output_name: gy[start:end]}, True)))
        return _joined([dx for dx, _ in results]), self._summed([g for _, g in results])

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray, train: bool = True):
        """Mean softmax cross-entropy of integer `labels`, and its gradients.

        Fused and numerically stable: the loss is computed from the logits (the input of
        a final Softmax, or the output itself if there is none). Returns
        (loss, probabilities, grads) where grads is name -> array as `parameters()`."""
        x = self._check_input(x)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(x),):
            raise ValueError(f"labels must be ({len(x)},) integers, got {labels.shape}")
        self._eval_input = None
        shards = self._shards(len(x))
        share = len(shards) > 1
        results = self._run_shards(shards, lambda runner, start, end: runner.loss_and_grads(
            x[start:end], labels[start:end], train, (end - start) / len(x) if share else None))
        self._last_shards = shards
        if len(results) == 1:
            loss = results[0][0]
        else:  # each shard's mean, weighted by its share of the batch
            loss = sum(shard_loss * (end - start) for (shard_loss, _, _), (_, start, end)
                       in zip(results, shards)) / len(x)
        return loss, _joined([probs for _, probs, _ in results]), self._summed(
            [grads for *_, grads in results])

    def _shards(self, n: int) -> list:
        """[(runner, start, end)]: the whole batch on the main runner, or near-equal shards
        of it, one per thread, when that is faster (not a small network, see
        cnndsl.parallel.SMALL_NET_MACS). Cutting changes nothing but rounding: layers that
        need the whole batch (BatchNorm's statistics, Dropout's masks) share sums and draws
        through the runners' `ctx.shard` (cnndsl.parallel.ShardGroup). A model that cuts
        its batches cuts a batch too small to cut into one shard: every step of it then runs
        the same code and kernels (compiled once, cnndsl.warmup)."""
        cuts = self._cuts()
        count = shard_count(n) if cuts else 1
        while len(self._runners) < count:
            self._runners.append(_Runner(self, np.random.default_rng(len(self._runners))))
        bounds = shard_bounds(n, count)
        if not cuts:
            self._runners[0].ctx.shard = None
        else:
            for runner, shard in zip(self._runners, ShardGroup(bounds, self.ctx.rng).shards()):
                runner.ctx.shard = shard
        return [(runner, start, end) for runner, (start, end) in zip(self._runners, bounds)]

    def _cuts(self) -> bool:
        """Whether batches are cut into shards (see `_shards`), each run on one Numba thread
        (by the serial kernels, cnndsl.kernels.jit)."""
        return self.data_parallel and self.backend == "numba" and not self._small

    def _run_shards(self, shards: list, work) -> list:
        """work(runner, start, end) for every shard, in parallel (cnndsl.parallel)."""
        first = shards[0][0].ctx.shard  # None when the batch is whole
        return run_sharded([partial(work, *shard) for shard in shards], self._small,
                           on_error=None if first is None else first.group.abort,
                           one_numba_thread=self._cuts())

    def _summed(self, shard_grads: list[dict]) -> dict[str, np.ndarray]:
        """Parameter gradients in `parameters()` order, summed over shards in shard order
        (zeros for parameters no gradient reached)."""
        ordered = {}
        for name, array in self._params.items():
            parts = [grads[name] for grads in shard_grads if name in grads]
            if not parts:
                ordered[name] = np.zeros_like(array)
                continue
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            ordered[name] = total
        return ordered

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

    # ---- the Python API of the CLI's commands (cnndsl.display, cnndsl.fit) ------------
    #: the .cnn text and the `let` overrides the model was compiled from (set by
    #: cnndsl.compile / cnndsl.load; None for a Model built from a graph): saved in weights
    #: files, so `cnndsl eval --weights W.npz` needs no FILE
    source_text: str | None = None
    source_bindings: dict | None = None

    def summary(self, json: bool = False, rf: bool = False, memory: bool = False,
                batch: int | None = None):
        """The `cnndsl check` table (a str that a REPL or notebook shows as the table);
        `rf`, `memory` add the columns of --rf and --memory, `batch` sizes the training-step
        memory line (default: the file's train block, else 64). `json=True`: the dict of
        `check --json`."""
        from cnndsl.display import summary

        return summary(self.graph, json=json, rf=rf, memory=memory, batch=batch)

    def _repr_svg_(self) -> str | None:
        from cnndsl.display import svg

        return svg(self.graph)

    def _repr_html_(self) -> str:
        from cnndsl.display import html

        return html(self.graph)

    def fit(self, x, y=None, *, epochs=None, batch=None, optimizer=None, lr=None,
            momentum=None, nesterov=None, weight_decay=None, schedule=None, step_size=None,
            gamma=None, seed=None, validation_split=None, validation_data=None, augment=None,
            callbacks=(), progress=None, verbose=True):
        """Train on x: (N, *input) (channels-last; an input ending in 1 channel also takes
        (N, *input without it)) and integer labels y: (N,), or on a dataset's train split
        (`fit(cnndsl.datasets.load("fashion-mnist"))`), with `cnndsl train`'s loop.
        Returns a `cnndsl.history.History`.

        Each setting not given comes from the file's `train { }` block, else the CLI's
        default: epochs 5, batch 64, optimizer "adam" (or "sgd", "adamw"), lr 0.001 (0.01
        for sgd), momentum 0.9, nesterov False, weight_decay 0, schedule "none" (or
        "step": lr × gamma (0.1) every step_size (2) epochs; "cosine"), seed 0 (the
        shuffles and the validation split; initial weights and dropout come from
        compile's seed, which is the train block's too), validation_split 0.1 (held out
        of x, seeded; 0: none) unless validation_data=(x, y) (or a dataset: its test
        split) is given. `augment`: data augmentation of the training batches only, a
        dict of the train block's settings (`{"shift": 2, "flip": True}`; also rotate,
        scale, shear, elastic, elastic_sigma, fill: cnndsl.augment), each replacing the
        file's; False: none, whatever the file says; None: the file's. `callbacks`: cnndsl.callbacks (EarlyStopping, ModelCheckpoint,
        CSVLogger, TensorBoard). `progress`: a bar per epoch (None: in a notebook or on a
        terminal, not into a pipe); `verbose`: print a line per epoch, as the CLI does.
        Ctrl-C ends the current batch, then raises cnndsl.train.Interrupted (a
        KeyboardInterrupt; its `history` holds the finished epochs). Each call starts a
        new run (a fresh optimizer) from the current weights."""
        from cnndsl.fit import fit

        return fit(self, x, y, epochs=epochs, batch=batch, optimizer=optimizer, lr=lr,
                   momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                   schedule=schedule, step_size=step_size, gamma=gamma, seed=seed,
                   validation_split=validation_split, validation_data=validation_data,
                   augment=augment, callbacks=callbacks, progress=progress, verbose=verbose)

    def evaluate(self, x, y=None, batch: int = 500) -> dict:
        """Measure the model (inference mode) on x: (N, *input), y: (N,) class indices, or
        on a dataset's test split: {"loss": mean cross-entropy, "accuracy", "per_class":
        [accuracy of each class (NaN without examples)], "confusion": K×K int64 array,
        rows the true class, columns the predicted one} — what `cnndsl eval` prints."""
        from cnndsl.fit import evaluate

        return evaluate(self, x, y, batch)

    def predict(self, x, batch: int = 500) -> np.ndarray:
        """Class probabilities (N, K) of x: (N, *input), in inference mode, `batch` at a
        time (the Softmax output, or softmax of the output when the network has none)."""
        from cnndsl.fit import predict

        return predict(self, x, batch)

    def save(self, path) -> None:
        """Write the weights file `cnndsl train` writes (parameters, BatchNorm statistics,
        the network's graph and, when known, its text), atomically."""
        from cnndsl import checkpoint
        from cnndsl.train import checkpoint_meta

        meta = checkpoint_meta(self)
        del meta["data"], meta["run_data"]  # no training run to describe
        checkpoint.save(str(path), self, meta=meta)

    def load_weights(self, path, force: bool = False) -> Model:
        """Load the weights file at `path` (from `save`, `cnndsl train` or a
        ModelCheckpoint) into this model; returns the model. Weights of another network
        raise cnndsl.checkpoint.CheckpointError naming the first difference; `force=True`
        loads them anyway, with a warning, if their names and shapes fit."""
        import warnings

        from cnndsl import checkpoint

        # the warning names the line that called load_weights (through load_into,
        # restore_model and check_architecture)
        checkpoint.load_into(self, str(path), force=force, force_flag="force=True",
                             warn=lambda message: warnings.warn(message, stacklevel=6))
        return self


def _joined(parts: list):
    """Shard results back into one batch (the array itself for a single shard)."""
    if len(parts) == 1 or parts[0] is None:
        return parts[0]
    return np.concatenate(parts)


class _Runner:
    """Runs the layers on a batch (or a shard of one) and keeps what its backward needs.

    Forward runs the layers in the IR's (topological) order, each op's `forward` returning
    its output and what its backward needs. Backward walks the same order reversed, calls
    each op's `backward`, and adds up the gradients of nodes that fan out (micrograd's
    scheme)."""

    def __init__(self, model: Model, rng: np.random.Generator):
        self.model = model
        self.ctx = Ctx(train=False, rng=rng, backend=model.backend)
        self.layers = model.make_layers()
        #: per layer, the op class run (a pass-through for a fused activation) and its
        #: work area (Ctx.work): this runner's own, where geometry is shared
        self.steps = _steps(self.layers)
        #: the same for a forward that saves nothing (pools fused into convs)
        self.inference_steps = _steps(model.make_layers(inference=True))
        self.saved = None
        self.logits = None
        #: None, or timer(phase, layer) called at the start of each pass (layer None) and
        #: after each layer's work ("forward"/"backward"): cnndsl.profile's per-layer clock
        self.timer = None

    def run(self, x: np.ndarray, train: bool, save: bool) -> np.ndarray:
        model = self.model
        self.ctx.train = train
        values = {model.input_name: x}
        remaining = dict(model._consumers)
        saved = {}
        self.saved = None
        timer = self.timer
        if timer is not None:
            timer("forward", None)
        ctx = self.ctx
        ctx.saves = save
        for layer, op, work in self.steps if save else self.inference_steps:
            name, inputs = layer.name, layer.inputs
            ctx.work = work
            y, state = op.forward(layer.params, layer.geometry, layer.weights,
                                  [values[i] for i in inputs], ctx)
            if save:
                saved[name] = state
            values[name] = y
            for source in inputs:  # free what no later layer reads
                remaining[source] -= 1
                if remaining[source] == 0 and source != model.logits_name:
                    del values[source]
            if timer is not None:
                timer("forward", name)
        self.saved = saved if save else None
        self.logits = values[model.logits_name]
        return values[model.output_name]

    def loss_and_grads(self, x, labels, train: bool, share: float | None):
        """Forward, fused softmax cross-entropy (mean over this batch) and backward.
        `share`: this shard's fraction of the whole batch; the logits' gradient is scaled
        by it, so that shard gradients add up to those of the whole batch's mean loss."""
        self.run(x, train, save=True)
        logits = self.logits.reshape(len(x), -1)
        kernels = self.ctx.kernels("loss")
        loss, dlogits = kernels.softmax_cross_entropy(logits, labels)
        probs = kernels.softmax_forward(logits)
        if share is not None:
            dlogits *= share
        _, grads = self.backward({self.model.logits_name: dlogits.reshape(self.logits.shape)},
                                 need_input_grad=False)
        return float(loss), probs, grads

    def backward(self, seeds: dict, need_input_grad: bool = True):
        """Gradients from `seeds` (node -> dL/d node) -> (dx or None, name -> grad)."""
        if self.saved is None:
            raise RuntimeError("backward() needs a forward() first")
        input_name = self.model.input_name
        pending = dict(seeds)
        owned = {}  # node -> True once its gradient is an array we allocated (safe to +=)
        grads = {}
        timer = self.timer
        if timer is not None:
            timer("backward", None)
        for layer, op, work in reversed(self.steps):
            name, inputs = layer.name, layer.inputs
            dy = pending.pop(name, None)
            if dy is None:
                continue  # not on a path to the seeds (e.g. the Softmax behind the logits)
            self.ctx.need_dx = need_input_grad or any(i != input_name for i in inputs)
            self.ctx.work = work
            dxs, dws = op.backward(layer.params, layer.geometry, layer.weights,
                                   self.saved[name], dy, self.ctx)
            for local_name, grad in dws.items():
                grads[f"{name}.{local_name}"] = grad.astype(self.model.dtype, copy=False)
            for source, dx in zip(inputs, dxs):
                if dx is None or (source == input_name and not need_input_grad):
                    continue
                if source not in pending:
                    pending[source] = dx
                elif owned.get(source):
                    pending[source] += dx
                else:  # fan-out: sum into a new array, never into one an op may share
                    pending[source] = pending[source] + dx
                    owned[source] = True
            if timer is not None:
                timer("backward", name)
        self.ctx.need_dx = True
        return pending.get(input_name), grads


def _steps(layers: list[Layer]) -> list[tuple]:
    return [(layer, _FusedInto if layer.fused_into else layer.kind, {}) for layer in layers]


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
