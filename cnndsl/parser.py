"""Text -> AST. Lark does the parsing (grammar/cnn.lark); this module only wires it up.

- `NewlinePostLexer` decides where a statement ends (docs/language.md).
- `AstBuilder` (a Lark Transformer) turns the parse tree into `cnndsl.ast` dataclasses.
- Lark's exceptions become `ParseError`s with a span and a readable message.
"""

from __future__ import annotations

import functools
import gc
import math
import re
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError

from cnndsl import ast
from cnndsl.errors import CnnDslError, ParseError, Span, source_lines

OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
CLOSERS = {close: open_ for open_, close in OPENERS.items()}
MAX_NESTING = 100  # deeper nesting would exhaust Python's recursion in the tree passes
# Lark parses ~50k tokens a second: these caps keep any file to about a second. The largest
# example has a few hundred tokens; a network of 100,000 layers is written with '* n'.
MAX_TOKENS = 50_000
MAX_CHARS = 2_000_000
MAX_DIGITS = 30  # a whole-number literal; values are bounded again after arithmetic
BRACKET_TEXT = {"LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}"}


def grammar_text() -> str:
    """The grammar, from the installed package or from the source checkout."""
    packaged = resources.files("cnndsl").joinpath("grammar/cnn.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "grammar" / "cnn.lark"
    return checkout.read_text(encoding="utf-8")


class NewlinePostLexer:
    """Drop newlines inside brackets and next to arrows; one _NL between statements.

    Buffers a newline until it sees the next token (an arrow there continues the
    statement), which is why the parser uses Lark's basic lexer.
    Also reports unbalanced brackets at the bracket itself, not at the end of file.
    """

    always_accept = ("_NL",)

    def __init__(self):
        # the brackets open at the token being parsed: syntax errors use it to leave
        # closers that cannot occur out of "expected ..."
        self.open_stack: list[Token] = []

    def process(self, stream):
        open_stack = self.open_stack = []
        pending_newline: Token | None = None
        previous_type: str | None = None
        for count, token in enumerate(stream):
            kind = token.type
            if count >= MAX_TOKENS:
                raise ParseError(f"the file is too long: more than {MAX_TOKENS:,} words and "
                                 "symbols", _token_span(token),
                                 hint="write long networks with repetitions ('* n') and "
                                      "macros ('def')")
            if kind == "_NL":
                if not open_stack and previous_type not in (None, "ARROW"):
                    pending_newline = pending_newline or token
                continue
            if pending_newline is not None:
                if kind != "ARROW":
                    yield pending_newline
                pending_newline = None
            if kind in OPENERS:
                open_stack.append(token)
                if len(open_stack) > MAX_NESTING:
                    raise ParseError(f"brackets are nested more than {MAX_NESTING} deep",
                                     _token_span(token), hint="use a macro ('def') or a "
                                     "repetition ('* n') instead of deep nesting")
            elif kind in CLOSERS:
                _check_closer(open_stack, token)
                open_stack.pop()
            yield token
            previous_type = kind
        if open_stack:
            opener = open_stack[-1]
            closer = BRACKET_TEXT[OPENERS[opener.type]]
            raise ParseError(f"'{opener.value}' is never closed", _token_span(opener),
                             hint=f"add the matching '{closer}'")


def _check_closer(open_stack: list[Token], token: Token) -> None:
    if not open_stack:
        raise ParseError(f"unmatched '{token.value}'", _token_span(token),
                         hint="remove it, or add the opening bracket it closes")
    opener = open_stack[-1]
    if OPENERS[opener.type] != token.type:
        expected = BRACKET_TEXT[OPENERS[opener.type]]
        raise ParseError(
            f"'{token.value}' does not close '{opener.value}' opened at {opener.line}:"
            f"{opener.column}", _token_span(token), hint=f"close it with '{expected}' first")


def _token_span(token: Token) -> Span:
    return Span(token.line, token.column, token.end_line, token.end_column)


def _span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


@v_args(meta=True)
class AstBuilder(Transformer):
    """Parse tree -> AST dataclasses. Builds, never evaluates or validates."""

    def start(self, meta, children):
        return ast.Program(tuple(c for c in children if c is not None))

    def network_stmt(self, meta, children):
        return ast.NetworkStmt(str(children[0]), _span(meta))

    def input_stmt(self, meta, children):
        return ast.InputStmt(children[0], _span(meta))

    def let_stmt(self, meta, children):
        return ast.LetStmt(tuple(children), _span(meta))

    def binding(self, meta, children):
        name, value = children
        return ast.Binding(str(name), value, _span(meta))

    def def_stmt(self, meta, children):
        name, *rest = children
        tokens = rest[0] if len(rest) == 2 else None
        params = tuple(str(t) for t in tokens) if tokens is not None else None
        spans = tuple(_token_span(t) for t in tokens) if tokens is not None else ()
        return ast.DefStmt(str(name), params, rest[-1], _span(meta), _token_span(name), spans)

    def def_params(self, meta, children):
        return tuple(c for c in children if c is not None)

    def train_stmt(self, meta, children):
        return ast.TrainStmt(tuple(c for c in children if isinstance(c, ast.Setting)),
                             _span(meta))

    def setting(self, meta, children):
        name, value = children
        return ast.Setting(str(name), value, _span(meta))

    def body_stmt(self, meta, children):
        return ast.BodyStmt(children[0], _span(meta))

    def chain(self, meta, children):
        items = tuple(c for c in children if not isinstance(c, Token))
        return ast.Chain(items, _span(meta))

    def repeat(self, meta, children):
        body, _star, count = children
        return ast.Repeat(body, count, _span(meta))

    def group(self, meta, children):
        return ast.Group(children[0], _span(meta))

    def branches(self, meta, children):
        chains = tuple(c for c in children if isinstance(c, ast.Chain))
        ops = tuple(c for c in children if isinstance(c, tuple))
        return ast.Branches(chains, ops, _span(meta))

    def branch_op(self, meta, children):
        return (str(children[0]), _token_span(children[0]))

    def bare_call(self, meta, children):
        name = children[0]
        return ast.Call(str(name), (), False, _span(meta), _token_span(name))

    def arg_call(self, meta, children):
        name, args = children
        return ast.Call(str(name), args or (), True, _span(meta), _token_span(name))

    def labeled(self, meta, children):
        label, call = children
        return ast.Call(call.name, call.args, call.has_parens, _span(meta), call.name_span,
                        label=str(label), label_span=_token_span(label))

    def args(self, meta, children):
        return tuple(c for c in children if c is not None)

    def pos_arg(self, meta, children):
        return ast.Arg(None, children[0], _span(meta))

    def kw_arg(self, meta, children):
        name, value = children
        return ast.Arg(str(name), value, _span(meta))

    def binop(self, meta, children):
        left, op, right = children
        symbol = {"×": "*"}.get(str(op), str(op))
        return ast.BinOp(symbol, left, right, _span(meta), _token_span(op))

    def neg(self, meta, children):
        return ast.Neg(children[1], _span(meta))

    def int_lit(self, meta, children):
        return ast.Num(_whole(children[0], str(children[0])), _token_span(children[0]))

    def float_lit(self, meta, children):
        value = float(children[0])
        if not math.isfinite(value):
            raise ParseError(f"number {_clip(children[0])} is too large",
                             _token_span(children[0]))
        return ast.Num(value, _token_span(children[0]))

    def dims_lit(self, meta, children):
        parts = re.split(r"[ \t]*[x×][ \t]*", str(children[0]))
        return ast.Dims(tuple(_whole(children[0], v) for v in parts), _token_span(children[0]))

    def name_ref(self, meta, children):
        return ast.Name(str(children[0]), _token_span(children[0]))

    def tuple_lit(self, meta, children):
        return ast.TupleExpr(tuple(c for c in children if c is not None), _span(meta))


def _whole(token: Token, digits: str) -> int:
    significant = digits.lstrip("0") or "0"  # int() refuses 4,300 digits, zeros included
    if len(significant) > MAX_DIGITS:
        raise ParseError(f"number {_clip(digits)} is too large (more than {MAX_DIGITS} "
                         "digits)", _token_span(token))
    return int(significant)


def _clip(text: str, keep: int = 12) -> str:
    text = str(text)
    return text if len(text) <= 2 * keep else f"{text[:keep]}…{text[-keep:]}"


@functools.cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="basic", postlex=NewlinePostLexer(),
                propagate_positions=True, maybe_placeholders=True, cache=True)


def parse(text: str) -> ast.Program:
    """Parse .cnn source text into an `ast.Program`; raises ParseError with a span."""
    if len(text) > MAX_CHARS:
        line = text.count("\n", 0, MAX_CHARS) + 1
        col = MAX_CHARS - text.rfind("\n", 0, MAX_CHARS)
        raise ParseError(f"the file is too large: {len(text):,} characters (at most "
                         f"{MAX_CHARS:,})", Span.at(line, col))
    # the parse allocates one object per token and none die until the end: collecting
    # garbage meanwhile only costs time (half of it on long files)
    collecting = gc.isenabled()
    gc.disable()
    try:
        tree = _lark().parse(text)
        return AstBuilder().transform(tree)
    except VisitError as error:  # an exception inside the Transformer
        if isinstance(error.orig_exc, CnnDslError):
            raise error.orig_exc from None
        if isinstance(error.orig_exc, RecursionError):  # e.g. 2^2^2^... thousands deep
            meta = getattr(error.obj, "meta", None)
            span = _span(meta) if meta is not None and hasattr(meta, "line") else None
            raise ParseError("the file nests too deeply to read (an expression or chain "
                             "inside thousands of others)", span,
                             hint="split the expression with 'let', or use a repetition "
                                  "('* n')") from None
        raise
    except UnexpectedCharacters as error:
        raise _unexpected_character(text, error) from None
    except UnexpectedEOF as error:
        raise _unexpected_end(text, error.expected) from None
    except UnexpectedToken as error:
        if error.token.type == "$END":
            raise _unexpected_end(text, error.expected) from None
        raise _unexpected_token(text, error) from None
    finally:
        if collecting:
            gc.enable()


# ---- readable syntax errors ---------------------------------------------------

TOKEN_WORDS = {
    "ARROW": "'->'", "STAR": "'*'", "PLUS": "'+'", "MINUS": "'-'", "BAR": "'|'",
    "FLOORDIV": "'//'", "POW": "'^'", "NAME": "a name", "INT": "a number",
    "FLOAT": "a number", "DIMS": "a size such as 3x3", "_NL": "end of line",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "$END": "end of file",
}


def _describe_expected(expected) -> str:
    words = sorted({TOKEN_WORDS.get(name, f"'{name.lower()}'") for name in expected})
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def _unexpected_character(text: str, error: UnexpectedCharacters) -> ParseError:
    char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else "?"
    hints = {
        "/": "integer division is written '//'",
        ";": "statements end at the end of a line; no ';' is needed",
        ".": "write numbers as 3 or 0.5; sizes as 3x3",
        "=": "bindings are written 'let k = 2'",
    }
    shown = char if char.isprintable() else repr(char)
    return ParseError(f"unexpected character '{shown}'", Span.at(error.line, error.column),
                      hint=hints.get(char))


def _possible(expected, open_stack) -> list[str]:
    """Lark's expected terminals, without closing brackets that no open bracket needs."""
    closer = OPENERS[open_stack[-1].type] if open_stack else None
    return [name for name in expected if name not in CLOSERS or name == closer]


def _unexpected_token(text: str, error: UnexpectedToken) -> ParseError:
    token = error.token
    open_stack = _lark().options.postlex.open_stack
    expected = _possible(error.expected, open_stack)
    lines = source_lines(text)
    line_text = lines[token.line - 1] if token.line and token.line <= len(lines) else ""
    starts_line = not line_text[: token.column - 1].strip()
    shown = "end of line" if token.type == "_NL" else f"'{token.value}'"
    message = f"unexpected {shown}; expected {_describe_expected(expected)}"
    hint = None
    if token.type == "NAME" and token.value in ("x", "X") and "ARROW" not in expected:
        hint = "'x' joins literal numbers only (28x28x1); write sizes with names as a tuple, " \
               "e.g. (k, k, 1)"
    elif "ARROW" in expected and token.type in ("NAME", "LPAR", "LSQB", "LBRACE"):
        hint = "join the layers of a chain with '->' (or '→')"
    elif token.type == "ARROW" and open_stack and open_stack[-1].type == "LPAR":
        hint = f"close the '(' opened at {open_stack[-1].line}:{open_stack[-1].column} first"
    elif token.type == "ARROW" and starts_line:
        hint = "a line that begins with '->' continues the line before it; a chain starts " \
               "with a layer"
    elif token.type == "_NL" and "ARROW" in expected:
        hint = "a line that ends here must be a whole statement; continue it with '->'"
    elif token.type == "RBRACE" and ("BAR" in expected or "PLUS" in expected):
        hint = "braces hold two or more branches: { A | B } or { A + B }; group with ( )"
    elif token.type in ("PLUS", "BAR") and "RBRACE" not in expected:
        hint = "'|' and '+' separate branches inside braces: { A | B } or { A + B }"
    return ParseError(message, _token_span(token), hint=hint)


def end_of_text(text: str) -> Span:
    """Just after the last character that is not a comment or white space."""
    lines = source_lines(text)
    for number in range(len(lines), 0, -1):
        content = lines[number - 1].split("#", 1)[0].rstrip()
        if content:
            return Span.at(number, len(content) + 1)
    return Span.at(1, 1)


def _unexpected_end(text: str, expected) -> ParseError:
    return ParseError(f"unexpected end of file; expected {_describe_expected(expected)}",
                      end_of_text(text))
