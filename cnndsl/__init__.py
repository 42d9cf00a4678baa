"""cnndsl: convolutional networks written as text.

Front end (no numba needed): `parse`, `build_ir`, `infer_shapes`, `check_text`, `check_file`.
Models: `compile(text, **bindings)` / `load(path, weights=None, **bindings)` ->
`cnndsl.model.Model` (summary, fit, evaluate, predict, save, load_weights; shown inline in
Jupyter). Also `cnndsl.datasets.load(spec)` and `cnndsl.callbacks`.
"""

from __future__ import annotations

# Nothing here changes the process (no environment variables, no thread settings): threads
# and BLAS are configured at run time, around cnndsl's own work (cnndsl.threads).
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
