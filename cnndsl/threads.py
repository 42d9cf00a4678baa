"""Threads for cnndsl's own work: configured at run time, around that work, never at import.

Three thread pools share the cores: Numba's (its threading layer: GNU OpenMP here, TBB, or
Numba's own workqueue) runs the kernels; NumPy's OpenBLAS runs the GEMMs called from Python;
SciPy's OpenBLAS runs the `np.dot` inside kernels (Numba reaches BLAS through SciPy). On few
cores, a pool that keeps its threads spinning after its work starves the next pool's work
(PERF.md: "two thread pools fight"). What cnndsl does about it, and when:

- **BLAS, per step.** While a step runs (cnndsl.parallel.run_sharded), the kernels' BLAS
  runs on one thread (its calls are inside our own parallel regions, one per thread), and so
  does NumPy's whenever Numba's threads or the shards do the rest of the step; afterwards
  every library has the thread count it had before (threadpoolctl). A single-threaded
  OpenBLAS call wakes no worker, so none spins on the cores Numba needs next: this is what
  `OPENBLAS_THREAD_TIMEOUT` was for, and it needs no environment variable, whatever the
  import order.
- **Numba's thread count, per call.** `numba.set_num_threads` (per thread), restored after.
- **OpenMP's waiting, once.** libgomp has no run-time call for its wait policy: it reads
  `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` when it loads, which under Numba happens when the
  threading layer starts — at the first parallel launch, long after `import numpy`.
  `start_numba_threads` starts the layer at cnndsl's first parallel work (not at import)
  with a short spin then passive waiting, unless the user set either variable or Numba's
  layer had already started (then the user's choice, or the defaults, stand). The two
  variables are in the process environment only while the layer loads, and removed at once:
  `os.environ` and child processes never see them.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

#: libgomp's waiting between back-to-back kernels: a short spin (≈10k iterations) saves a
#: futex wake-up when the next kernel follows at once (net A training 7.0 -> 6.0 ms/step),
#: passive sleep after it keeps an idle worker off the core the BLAS calls and the other
#: shards need (4.7x slower conv training with libgomp's default spinning, 2 cores).
OPENMP_WAITING = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}

_lock = threading.Lock()
_numba_started = False
_blas: tuple | None = None  # (every BLAS library, the kernels' BLAS): threadpoolctl handles


def numba_started() -> bool:
    """Whether `start_numba_threads` has run (a cheap check for every kernel call)."""
    return _numba_started


def start_numba_threads() -> str:
    """Start Numba's threading layer if nothing has started it yet, with cnndsl's OpenMP
    waiting (`OPENMP_WAITING`, see the module docstring); returns the layer's name."""
    global _numba_started
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # not started: this is the first parallel work of the process
        with _lock, _openmp_waiting():
            numba.get_num_threads()  # starts the layer (loads libgomp), compiles nothing
        layer = numba.threading_layer()
    _numba_started = True
    return layer


@contextmanager
def _openmp_waiting():
    """`OPENMP_WAITING` in the C environment (where libgomp's loader reads it) for the
    duration, unless the user chose OpenMP's waiting; `os.environ` itself is not changed."""
    if any(name in os.environ for name in OPENMP_WAITING):
        yield
        return
    for name, value in OPENMP_WAITING.items():
        os.putenv(name, value)
    try:
        yield
    finally:
        for name in OPENMP_WAITING:
            os.unsetenv(name)


@contextmanager
def numba_threads(count: int):
    """Numba's thread count for this thread set to `count` for the duration, then restored
    (`numba.set_num_threads` is per thread)."""
    import numba

    if not _numba_started:
        start_numba_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def one_blas_thread(everywhere: bool):
    """A context in which the kernels' BLAS (SciPy's, called from inside Numba kernels) runs
    on one thread, and every other BLAS library too if `everywhere`; on exit each library
    has the thread count it had on entry (threadpoolctl, so the user's setting is kept)."""
    every_blas, kernel_blas = _blas_libraries()
    return (every_blas if everywhere else kernel_blas).limit(limits=1)


def _blas_libraries() -> tuple:
    """threadpoolctl's handles on (every loaded BLAS library, the kernels' BLAS), found
    once (finding is slow), after loading the kernels' BLAS. In the wheels NumPy's BLAS is a
    separate library from SciPy's: limiting the kernels' leaves NumPy's threads alone."""
    global _blas
    with _lock:
        if _blas is None:
            import scipy
            import scipy.linalg.cython_blas  # (loads the kernels' BLAS)
            from threadpoolctl import ThreadpoolController

            every_blas = ThreadpoolController().select(user_api="blas")
            scipy_dir = os.path.dirname(os.path.abspath(scipy.__file__))
            ours = [lib.filepath for lib in every_blas.lib_controllers  # scipy/, scipy.libs/
                    if os.path.abspath(lib.filepath).startswith(scipy_dir)]
            _blas = every_blas, every_blas.select(filepath=ours)
        return _blas
