"""Evaluate argument expressions: integer arithmetic, sizes, tuples, names.

Values are int, float, bool, a padding mode ('same' | 'valid' | 'full'), a word a layer
argument chooses from (`mode=nearest`, `over=channels`) or a tuple of ints. `true`, `false`,
`same`, `valid` and `full` are reserved words, not bindings; a choice word is a value only
where no binding of that name is visible (a `let channels = 64` still binds).
"""

from __future__ import annotations

import math

from cnndsl import ast
from cnndsl.errors import BindingError, CnnDslError, did_you_mean

RESERVED = {"true": True, "false": False, "same": "same", "valid": "valid", "full": "full"}
#: the built-in name of the network's class count: bound from the data by `cnndsl train`,
#: `cnndsl eval` (and `Model.fit` through `cnndsl.compile(text, classes=...)`), by
#: `--set classes=N` or by a `let` in the file; never given a default
CLASSES = "classes"
CLASSES_HINT = ("classes is the number of classes: bound from the data by train/eval, or "
                "write --set classes=10 / let classes = 10 (Python: compile(text, classes=10))")
# every number a file computes stays within ±2^63 and is finite: larger ones are no size,
# rate or count a network can use, and would cost time (2^64^64^64) or overflow later
MAX_VALUE = 2**63


class UnboundClasses(BindingError):
    """`classes` used where nothing binds it: the CLI's train and eval then bind it from
    their data and check the file again."""


class Env:
    """Names visible to an expression: `let` bindings plus the current macro's parameters.

    `used` records every name looked up (in order), so unused --set bindings can be told.
    """

    def __init__(self, values: dict, used: dict | None = None):
        self.values = values
        self.used = used if used is not None else {}

    def child(self, extra: dict) -> Env:
        return Env({**self.values, **extra}, self.used)

    def lookup(self, name: ast.Name):
        if name.id in self.values:
            self.used[name.id] = True
            return self.values[name.id]
        if name.id in RESERVED:
            return RESERVED[name.id]
        if name.id in choice_words():
            return name.id
        if name.id == CLASSES:
            raise UnboundClasses(f"unbound name '{CLASSES}' (the number of classes)",
                                 name.span, hint=CLASSES_HINT)
        known = [*self.values, *RESERVED, *choice_words()]
        hint = did_you_mean(name.id, known) or (
            f"bind it with 'let {name.id} = ...' or on the command line with "
            f"--set {name.id}=...")
        raise BindingError(f"unbound name '{name.id}'", name.span, hint=hint)


def choice_words() -> list[str]:
    """The words layer arguments choose from (an argument kind with `choices`, such as
    Upsample's mode=nearest|bilinear), in registry order, each once."""
    import dataclasses

    from cnndsl.ops import OPS

    words: dict[str, None] = {}
    for op in OPS.values():
        if dataclasses.is_dataclass(op.Params):
            for field in dataclasses.fields(op.Params):
                words.update(dict.fromkeys(getattr(field.metadata.get("kind"), "choices", ())))
    return list(words)


def show(value) -> str:
    """A value as the DSL spells it: true, 3x3, 0.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and any(isinstance(v, tuple) for v in value):
        return "(" + ", ".join(show(v) if not isinstance(v, tuple) else
                               "(" + ", ".join(map(show, v)) + ")" for v in value) + ")"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def evaluate(expr: ast.Expr, env: Env):
    """The value of `expr`; a CnnDslError at the expression for a value out of range."""
    value = _evaluate(expr, env)
    for number in value if isinstance(value, tuple) else (value,):
        check_number(number, expr.span)
    return value


def check_number(value, span, what: str = "value") -> None:
    """Refuse a number that is not finite or is beyond ±MAX_VALUE."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and math.isnan(value):
        raise CnnDslError(f"this {what} is not a number (nan)", span,
                          hint="e.g. inf - inf or 0 * inf gives nan")
    if not -MAX_VALUE <= value <= MAX_VALUE:
        shown = "infinite" if isinstance(value, float) and math.isinf(value) else "too large"
        raise CnnDslError(f"this {what} is {shown} (beyond ±2^63)", span)


def _evaluate(expr: ast.Expr, env: Env):
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Dims):
        return expr.values
    if isinstance(expr, ast.Name):
        return env.lookup(expr)
    if isinstance(expr, ast.TupleExpr):
        return tuple(_entry(evaluate(item, env), item) for item in expr.items)
    if isinstance(expr, ast.Neg):
        return -_number(evaluate(expr.operand, env), expr.operand, "'-'")
    if isinstance(expr, ast.BinOp):
        left = _number(evaluate(expr.left, env), expr.left, f"'{expr.op}'")
        right = _number(evaluate(expr.right, env), expr.right, f"'{expr.op}'")
        return _arithmetic(expr, left, right)
    raise AssertionError(f"unknown expression {expr!r}")


def _entry(value, expr):
    """A tuple entry: a number, or a tuple of numbers (one level deep: the (before, after)
    pairs of pad=((0, 1), (2, 2)))."""
    if isinstance(value, tuple) and not any(isinstance(v, tuple) for v in value):
        return value
    return _number(value, expr, "a tuple entry")


def _number(value, expr, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CnnDslError(f"{what} needs a number, got {show(value)}", expr.span)
    return value


def _arithmetic(expr: ast.BinOp, left, right):
    op = expr.op
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "//":
        if right == 0:
            raise CnnDslError("division by zero", expr.right.span)
        if not (isinstance(left, int) and isinstance(right, int)):
            raise CnnDslError("'//' divides whole numbers", expr.op_span)
        return left // right
    if op == "^":
        if isinstance(right, int) and right < 0 and isinstance(left, int):
            raise CnnDslError("a negative power is not a whole number", expr.right.span)
        if abs(right) > 64:
            raise CnnDslError(f"power {right} is too large", expr.right.span)
        try:
            result = left**right
        except ZeroDivisionError:
            raise CnnDslError("zero to a negative power", expr.span) from None
        except OverflowError:
            raise CnnDslError("this value is too large (beyond ±2^63)", expr.span) from None
        if isinstance(result, complex):
            raise CnnDslError("a negative number to a fractional power", expr.span)
        return result
    raise AssertionError(f"unknown operator {op}")
