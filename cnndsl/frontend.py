"""The front end in one call: text -> checked IR (parse, build, infer shapes)."""

from __future__ import annotations

import networkx as nx

from cnndsl.ir import build_ir
from cnndsl.parser import parse
from cnndsl.shapes import infer_shapes


def check_text(text: str, bindings: dict | None = None) -> nx.DiGraph:
    """Parse, expand and shape-check `.cnn` source; raises CnnDslError on a user error."""
    return infer_shapes(build_ir(parse(text), bindings))
