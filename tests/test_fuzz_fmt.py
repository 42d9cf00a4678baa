"""Fuzz of `cnndsl fmt` (issue 13): valid files, mutated without changing what they mean,
must format to text that compiles to the identical graph and is its own format.

The mutations: spaces and tabs between tokens, arrow spellings (-> and →), `×` for `*` and
in sizes, redundant parentheses around numbers, trailing commas, keyword arguments shuffled,
positional arguments turned into keywords, line breaks inside brackets and next to arrows,
backslash continuations, blank lines, comments (trailing and on lines of their own).

Layout-only mutations (the first six, and blank lines where there is one already) must
also give the very text the unmutated file formats to: the canonical form.

The sources are the examples, the programs of docs/language.md and a few written here for
the constructs the examples lack. Besides, any text the front end's fuzz makes (generated
programs, damaged examples) either is a user error or formats cleanly. CNNDSL_FUZZ_EXAMPLES sets the number of examples per
test (default 30: a few seconds); a nightly run sets it high:

    CNNDSL_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz_fmt.py
"""

from __future__ import annotations

import dataclasses
import os
import re

from conftest import EXAMPLES
from corpus import checks, doc_programs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Lark
from test_fuzz_frontend import mutants, programs

from cnndsl import ast, check_text, parse
from cnndsl.errors import CnnDslError
from cnndsl.fmt import find_comments, format_text
from cnndsl.ops import OPS
from cnndsl.parser import grammar_text

EXAMPLE_COUNT = int(os.environ.get("CNNDSL_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLE_COUNT, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck), database=None)

# the parser's own tokens, without its post-lexer (which drops line breaks)
LEXER = Lark(grammar_text(), parser="lalr", lexer="basic")
OPENERS, CLOSERS = {"LPAR", "LSQB", "LBRACE"}, {"RPAR", "RSQB", "RBRACE"}

WRITTEN_HERE = [
    # train block, powers, negative numbers, tuples, labels inside braces, macro keywords
    ("network Extra\ninput 16x16x3\nlet c = 4, k = 3, e = 2^2 - 2\n"
     "def cbr(c, k) = Conv(c, k, stride=1, pad=k // 2, bias=false) -> BatchNorm -> ReLU\n"
     "train { optimizer = sgd, lr = 0.05, momentum = 0.9, epochs = e, batch = 2 * 16 }\n"
     "cbr(c, k) -> { a: Conv(c, (1, 3), pad=(0, 1)) | cbr(k=3, c=c + 4) | "
     "MaxPool(3, 1, pad=1) } -> [LeakyReLU(alpha=0.1) -> Dropout(p=.25)] * (k - 1)\n"
     "  -> GlobalAvgPool -> FC(units=10, bias=true) -> Softmax\n"),
    # a 1-D network with expressions in sizes and a repeated labelled block
    ("input 64x2\nlet n = 2\n"
     "(b: Conv(2^3, 3, dilation=2) -> BatchNorm(eps=1e-3, momentum=0.2) -> Tanh) * n\n"
     "  -> AvgPool(size=2) -> Flatten -> Dense(4)\n"),
]


SOURCES = sorted({*(p.read_text(encoding="utf-8") for p in EXAMPLES.glob("*.cnn")),
                  *(text for _, text in doc_programs() if checks(text)), *WRITTEN_HERE})


# ---- where things may go -------------------------------------------------------------------

@dataclasses.dataclass
class Gap:
    """The blanks and comments between two tokens (before the first, after the last)."""

    start: int  # the offset just after the token before: inserting here never enters a comment
    end: int
    before: str | None  # the token types around it
    after: str | None
    depth: int  # brackets open
    statement_end: bool  # a line break here ends a statement

    def may_break(self) -> bool:
        return self.depth > 0 or "ARROW" in (self.before, self.after) or self.statement_end \
            or self.before is None or self.after is None


def gaps(text: str) -> list[Gap]:
    tokens, found, depth, ends = [], [], 0, False
    previous_end = 0
    for token in LEXER.lex(text):
        if token.type == "_NL":
            ends = True  # the lexer's newline token: a statement ends here
            continue
        found.append(Gap(previous_end, token.start_pos, tokens[-1].type if tokens else None,
                         token.type, depth, ends))
        depth += (token.type in OPENERS) - (token.type in CLOSERS)
        tokens.append(token)
        previous_end, ends = token.end_pos, False
    found.append(Gap(previous_end, len(text), tokens[-1].type if tokens else None, None,
                     depth, ends))
    return found


def insert(text: str, at: int, piece: str) -> str:
    return text[:at] + piece + text[at:]


def _tokens(text: str):
    return [t for t in LEXER.lex(text) if t.type != "_NL"]


# ---- layout-only mutations -----------------------------------------------------------------

def add_blanks(text, draw):
    gap = draw(st.sampled_from(gaps(text)))
    return insert(text, gap.start, draw(st.sampled_from([" ", "\t", "  ", " \t "])))


def respell_arrow(text, draw):
    arrows = [t for t in _tokens(text) if t.type == "ARROW"]
    if not arrows:
        return text
    arrow = draw(st.sampled_from(arrows))
    other = "→" if arrow.value == "->" else "->"
    return text[:arrow.start_pos] + other + text[arrow.end_pos:]


def respell_star(text, draw):
    """`*` as `×`, except between two literal numbers (that would be a size)."""
    tokens = _tokens(text)
    stars = [i for i, t in enumerate(tokens) if t.type == "STAR" and 0 < i < len(tokens) - 1
             and not (tokens[i - 1].value[-1].isdigit() and tokens[i + 1].value[0].isdigit())]
    if not stars:
        return text
    star = tokens[draw(st.sampled_from(stars))]
    return text[:star.start_pos] + "×" + text[star.end_pos:]


def respell_size(text, draw):
    sizes = [t for t in _tokens(text) if t.type == "DIMS"]
    if not sizes:
        return text
    size = draw(st.sampled_from(sizes))
    joiner = draw(st.sampled_from(["×", " x ", " × ", "\tx"]))
    return text[:size.start_pos] + re.sub(r"\s*[x×]\s*", joiner, size.value) + \
        text[size.end_pos:]


def parenthesize_number(text, draw):
    numbers = [t for t in _tokens(text) if t.type in ("INT", "FLOAT", "DIMS")]
    if not numbers:
        return text
    number = draw(st.sampled_from(numbers))
    inner = draw(st.sampled_from(["({})", "(({}))", "( {} )"])).format(number.value)
    return text[:number.start_pos] + inner + text[number.end_pos:]


def _calls(text: str) -> list[ast.Call]:
    found = []

    def walk(node):
        if isinstance(node, ast.Call):
            found.append(node)
        elif isinstance(node, ast.Chain):
            for item in node.items:
                walk(item)
        elif isinstance(node, ast.Group):
            walk(node.chain)
        elif isinstance(node, ast.Repeat):
            walk(node.body)
        elif isinstance(node, ast.Branches):
            for branch in node.branches:
                walk(branch)

    for statement in parse(text).statements:
        if isinstance(statement, (ast.BodyStmt, ast.DefStmt)):
            walk(statement.chain if isinstance(statement, ast.BodyStmt) else statement.body)
    return [call for call in found if call.args]


def _offset(text: str, line: int, col: int) -> int:
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    return starts[line - 1] + col - 1


def _rewrite_args(text: str, call: ast.Call, pieces: list[str]) -> str:
    start = _offset(text, call.args[0].span.line, call.args[0].span.col)
    end = _offset(text, call.args[-1].span.end_line, call.args[-1].span.end_col)
    return text[:start] + ", ".join(pieces) + text[end:]


def _source(text: str, span) -> str:
    return text[_offset(text, span.line, span.col): _offset(text, span.end_line, span.end_col)]


def shuffle_keywords(text, draw):
    calls = [c for c in _calls(text) if sum(a.name is not None for a in c.args) >= 2]
    if not calls:
        return text
    call = draw(st.sampled_from(calls))
    pieces = [_source(text, a.span) for a in call.args]
    positional = sum(a.name is None for a in call.args)
    keywords = draw(st.permutations(pieces[positional:]))
    return _rewrite_args(text, call, pieces[:positional] + list(keywords))


def trailing_comma(text, draw):
    calls = _calls(text)
    if not calls:
        return text
    call = draw(st.sampled_from(calls))
    closing = _offset(text, call.span.end_line, call.span.end_col) - 1
    before = [t for t in _tokens(text) if t.end_pos <= closing][-1]
    if before.type == "COMMA":  # one trailing comma at most
        return text
    return insert(text, closing, draw(st.sampled_from([",", ", ", " ,"])))


def add_blank_line(text, draw):
    """Another blank line where one is already (kept as one), or inside brackets (dropped)."""
    places = [m.start() for m in re.finditer(r"\n(?=[ \t]*\n)", text)]
    places += [g.start for g in gaps(text) if g.depth > 0 and g.before not in ("ARROW", "LBRACE")
               and g.after != "ARROW"]
    if not places:
        return text
    return insert(text, draw(st.sampled_from(places)), "\n")


def break_inside_brackets(text, draw):
    """A line break where the layout ignores it: inside brackets, not next to an arrow and
    not after '{' (a brace broken there stays open)."""
    places = [g for g in gaps(text) if g.depth > 0 and g.before not in ("ARROW", "LBRACE")
              and g.after != "ARROW"]
    if not places:
        return text
    gap = draw(st.sampled_from(places))
    return insert(text, gap.start, draw(st.sampled_from(["\n", "\n    ", "\n\t"])))


LAYOUT_ONLY = [add_blanks, respell_arrow, respell_star, respell_size, parenthesize_number,
               trailing_comma, shuffle_keywords, add_blank_line, break_inside_brackets]


# ---- mutations that change the layout, not the meaning ------------------------------------

def keywords_for_positionals(text, draw):
    """The last positional arguments of a call written as keywords."""
    macros = {s.name: list(s.params or ()) for s in parse(text).statements
              if isinstance(s, ast.DefStmt)}
    calls = []
    for call in _calls(text):
        names = macros.get(call.name)
        if names is None and call.name in OPS:
            names = [f.name for f in dataclasses.fields(OPS[call.name].Params)
                     if "kind" in f.metadata]
        positional = sum(a.name is None for a in call.args)
        if names and positional:
            calls.append((call, names, positional))
    if not calls:
        return text
    call, names, positional = draw(st.sampled_from(calls))
    first = draw(st.integers(0, positional - 1))
    pieces = [(f"{names[i]}={_source(text, a.span)}" if first <= i < positional
               else _source(text, a.span)) for i, a in enumerate(call.args)]
    return _rewrite_args(text, call, pieces)


def add_line_break(text, draw):
    gap = draw(st.sampled_from([g for g in gaps(text) if g.may_break()]))
    return insert(text, gap.start, draw(st.sampled_from(["\n", "\n  ", "\n\n", "\n\t  "])))


def add_backslash(text, draw):
    gap = draw(st.sampled_from(gaps(text)))
    return insert(text, gap.start, draw(st.sampled_from([" \\\n", "\\\n   ", " \\ \n"])))


def add_comment(text, draw):
    gap = draw(st.sampled_from([g for g in gaps(text) if g.may_break()]))
    comment = draw(st.sampled_from(["  # fuzz", "# x -> y", "#", "  #  spaced  "]))
    own_line = draw(st.booleans())
    return insert(text, gap.start, f"\n{comment.strip()}\n" if own_line else f"{comment}\n")


MEANING_KEPT = LAYOUT_ONLY + [keywords_for_positionals, add_line_break, add_backslash,
                              add_comment]


# ---- the properties ------------------------------------------------------------------------

def graph_facts(text: str) -> tuple:
    """What the file compiles to, without source positions."""
    graph = check_text(text)
    nodes = tuple((name, a["op"], a["params"], tuple(a["inputs"]), a["shape"], a["label"],
                   a["written"], tuple((s.kind, s.label, s.index, s.count) for s in a["scopes"]))
                  for name, a in graph.nodes(data=True))
    return (nodes, graph.graph["name"], graph.graph["input_shape"], graph.graph["bindings"],
            graph.graph["train_settings"])


def comments(text: str) -> list[str]:
    return [c.text for c in find_comments(text)]


@st.composite
def mutated(draw, mutations):
    original = draw(st.sampled_from(SOURCES))
    text = original
    for _ in range(draw(st.integers(1, 8))):
        text = draw(st.sampled_from(mutations))(text, draw)
    return original, text


@FUZZ
@given(mutated(LAYOUT_ONLY))
def test_layout_only_mutations_format_to_the_canonical_text(case):
    original, mutant = case
    assert format_text(mutant) == format_text(original), mutant


@FUZZ
@given(mutated(MEANING_KEPT))
def test_formatting_keeps_the_graph_and_is_idempotent(case):
    original, mutant = case
    expected = graph_facts(original)
    assert graph_facts(mutant) == expected, f"the mutation changed the network:\n{mutant}"
    formatted = format_text(mutant)
    assert format_text(formatted) == formatted, mutant
    assert graph_facts(formatted) == expected, mutant
    assert comments(formatted) == comments(mutant), mutant
    # a line is longer than 100 columns only when it holds a comment or one long item
    assert all(len(line) <= 100 or "#" in line or " -> " not in line.strip().removeprefix("->")
               for line in formatted.splitlines()), formatted


@FUZZ
@given(st.one_of(programs(), mutants()))
def test_any_text_formats_or_fails_cleanly(text):
    """Generated programs (wild arguments, unknown layers, duplicates...) and examples with
    random damage: a user error, or a result that is its own format (and passed the checks
    of format_text: same program, same comments, same graph)."""
    try:
        formatted = format_text(text)
    except CnnDslError as error:
        assert error.span is None or error.span.line >= 1
        return
    assert format_text(formatted) == formatted


def test_every_source_checks():
    assert len(SOURCES) >= 15
    for text in SOURCES:
        check_text(text)
