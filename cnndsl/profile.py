"""Measured cost of a training step, layer by layer (`cnndsl profile`, like `caffe time`).

    from cnndsl.profile import profile
    result = profile(model, batch=64, steps=10)
    print(result.format_table())          # or result.to_json()

A step is what `cnndsl train` does per batch: `Model.loss_and_grads` (forward, softmax
cross-entropy, backward) and an Adam update (cnndsl.optim), here on seeded random inputs
(N, *input) and random labels. Each layer's time comes from the model's own runner
(`_Runner.timer`): a clock read at the start of each pass and after each layer, so the
layer times of a pass add up to the whole pass, Python's bookkeeping between the kernels
included. A layer the runtime fused into the one before it (a ReLU folded into its conv,
`Model._fuse_activations`) has no time of its own: its pass-through is counted in the conv's.

Sharding: `cnndsl train` cuts a batch of a large enough network into one shard per thread
(cnndsl.parallel), each shard's layers running at the same time as the other's: per-layer
times of concurrent shards would not add up to the step. So the layers are measured with
`model.data_parallel = False` (the batch whole, each kernel parallel inside), and the step
as training runs it is measured too, beside it ("normal step").

Conventions: times are medians over the timed steps (per layer, and per total);
GFLOP/s counts 2 FLOPs per multiply-accumulate (MACs as `cnndsl check` reports them), the
backward of a conv or FC layer twice its forward's MACs (input and weight gradients), once
when its input is the network's input (no input gradient is computed then); activation
memory is each layer's output at the batch size (elements x batch x itemsize) as the step
keeps it for the backward, not the gradients or kernels' scratch; a fused activation
shares its conv's array and counts nothing (a Flatten, which may return a view of its
input, is counted all the same: an upper bound).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

#: untimed steps run in each mode before the timed ones (the first loads the kernels,
#: the next lets the allocator and the caches settle)
WARMUP_STEPS = 2
FORWARD, BACKWARD = "forward", "backward"


@dataclass
class LayerCost:
    """One layer's row: medians in milliseconds (None: not run in that pass, e.g. the
    Softmax behind the fused loss has no backward; both None for a fused layer)."""

    name: str
    op: str  # as `cnndsl check` shows it, e.g. "Conv(32, 3)"
    shape: tuple  # output shape of one example
    macs: int  # per example
    forward_ms: float | None
    backward_ms: float | None
    memory: int  # bytes of its output at the batch size (0 when fused)
    forward_flops: int  # per batch
    backward_flops: int
    fused_into: str | None = None

    @property
    def total_ms(self) -> float:
        return (self.forward_ms or 0.0) + (self.backward_ms or 0.0)

    @property
    def gflops(self) -> float | None:
        """Forward and backward FLOPs over their time (None without MACs or time)."""
        return _gflops(self.forward_flops + self.backward_flops, self.total_ms)


@dataclass
class Profile:
    """The measurements of `profile` (see the module docstring for the conventions)."""

    name: str
    input_shape: tuple
    batch: int
    steps: int
    warmup: int
    dtype: str
    threads: int
    params: int
    layers: list[LayerCost]
    loss_ms: float  # softmax cross-entropy and its gradient, between the two passes
    optimizer_ms: float  # the Adam update
    step_ms: float  # a whole step, batch whole, without timers
    timed_step_ms: float  # a whole step with the per-layer timers on
    normal_step_ms: float  # a whole step as `cnndsl train` runs it
    shards: int  # how many shards a normal step cuts the batch into (1: not cut)
    cuts: bool  # whether a normal step differs from the profiled one (cut into shards)

    @property
    def forward_ms(self) -> float:
        return sum(layer.forward_ms or 0.0 for layer in self.layers)

    @property
    def backward_ms(self) -> float:
        return sum(layer.backward_ms or 0.0 for layer in self.layers)

    @property
    def layers_ms(self) -> float:
        return self.forward_ms + self.backward_ms

    @property
    def profiled_ms(self) -> float:
        """Every row: the layers, the loss and the optimizer update."""
        return self.layers_ms + self.loss_ms + self.optimizer_ms

    @property
    def coverage(self) -> float:
        """How much of the measured step the rows account for, in percent."""
        return 100 * self.profiled_ms / self.step_ms if self.step_ms > 0 else 0.0

    @property
    def memory(self) -> int:
        return sum(layer.memory for layer in self.layers)

    @property
    def gflops(self) -> float | None:
        flops = sum(layer.forward_flops + layer.backward_flops for layer in self.layers)
        return _gflops(flops, self.layers_ms)

    def share(self, ms: float | None) -> float | None:
        """`ms` as a percentage of all rows (layers + loss + optimizer): they add up to 100."""
        if ms is None:
            return None
        return 100 * ms / self.profiled_ms if self.profiled_ms > 0 else 0.0

    def to_json(self) -> dict:
        """One object; the keys are listed in docs/language.md ("cnndsl profile")."""
        layers = [{
            "name": layer.name, "op": layer.op, "shape": list(layer.shape),
            "macs": layer.macs, "forward_ms": layer.forward_ms,
            "backward_ms": layer.backward_ms,
            "total_ms": None if layer.fused_into else layer.total_ms,
            "share": None if layer.fused_into else self.share(layer.total_ms),
            "gflops": layer.gflops, "memory": layer.memory, "fused_into": layer.fused_into,
        } for layer in self.layers]
        return {
            "name": self.name, "input": list(self.input_shape), "batch": self.batch,
            "steps": self.steps, "warmup": self.warmup, "dtype": self.dtype,
            "threads": self.threads,
            "layers": layers,
            "loss": {"op": "softmax cross-entropy", "ms": self.loss_ms,
                     "share": self.share(self.loss_ms)},
            "optimizer": {"op": "adam", "params": self.params, "ms": self.optimizer_ms,
                          "share": self.share(self.optimizer_ms)},
            "totals": {
                "forward_ms": self.forward_ms, "backward_ms": self.backward_ms,
                "layers_ms": self.layers_ms, "profiled_ms": self.profiled_ms,
                "step_ms": self.step_ms, "coverage": self.coverage,
                "timed_step_ms": self.timed_step_ms, "normal_step_ms": self.normal_step_ms,
                "shards": self.shards, "gflops": self.gflops, "memory": self.memory,
            },
        }

    def format_table(self) -> str:
        return _format_table(self)


# ---- measuring ------------------------------------------------------------------------

class LayerClock:
    """The `_Runner.timer` hook: notes the time at each call. Calls come as
    (phase, None) when a pass starts, then (phase, layer) after each layer's work."""

    def __init__(self):
        self.marks: list[tuple[str, str | None, float]] = []

    def __call__(self, phase: str, layer: str | None) -> None:
        self.marks.append((phase, layer, time.perf_counter()))

    def durations(self) -> tuple[dict, dict, float]:
        """({layer: seconds} forward, the same backward, seconds between the passes:
        the loss and its gradient)."""
        passes = {FORWARD: {}, BACKWARD: {}}
        forward_end = backward_start = None
        previous = None
        for phase, layer, stamp in self.marks:
            if layer is None:
                if phase == BACKWARD and backward_start is None:
                    backward_start = stamp
            else:
                passes[phase][layer] = passes[phase].get(layer, 0.0) + stamp - previous
                if phase == FORWARD:
                    forward_end = stamp
            previous = stamp
        loss = backward_start - forward_end if None not in (forward_end, backward_start) \
            else 0.0
        return passes[FORWARD], passes[BACKWARD], loss


def profile(model, batch: int = 64, steps: int = 10, warmup: int = WARMUP_STEPS,
            seed: int = 0, prepare=None) -> Profile:
    """Measure `steps` training steps of `model` at `batch` after `warmup` untimed ones.

    Changes the model's parameters (Adam steps on random data) and BatchNorm statistics:
    give it a model made for the purpose. `prepare(model, batch)` loads or compiles the
    kernels first (default: cnndsl.warmup.prepare, silently); it is called once per way of
    running the model (batch whole, and cut into shards if training cuts it)."""
    from cnndsl.optim import Adam
    from cnndsl.parallel import shard_count, thread_count

    if batch < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, steps >= 1, warmup >= 0; got {batch}, {steps}, "
                         f"{warmup}")
    if prepare is None:
        from cnndsl.warmup import prepare as load_kernels

        def prepare(m, b):
            load_kernels(m, b, train=True)

    x, labels = _random_batch(model, batch, seed)
    optimizer = Adam(model.parameters())
    normal_mode = model.data_parallel
    cuts = model._cuts()
    try:
        modes = [False, normal_mode] if cuts else [False]
        for mode in modes:  # compile, then settle: nothing of this is timed
            model.data_parallel = mode
            prepare(model, batch)
            for _ in range(warmup):
                _step(model, optimizer, x, labels)
        samples = _timed_rounds(model, optimizer, x, labels, steps, normal_mode, cuts)
    finally:
        model.data_parallel = normal_mode
        model._runners[0].timer = None
    return Profile(
        name=model.name, input_shape=model.input_shape, batch=batch, steps=steps,
        warmup=warmup, dtype=str(model.dtype), threads=thread_count(),
        params=model.num_params, layers=_layer_costs(model, batch, samples),
        loss_ms=_median_ms(samples["loss"]), optimizer_ms=_median_ms(samples["optimizer"]),
        step_ms=_median_ms(samples["step"]), timed_step_ms=_median_ms(samples["timed_step"]),
        normal_step_ms=_median_ms(samples["normal_step"] or samples["step"]),
        shards=shard_count(batch) if cuts else 1, cuts=cuts)


def _random_batch(model, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded standard-normal inputs (N, *input) and labels in [0, classes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *model.input_shape)).astype(model.dtype)
    logits_shape = model.graph.nodes[model.logits_name]["shape"]
    labels = rng.integers(0, math.prod(logits_shape), size=batch)
    return x, labels


def _timed_rounds(model, optimizer, x, labels, steps: int, normal_mode: bool,
                  cuts: bool) -> dict:
    """Per round: one step with the layer clock, one without (alternating which comes first,
    so neither always follows the other), and one as training runs it if that differs.
    Interleaved, so that a slow spell of the machine touches all of them alike."""
    samples = {"layers": [], "loss": [], "optimizer": [], "timed_step": [], "step": [],
               "normal_step": []}
    for round_index in range(steps):
        model.data_parallel = False
        order = (True, False) if round_index % 2 == 0 else (False, True)
        for with_clock in order:
            clock = LayerClock() if with_clock else None
            seconds, update = _step(model, optimizer, x, labels, clock)
            if clock is None:
                samples["step"].append(seconds)
                continue
            forward, backward, loss = clock.durations()
            samples["layers"].append((forward, backward))
            samples["loss"].append(loss)
            samples["optimizer"].append(update)
            samples["timed_step"].append(seconds)
        if cuts:
            model.data_parallel = normal_mode
            samples["normal_step"].append(_step(model, optimizer, x, labels)[0])
    return samples


def _step(model, optimizer, x, labels, clock: LayerClock | None = None) -> tuple[float, float]:
    """One training step -> (seconds of the whole step, seconds of the optimizer update).
    The clock, if given, is on the main runner: with the batch whole, the only one used."""
    runner = model._runners[0]
    runner.timer = clock
    try:
        start = time.perf_counter()
        _, _, grads = model.loss_and_grads(x, labels)
        update_start = time.perf_counter()
        optimizer.step(grads)
        end = time.perf_counter()
    finally:
        runner.timer = None
    return end - start, end - update_start


def _layer_costs(model, batch: int, samples: dict) -> list[LayerCost]:
    """One LayerCost per layer in source order, from the clock's samples; a fused
    activation's own (pass-through) time is added to the layer it is fused into."""
    from cnndsl.summary import op_text

    fused = {layer.name: layer.fused_into for layer in model.layers if layer.fused_into}
    steps = []
    for forward, backward in samples["layers"]:
        steps.append(tuple(_fold_fused(times, fused) for times in (forward, backward)))
    graph, itemsize = model.graph, model.dtype.itemsize
    costs = []
    for layer in model.layers:
        name, inputs = layer.name, layer.inputs
        node = graph.nodes[name]
        macs = node.get("macs", 0)
        # the backward of a layer reading the network's input computes no input gradient
        needs_dx = any(i != model.input_name for i in inputs)
        forward_ms, backward_ms = (_median_ms([s[k][name] for s in steps if name in s[k]])
                                   for k in (0, 1))
        costs.append(LayerCost(
            name=name, op=op_text(node), shape=tuple(node["shape"]), macs=macs,
            forward_ms=None if name in fused else forward_ms,
            backward_ms=None if name in fused else backward_ms,
            memory=0 if name in fused else math.prod(node["shape"]) * batch * itemsize,
            forward_flops=2 * macs * batch,
            backward_flops=2 * macs * batch * (2 if needs_dx else 1),
            fused_into=fused.get(name)))
    return costs


def _fold_fused(times: dict, fused: dict) -> dict:
    """Layer times with each fused activation's time moved to its producer."""
    folded = dict(times)
    for layer, producer in fused.items():
        if layer in folded:
            folded[producer] = folded.get(producer, 0.0) + folded.pop(layer)
    return folded


def _median_ms(seconds: list[float]) -> float | None:
    return 1000 * statistics.median(seconds) if seconds else None


def _gflops(flops: int, ms: float | None) -> float | None:
    return flops / (ms * 1e6) if flops and ms else None


# ---- the table ------------------------------------------------------------------------

HEADER = ("layer", "op", "output shape", "forward ms", "backward ms", "total ms", "share",
          "GFLOP/s", "activations")
RIGHT = (False, False, False, True, True, True, True, True, True)


def _format_table(result: Profile) -> str:
    from cnndsl.memory import format_bytes
    from cnndsl.ops.padding import fmt

    def ms(value):
        return "-" if value is None else f"{value:.3f}"

    def percent(value):
        return "" if value is None else f"{value:.1f}%"

    def rate(value):
        return "-" if value is None else f"{value:.1f}"

    rows, notes = [], {}
    for layer in result.layers:
        head = (layer.name, layer.op, fmt(layer.shape))
        if layer.fused_into:
            notes[len(rows)] = f"fused into {layer.fused_into}"
            rows.append((*head, "", "", "", "", "", ""))
            continue
        rows.append((*head, ms(layer.forward_ms), ms(layer.backward_ms), ms(layer.total_ms),
                     percent(result.share(layer.total_ms)), rate(layer.gflops),
                     format_bytes(layer.memory)))
    totals = [
        ("layers", "", "", ms(result.forward_ms), ms(result.backward_ms),
         ms(result.layers_ms), percent(result.share(result.layers_ms)), rate(result.gflops),
         format_bytes(result.memory)),
        ("loss", "softmax cross-entropy", "", "", "", ms(result.loss_ms),
         percent(result.share(result.loss_ms)), "", ""),
        ("optimizer", "adam update", "", "", "",
         ms(result.optimizer_ms), percent(result.share(result.optimizer_ms)), "", ""),
    ]
    widths = [max(len(r[i]) for r in [HEADER, *rows, *totals]) for i in range(len(HEADER))]

    def line(cells):
        parts = [c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, RIGHT)]
        return "  ".join(parts).rstrip()

    def row_line(index, cells):
        if index in notes:  # the note where the times would be
            head = "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths[:3]))
            return f"{head}  {notes[index]}"
        return line(cells)

    rule = "-" * len(line(HEADER))
    shape = fmt(result.input_shape)
    title = (f"{result.name}: input {shape}, batch {result.batch}; median of {result.steps} "
             "training steps (forward, loss, backward, adam)")
    return "\n".join([
        title, rule, line(HEADER), rule,
        *(row_line(i, cells) for i, cells in enumerate(rows)), rule,
        *(line(cells) for cells in totals), rule, *_summary(result)])


def _summary(result: Profile) -> list[str]:
    import textwrap

    from cnndsl.memory import format_bytes

    lines = [f"sum of the rows  {result.profiled_ms:10.3f} ms",
             f"measured step    {result.step_ms:10.3f} ms  a whole step without the layer clock"]
    if result.cuts:
        cut = (f"the batch cut into {result.shards} shards, one per thread"
               if result.shards > 1 else "one shard, serial kernels")
        lines.append(f"normal step      {result.normal_step_ms:10.3f} ms  as cnndsl train runs "
                     f"it: {cut}")
    added = f"layers, loss and optimizer add up to {result.coverage:.0f}% of the measured step"
    rest = result.step_ms - result.profiled_ms
    if rest > 0:
        added += f" (the rest, {rest:.3f} ms: the runtime's work around the layers, and noise)"
    lines += textwrap.wrap(added, 96)
    threads = f"{result.threads} thread{'s' if result.threads != 1 else ''}"
    why = ("as cnndsl train runs this network" if not result.cuts
           else "the layers of shards that run at once would not add up")
    notes = [
        f"layers measured with the batch whole, each kernel parallel inside ({threads}): {why}",
        ("GFLOP/s counts 2 FLOPs per MAC, the backward of a conv or FC layer 2x its forward's "
         "MACs (1x when it reads the network's input)"),
        (f"activations: each layer's output at batch {result.batch} ({result.dtype}), kept for "
         f"the backward: {format_bytes(result.memory)} in all; a fused layer shares its "
         "producer's"),
    ]
    for note in notes:
        lines += textwrap.wrap(f"note: {note}", 96, subsequent_indent="      ")
    return lines
