"""How kernels are compiled: `@kernel` (a parallel kernel and its serial twin) and `@helper`.

A `prange` kernel is compiled on first use, once per signature, and cached on disk
(`cache=True`, under `cnndsl/kernels/__pycache__` or NUMBA_CACHE_DIR). Two variants:

- `parallel`: `@njit(parallel=True)`, for calls made while Numba may use several threads
  (whole batches of small networks, `Model.data_parallel = False`);
- `serial`: the same function with `parallel=False` (`prange` is `range`), for calls made
  with one Numba thread: every shard of a data-parallel step (cnndsl.parallel), where a
  parallel region would only add scheduling. It compiles 2-4x faster (no parfor lowering;
  the blocked conv kernels: forward 6.7 -> 2.9 s, backward 8.3 -> 3.2 s of CPU here) and
  runs as fast.

Asking Numba for its thread count starts its threading layer: the first kernel call
starts it through cnndsl.threads, which configures it (not `import`).

A network uses one of the two sets (cnndsl.model decides per model, not per batch), so a
first run compiles only that one. Kernels take arrays and scalars only, write their results
into arrays they are given and return nothing; that is what lets `cnndsl.warmup` trace which
kernels a model calls, with which signatures, without running (or compiling) them.
`helper` is for the plain `@njit` functions kernels call (never parallel themselves).
"""

from __future__ import annotations

import threading
import types
from contextvars import ContextVar

import numba
from numba import njit

from cnndsl import threads

#: every Kernel defined so far (for tests)
KERNELS: list[Kernel] = []
#: while cnndsl.warmup traces a step: called instead of the kernels (see `tracing`); a
#: context variable, so only the traced call and the shard threads it starts see it
_tracer: ContextVar = ContextVar("cnndsl_kernel_tracer", default=None)


def helper(fn=None, **options):
    """`@njit(cache=True, nogil=True, **options)`: a serial function that kernels call."""
    if fn is None:
        return lambda f: helper(f, **options)
    return njit(cache=True, nogil=True, **options)(fn)


def kernel(fn):
    """Decorator: `fn` as a `Kernel` (both variants, each compiled on first use)."""
    return Kernel(fn)


class Kernel:
    """A kernel's two variants (see the module docstring); calling it runs the one that fits
    the calling thread's Numba thread count."""

    def __init__(self, fn):
        self.py_func = fn
        self.name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        self.__doc__ = fn.__doc__
        self.parallel = njit(parallel=True, cache=True, nogil=True)(fn)
        # a copy of the function under another qualified name: the on-disk cache is named
        # after it, and Numba's cache key does not tell parallel from serial code apart
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                  fn.__closure__)
        twin.__qualname__ = f"{fn.__qualname__}.serial"
        twin.__doc__ = fn.__doc__
        self.serial = njit(cache=True, nogil=True)(twin)
        KERNELS.append(self)

    def variant(self):
        """The dispatcher a call from this thread runs now."""
        if not threads.numba_started():  # the first kernel of the process configures them
            threads.start_numba_threads()
        return self.serial if numba.get_num_threads() == 1 else self.parallel

    def __call__(self, *args) -> None:
        tracer = _tracer.get()
        if tracer is not None:
            tracer(self, args)
            return
        self.variant()(*args)

    def __repr__(self) -> str:
        return f"<kernel {self.name}>"


class tracing:
    """`with tracing(record):` every kernel call in this context (this thread, and the shard
    threads a model step started here runs on: cnndsl.parallel passes the context on) calls
    record(kernel, dispatcher, argtypes) instead of running; the arrays it would have
    written keep whatever they held. Other threads' kernels run as usual."""

    def __init__(self, record):
        self.record = record
        self._lock = threading.Lock()  # (shards record from several threads)

    def _trace(self, kernel_, args) -> None:
        dispatcher = kernel_.variant()
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in args)
        with self._lock:
            self.record(kernel_, dispatcher, argtypes)

    def __enter__(self):
        self._token = _tracer.set(self._trace)
        return self

    def __exit__(self, *exc):
        _tracer.reset(self._token)
