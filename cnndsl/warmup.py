"""Compile the kernels a model needs before its first step, and say so (issue 10).

Numba compiles each kernel on its first call and caches the machine code on disk, so only
a machine's first run of a network waits for it (fashion_small: 7-8 s here, 5 s with the
default two compiling processes; benchmarks/bench_cold_start.py). `prepare` does that wait up front, kernel by kernel, so
that a caller can show progress instead of a training bar stuck at 0%:

    from cnndsl.warmup import prepare
    prepare(model, 64, report=lambda done, total, name: ...)

How it knows which kernels: it traces one training step and one inference pass of the
model (`cnndsl.kernels.jit.tracing`). The model's own code runs, on a copy of the model
(`Model.sandbox`) and on zeros, but every kernel call only records which kernel, variant
(serial or parallel) and argument types it would run; nothing is computed or compiled.
Each recorded kernel is then compiled in this process already, cached on disk (loaded:
tens of milliseconds), or missing (compiled: seconds).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

COMPILED, CACHED, MISSING = "compiled", "cached", "missing"


@dataclass(frozen=True)
class KernelUse:
    """One kernel variant with one signature that a model runs."""

    name: str  # module.function, e.g. "conv._conv_blocks_forward"
    dispatcher: object  # the Numba dispatcher of the variant the model runs
    argtypes: tuple  # its Numba argument types
    state: str  # COMPILED (in this process), CACHED (on disk) or MISSING

    @property
    def serial(self) -> bool:
        return self.dispatcher.py_func.__qualname__.endswith(".serial")


def needed(model, batch: int, train: bool = True) -> list[KernelUse]:
    """The kernels a training step (if `train`) and an inference pass of `model` on batches
    of `batch` run (any batch size: the same), in first-call order, each with its state.
    Compiles and computes nothing; costs about the Python side of a step on 2 images. Empty
    for the NumPy backend and with NUMBA_DISABLE_JIT."""
    import numba

    if model.backend != "numba" or numba.config.DISABLE_JIT:
        return []
    from cnndsl.kernels.jit import tracing

    # which kernels run, and their argument types, do not depend on the batch size (a model
    # that cuts batches into shards cuts even a small one, into one shard: cnndsl.model), so
    # a batch of 2 stands for any: the NumPy work the trace does run (an FC layer's matmul)
    # stays small (VGG-16: 1.8 s; at 16 images 13 s)
    n = max(1, min(batch, 2))
    sandbox = model.sandbox()
    x = np.zeros((n, *model.input_shape), model.dtype)
    seen = {}

    def record(kernel, dispatcher, argtypes):
        seen.setdefault((id(dispatcher), argtypes), (kernel.name, dispatcher, argtypes))

    # outputs hold whatever they held: quiet NumPy about the garbage it then computes with
    # (np.errstate is a context variable: the shards' threads see it too)
    with tracing(record), np.errstate(all="ignore"):
        if train:
            sandbox.loss_and_grads(x, np.zeros(n, np.int64))
        sandbox.forward(x, train=False)
    return [KernelUse(name, d, argtypes, _state(d, argtypes))
            for name, d, argtypes in seen.values()]


def prepare(model, batch: int, report: Callable[[int, int, str | None], None] | None = None,
            train: bool = True, processes: int | None = None) -> list[str]:
    """Make the first step of `model` on batches of `batch` start at once: load the cached
    kernels it needs and compile the missing ones (see `needed`).

    `report(done, total, name)`, if given, is called only when something must be compiled:
    first report(0, total, None) (time to tell the user: this takes seconds), then
    report(k, total, name) as the k-th kernel is done; `total` counts the missing kernel
    variants and signatures. Calls come one at a time, some from a helper thread.

    `processes`: how many processes compile at once (default: 2, or 1 on one CPU). Numba
    compiles one function at a time per process (a global lock: threads measured no faster),
    so this one starts `processes - 1` helper processes that compile their share into the
    disk cache, from which it then loads them: fashion_small's 7.4 s of compiling took
    4.6-5.4 s with 2 here (benchmarks/bench_cold_start.py --strategies). If a helper fails,
    this process compiles its share itself.

    Returns the names of the kernels compiled: [] when everything was compiled or cached
    already (a second call always returns [])."""
    uses = needed(model, batch, train)
    for use in uses:
        if use.state == CACHED:
            use.dispatcher.compile(use.argtypes)  # loads it from the disk cache
    missing = [use for use in uses if use.state == MISSING]
    if not missing:
        return []
    progress = _Progress(report, len(missing))
    shares = _split(missing, _cpus() if processes is None else processes)
    helpers = [_Helper(share, progress) for share in shares[1:]]
    try:
        for use in shares[0]:
            use.dispatcher.compile(use.argtypes)  # (and saves it to the disk cache)
            progress.done(use)
        for helper in helpers:
            helper.wait()
        for use in (use for share in shares[1:] for use in share):
            use.dispatcher.compile(use.argtypes)  # loads what a helper compiled
            progress.done(use)  # (counted once: the helper may have reported it)
    finally:
        for helper in helpers:
            helper.stop()
    return [use.name for use in missing]


def _cpus() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    return min(2, count)


def _split(missing: list[KernelUse], processes: int) -> list[list[KernelUse]]:
    """`missing` in up to `processes` shares of about equal work (guessed from the size of
    each kernel's bytecode), largest first, the first for this process. The signatures of
    one dispatcher stay in one share: two processes saving into one cache index would lose
    entries. One share when Numba's disk cache is off (helpers could not hand kernels on)."""
    groups: dict[int, list[KernelUse]] = {}
    for use in missing:
        groups.setdefault(id(use.dispatcher), []).append(use)
    if not all(getattr(use.dispatcher._cache, "cache_path", None) for use in missing):
        processes = 1
    shares = [[] for _ in range(max(1, min(processes, len(groups))))]
    work = [0] * len(shares)

    def cost(group):
        return len(group) * len(group[0].dispatcher.py_func.__code__.co_code)

    for group in sorted(groups.values(), key=cost, reverse=True):
        least = work.index(min(work))
        shares[least] += group
        work[least] += cost(group)
    return shares


class _Progress:
    """Counts the kernels done (each once) and calls `report`, one call at a time."""

    def __init__(self, report, total: int):
        self.report, self.total = report, total
        self._done: set = set()
        self._lock = threading.Lock()
        if report is not None:
            report(0, total, None)

    def done(self, use: KernelUse) -> None:
        with self._lock:
            key = (id(use.dispatcher), use.argtypes)
            if key in self._done:
                return
            self._done.add(key)
            if self.report is not None:
                self.report(len(self._done), self.total, use.name)


_HELPER = """
import importlib, pickle, sys
import cnndsl  # (its environment defaults, as in the parent)
for i, (module, name, serial, argtypes) in enumerate(pickle.load(sys.stdin.buffer)):
    kernel = getattr(importlib.import_module(module), name)
    (kernel.serial if serial else kernel.parallel).compile(argtypes)
    print(i, flush=True)
"""


class _Helper:
    """A process compiling `share` into the disk cache; a thread passes on its progress."""

    def __init__(self, share: list[KernelUse], progress: _Progress):
        spec = [(use.dispatcher.py_func.__module__, use.dispatcher.py_func.__name__,
                 use.serial, use.argtypes) for use in share]
        self.process = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.process.stdin.write(pickle.dumps(spec))
        self.process.stdin.close()
        self.thread = threading.Thread(target=self._read, args=(share, progress), daemon=True)
        self.thread.start()

    def _read(self, share, progress) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit() and int(line) < len(share):
                progress.done(share[int(line)])

    def wait(self) -> None:
        self.process.wait()
        self.thread.join()

    def stop(self) -> None:
        if self.process.poll() is None:  # interrupted: do not leave it running
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def _state(dispatcher, argtypes: tuple) -> str:
    if argtypes in dispatcher.overloads:
        return COMPILED
    return CACHED if _on_disk(dispatcher, argtypes) else MISSING


def _on_disk(dispatcher, argtypes: tuple) -> bool:
    """Whether Numba's disk cache has this signature, from its index alone (what
    `Dispatcher.compile` would look up, without loading it). Numba has no public call for
    this; if its internals change, the answer is False: the kernel then counts as missing
    and `prepare` merely loads it where it expected to compile."""
    try:
        cache = dispatcher._cache
        key = cache._index_key(argtypes, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except (AttributeError, EOFError, OSError, TypeError, ValueError,
            pickle.UnpicklingError):  # e.g. a NullCache (caching off) has no index
        return False
