"""The front end in one call: text -> checked IR (parse, build, infer shapes)."""

from __future__ import annotations

import contextlib
import gc

import networkx as nx

from cnndsl.errors import CnnDslError, GraphError
from cnndsl.ir import build_ir
from cnndsl.parser import parse
from cnndsl.shapes import infer_shapes


def check_text(text: str, bindings: dict | None = None,
               filename: str = "<string>", data: dict | None = None) -> nx.DiGraph:
    """Parse, expand and shape-check `.cnn` source, and its `train { ... }` block; raises
    CnnDslError on a user error, whose str() is the located report (`filename:LINE:COL:
    error: ...`, the source line, a caret, a hint) the CLI prints.

    `bindings` override the file's `let`s; `data` binds names from the data (`{"classes":
    10}`, the dataset's class count) only where neither a `let` nor `bindings` does. An
    unbound `classes` raises cnndsl.evaluate.UnboundClasses."""
    try:
        return _check(text, bindings, data)
    except CnnDslError as error:
        raise error.located(text, filename) from None


@contextlib.contextmanager
def nesting_guard():
    """Turn a RecursionError of the tree passes into a user error; no garbage collection
    meanwhile (the passes build objects that all live to the end: collecting them costs up
    to half the time of a 100,000-layer network)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    except RecursionError:
        # brackets are capped by the parser; this catches e.g. `X * 1 * 1 * ...` 500 deep
        raise GraphError("the file nests too deeply to expand (repetitions, macros or "
                         "expressions inside each other)",
                         hint="use one repetition count instead of many nested ones"
                         ) from None
    finally:
        if collecting:
            gc.enable()


def _check(text: str, bindings: dict | None, data: dict | None) -> nx.DiGraph:
    from cnndsl.trainconfig import program_settings

    with nesting_guard():
        program = parse(text)
        graph = infer_shapes(build_ir(program, bindings, text, data))
        # so that `check` refuses what `train` would (and knows the file's batch size)
        graph.graph["train_settings"] = program_settings(program, bindings, data)
        return graph
