"""AST of a .cnn file: frozen dataclasses, each carrying the Span of its source text.

Built by the Lark Transformer in `parser.py`; nothing here evaluates or validates.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnndsl.errors import Span

# ---- expressions -------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Dims:
    """A literal size such as 28x28x1 or 3x3."""

    values: tuple[int, ...]
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * // ^
    left: Expr
    right: Expr
    span: Span
    op_span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class TupleExpr:
    items: tuple[Expr, ...]
    span: Span


Expr = Num | Dims | Name | BinOp | Neg | TupleExpr

# ---- the network -------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    """`Conv(32, 3x3)`, bare `ReLU`, or a macro call `block(64)`; optionally labelled."""

    name: str
    args: tuple[Arg, ...]
    has_parens: bool
    span: Span
    name_span: Span
    label: str | None = None
    label_span: Span | None = None


@dataclass(frozen=True)
class Chain:
    items: tuple[Node, ...]
    span: Span


@dataclass(frozen=True)
class Group:
    chain: Chain
    span: Span


@dataclass(frozen=True)
class Repeat:
    body: Node
    count: Expr
    span: Span


@dataclass(frozen=True)
class Branches:
    """`{ A | B }` or `{ A + B }`; `ops` keeps every separator so mixing can be reported."""

    branches: tuple[Chain, ...]
    ops: tuple[tuple[str, Span], ...]
    span: Span


Node = Call | Group | Repeat | Branches

# ---- statements --------------------------------------------------------------


@dataclass(frozen=True)
class NetworkStmt:
    name: str
    span: Span


@dataclass(frozen=True)
class InputStmt:
    shape: Expr
    span: Span


@dataclass(frozen=True)
class Binding:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class LetStmt:
    bindings: tuple[Binding, ...]
    span: Span


@dataclass(frozen=True)
class DefStmt:
    name: str
    params: tuple[str, ...] | None  # None: `def name = ...` (no parameter list)
    body: Chain
    span: Span
    name_span: Span
    param_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class BodyStmt:
    chain: Chain
    span: Span


@dataclass(frozen=True)
class Setting:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class TrainStmt:
    settings: tuple[Setting, ...]
    span: Span


Statement = NetworkStmt | InputStmt | LetStmt | DefStmt | TrainStmt | BodyStmt


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
