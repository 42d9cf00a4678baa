"""cnndsl: convolutional networks written as text.

Front end (no numba needed): `parse`, `build_ir`, `infer_shapes`, `check_text`, `check_file`.
Models: `compile(text, **bindings)` / `load(path, weights=None, **bindings)` ->
`cnndsl.model.Model` (summary, fit, evaluate, predict, save, load_weights; shown inline in
Jupyter). Also `cnndsl.datasets.load(spec)` and `cnndsl.callbacks`.
"""

from __future__ import annotations

import os

# Numba's OpenMP threads and OpenBLAS's threads take turns on few cores; spinning OpenMP
# workers starve the BLAS calls between kernels (4.7x slower conv training measured on
# 2 cores). Must be set before the OpenMP runtime starts, i.e. before the first kernel.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ...but a short spin (≈10k iterations) before sleeping saves a futex wake-up between
# back-to-back kernels (net A training 7.0 -> 6.0 ms/step); GOMP_SPINCOUNT wins over the
# policy's spin count in libgomp.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
# OpenBLAS's idle workers spin 2^28 cycles (~0.1 s) after each GEMM, on the cores Numba's
# kernels need next: 2^10 cycles halves conv training time here (net B 128 -> 47 ms/step).
# Read when numpy loads OpenBLAS: effective only if cnndsl is imported before numpy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "10")

from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.frontend import check_text
from cnndsl.ir import build_ir
from cnndsl.parser import parse
from cnndsl.shapes import infer_shapes

__version__ = "0.1.0"


def compile(source_text: str, seed: int | None = None, weights=None, **bindings):
    """Check `.cnn` source and build a runnable model (kernels load on first use).

    `bindings` override the file's `let`s (`compile(text, k=3)`); `seed` fixes the
    initial weights and dropout (default: the file's `train { seed = ... }`, else 0, as
    `cnndsl train` does); `weights` loads a weights file (`Model.load_weights`: weights of
    another network are refused). A user error raises CnnDslError whose str() is the
    located report the CLI prints (`<string>:LINE:COL: error: ...`)."""
    return _build(source_text, "<string>", seed, weights, bindings)


def load(path, seed: int | None = None, weights=None, **bindings):
    """`compile` the .cnn file at `path` (errors name `path`), with `weights` if given:
    `cnndsl.load("net.cnn", weights="net.npz")`."""
    from cnndsl.source import read_source

    return _build(read_source(path), str(path), seed, weights, bindings)


def _build(text: str, filename: str, seed: int | None, weights, bindings: dict):
    from cnndsl.model import Model

    graph = check_text(text, bindings, filename)
    if seed is None:
        seed = graph.graph.get("train_settings", {}).get("seed", 0)
    try:
        model = Model(graph, seed=seed)
    except CnnDslError as error:  # e.g. weights that cannot fit in memory
        raise error.located(text, filename) from None
    model.source_text, model.source_bindings = text, dict(bindings)
    if weights is not None:
        model.load_weights(weights)
    return model


def check_file(path: str, **bindings):
    """Read, parse and shape-check a .cnn file; returns the annotated IR graph."""
    from cnndsl.source import read_source

    return check_text(read_source(path), bindings, filename=str(path))


#: submodules of the Python API, imported on first use (`cnndsl.datasets.load(...)`), so
#: that `import cnndsl` stays light (no numba) for the front end and `cnndsl check`
LAZY_MODULES = ("callbacks", "datasets", "display", "fit", "history", "model")


def __getattr__(name: str):
    if name in LAZY_MODULES:
        import importlib

        return importlib.import_module(f"cnndsl.{name}")
    raise AttributeError(f"module 'cnndsl' has no attribute '{name}'")


__all__ = [
    "CnnDslError",
    "ShapeError",
    "__version__",
    "build_ir",
    "check_file",
    "check_text",
    "compile",
    "infer_shapes",
    "load",
    "parse",
]
