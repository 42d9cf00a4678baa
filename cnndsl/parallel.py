"""Data-parallel steps: a batch cut into shards, one per thread, each shard single-threaded.

Why: on few cores, handing work between Numba's and OpenBLAS's thread pools (twice per
kernel) can cost more than the arithmetic. Measured on this 2-core machine with
benchmarks/bench_train.py: before shards, net B trained at 0.72x PyTorch and net C at
0.75x; cut in two, each half on one core with single-threaded kernels, they reach
0.88-1.06x and 0.82-0.94x (one hand-off per step, and a single-threaded GEMM has none).
Small networks (below SMALL_NET_MACS, such as net A) gain more from running whole with
the blocked conv kernels (cnndsl.kernels.conv), which are parallel in one region per layer.

The shards really run at once because every Numba kernel is `nogil=True` and numpy's matmul
releases the GIL; Python's own per-layer work is small next to the kernels of such networks.
Layers that need the whole batch meet through a ShardGroup: BatchNorm adds its sums over the
shards behind a barrier, Dropout takes its rows of one draw for the whole batch, so a cut
step computes what a whole one does, up to rounding.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack

from cnndsl import threads

#: a shard smaller than this is not worth a thread hand-off
MIN_SHARD = 8
#: forward multiply-accumulates per image up to which a network counts as small: it is not
#: cut into shards, and runs with one BLAS thread (its convs are `_blocked` kernels, parallel
#: themselves; its GEMMs are too small for two BLAS threads to pay). Training steps measured
#: cut / whole this way: net A of benchmarks/bench_train.py (0.49 M MACs) 3.2 / 2.1 ms,
#: examples/fashion_small.cnn (4.3 M) 9.6 / 9.9 ms, net B (11 M) 27 / 44 ms, net C (154 M)
#: 191 / 353 ms.
SMALL_NET_MACS = 2_000_000

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def thread_count() -> int:
    """How many threads a step may use: Numba's setting (NUMBA_NUM_THREADS or
    numba.set_num_threads, which is per thread); 1 when the JIT is disabled or Numba's
    threading layer may not be entered from two threads at once."""
    import numba

    if numba.config.DISABLE_JIT or not _threadsafe_layer():
        return 1
    return numba.get_num_threads()


def _threadsafe_layer() -> bool:
    """OpenMP and TBB may run parallel kernels from several threads at once, Numba's own
    'workqueue' layer may not. Which layer runs is known once the layer has started, so it
    is started first if it has not (every step of a process is then cut the same way), as
    cnndsl.threads configures it."""
    return threads.start_numba_threads() != "workqueue"


def shard_bounds(n: int, count: int) -> list[tuple[int, int]]:
    """[start, end) of `count` consecutive, near-equal shards of n items (larger ones first)."""
    base, extra = divmod(n, count)
    bounds, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def shard_count(n: int) -> int:
    """How many shards a batch of n is cut into: one per thread, each at least MIN_SHARD."""
    return max(1, min(thread_count(), n // MIN_SHARD))


class ShardGroup:
    """What the shards of one step share, so that layers that need the whole batch
    (BatchNorm's statistics, Dropout's masks) compute exactly what one call would: sums over
    all shards behind a barrier, and random draws made once for the whole batch."""

    def __init__(self, bounds: list[tuple[int, int]], rng):
        self.bounds = bounds
        self.total = bounds[-1][1]
        self.rng = rng  # the model's generator: draws come from it as in a whole-batch call
        self._barrier = threading.Barrier(len(bounds))
        self._lock = threading.Lock()
        self._sums: dict[int, list] = {}
        self._draws: dict[int, object] = {}

    def shards(self) -> list[Shard]:
        return [Shard(self, index) for index in range(len(self.bounds))]

    def abort(self) -> None:
        """A shard failed: wake the others waiting for it (they raise BrokenBarrierError)."""
        self._barrier.abort()


class Shard:
    """One shard's side of a ShardGroup: rows [start, end) of a batch of `total`. Its layers
    call `all_sum` and `draw_uniform` in the same order as every other shard's (they run the
    same layers), which is how calls are matched up."""

    def __init__(self, group: ShardGroup, index: int):
        self.group, self.index = group, index
        self.start, self.end = group.bounds[index]
        self._calls = 0

    @property
    def total(self) -> int:
        return self.group.total

    def all_sum(self, partial):
        """The sum of every shard's `partial` (float64 arrays of one shape), added in shard
        order so that the result does not depend on timing; waits for all shards."""
        import numpy as np

        key = self._next_call()
        group = self.group
        with group._lock:
            slots = group._sums.setdefault(key, [None] * len(group.bounds))
            slots[self.index] = np.asarray(partial, dtype=np.float64)
        group._barrier.wait()
        total = slots[0].copy()
        for part in slots[1:]:
            total += part
        return total

    def draw_uniform(self, shape: tuple, dtype):
        """This shard's rows of `rng.random` drawn once for the whole batch (shape: this
        shard's): the numbers a whole-batch call would have drawn for them."""
        import numpy as np

        key = self._next_call()
        group = self.group
        with group._lock:  # shards run the same layers in order: draws happen in layer order
            full = group._draws.get(key)
            if full is None:
                full = group._draws[key] = np.empty((group.total, *shape[1:]), dtype)
                group.rng.random(out=full, dtype=full.dtype)
        return full[self.start:self.end]

    def _next_call(self) -> int:
        self._calls += 1
        return self._calls


def run_sharded(tasks: list[Callable[[], object]], one_blas_thread: bool = False,
                on_error: Callable[[], None] | None = None,
                one_numba_thread: bool = False) -> list:
    """Run each task (no arguments): the first on this thread, the others on worker threads,
    all with one Numba thread and one BLAS thread. Returns the results in task order; if a
    task raises, `on_error` is called (to release the tasks waiting for it) and the first
    exception that is not a BrokenBarrierError propagates once every task has ended. A
    single task runs as it is, with one BLAS thread if `one_blas_thread` and one Numba
    thread if `one_numba_thread` (a model that cuts its batches: a batch too small to cut
    then runs the same serial kernels as the shards, see cnndsl.kernels.jit, and never
    makes a first run compile a second set). The kernels' own BLAS always runs on one
    thread. Thread counts are set for the call only (cnndsl.threads) and restored after."""
    if len(tasks) == 1:
        with ExitStack() as stack:
            stack.enter_context(threads.one_blas_thread(everywhere=one_blas_thread))
            if one_numba_thread:
                stack.enter_context(threads.numba_threads(1))
            return [tasks[0]()]

    def guarded(task):
        try:
            return task()
        except BaseException:
            if on_error is not None:
                on_error()
            raise

    pool = _workers(len(tasks) - 1)
    with threads.one_blas_thread(everywhere=True):
        # each worker runs in a copy of this thread's context (context variables: NumPy's
        # error state, cnndsl.kernels.jit's tracer), as the first task does here
        futures = [pool.submit(contextvars.copy_context().run, guarded, task)
                   for task in tasks[1:]]
        first_error = None
        try:
            with threads.numba_threads(1):
                first = guarded(tasks[0])
        except BaseException as error:  # noqa: BLE001 (re-raised below once the workers end)
            first_error = error
        finally:
            wait(futures)
        errors = [first_error] + [future.exception() for future in futures]
        raised = [e for e in errors if e is not None]
        if raised:
            real = [e for e in raised if not isinstance(e, threading.BrokenBarrierError)]
            raise (real or raised)[0]
        return [first, *(future.result() for future in futures)]


def _workers(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(count, thread_name_prefix="cnndsl-shard",
                                       initializer=_one_numba_thread)
            _pool_size = count
        return _pool


def _one_numba_thread() -> None:
    import numba

    threads.start_numba_threads()
    numba.set_num_threads(1)  # per thread, and this thread is ours: its kernels run serially


def pin_kernel_blas() -> None:
    """Called by the kernels before they ask Numba for its thread count: starts Numba's
    threading layer as cnndsl.threads configures it, if nothing has started it. It pins
    nothing for the whole process any more: the kernels' BLAS runs on one thread during
    every model step (`run_sharded`), and has the user's own thread count otherwise."""
    threads.start_numba_threads()
