"""Data-parallel steps: a batch cut into shards, one per thread, each shard single-threaded.

Why: on few cores a small network spends more time handing work between Numba's and
OpenBLAS's thread pools (twice per kernel) than computing. Measured on this 2-core machine,
net A of benchmarks/bench_train.py took 4.1 ms per training step with two threads in every
kernel and the same 4.1 ms with one; half the batch on each core, each with single-threaded
kernels, takes 2.6 ms and syncs once per step. Larger networks gain too (net C 314 -> 342
GFLOP/s), since a single-threaded GEMM has no hand-offs at all.

The shards really run at once because every Numba kernel is `nogil=True` and numpy's matmul
releases the GIL; Python's own per-layer work is small next to the kernels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

#: a shard smaller than this is not worth a thread hand-off
MIN_SHARD = 8

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas = None


def thread_count() -> int:
    """How many threads a step may use: Numba's setting (NUMBA_NUM_THREADS or
    numba.set_num_threads, which is per thread), 1 when the JIT is disabled."""
    import numba

    if numba.config.DISABLE_JIT:
        return 1
    return numba.get_num_threads()


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


def run_sharded(tasks: list[Callable[[], object]]) -> list:
    """Run each task (no arguments): the first on this thread, the others on worker threads,
    all with one Numba thread and one BLAS thread. Returns the results in task order; if a
    task raises, its exception propagates once every task has ended."""
    import numba

    if len(tasks) == 1:
        return [tasks[0]()]
    pool = _workers(len(tasks) - 1)
    with _blas_controller().limit(limits=1):
        futures = [pool.submit(task) for task in tasks[1:]]
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            first = tasks[0]()
        finally:
            numba.set_num_threads(previous)
            wait(futures)
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

    numba.set_num_threads(1)  # per thread: this worker's kernels run serially


def _blas_controller():
    """threadpoolctl's handle on the loaded BLAS libraries, found once (finding is slow)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas
