"""cnndsl: convolutional networks written as text.

Front end (no numba needed): `parse`, `build_ir`, `infer_shapes`, `check_text`, `check_file`.
"""

from __future__ import annotations

from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.frontend import check_text
from cnndsl.ir import build_ir
from cnndsl.parser import parse
from cnndsl.shapes import infer_shapes

__version__ = "0.1.0"


def check_file(path: str, **bindings):
    """Read, parse and shape-check a .cnn file; returns the annotated IR graph."""
    from cnndsl.source import read_source

    return check_text(read_source(path), bindings)


__all__ = [
    "CnnDslError",
    "ShapeError",
    "__version__",
    "build_ir",
    "check_file",
    "check_text",
    "infer_shapes",
    "parse",
]
