"""Syntax highlighting of the notation, built from the grammar's own token definitions.

`token_definitions()` reads the terminals of grammar/cnn.lark through Lark: their regexes, and
the order the parser's lexer tries them in. `TERMINAL_STYLES` says how each terminal is shown,
as a Pygments token type and a TextMate scope, and `name_style` splits the NAME terminal into
keywords, layers, labels, macros... Two highlighters are built from these:

- `CnnLexer`, the Pygments lexer registered by pyproject.toml's "pygments.lexers" entry point
  (`pygmentize -l cnn net.cnn`; ```cnn blocks in Sphinx, MkDocs, nbconvert);
- `python -m cnndsl.tools.textmate`, which writes editors/cnn.tmLanguage.json (VS Code).

So a new terminal in the grammar needs one line in TERMINAL_STYLES (building the rules fails
until it has one), and a new layer in cnndsl.ops is highlighted with no change here.
Newlines are whitespace to a highlighter: where a statement ends only matters to the parser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from pygments.lexer import Lexer
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    Whitespace,
    _TokenType,
)


class Style(NamedTuple):
    """How one kind of token is shown: a Pygments token type and a TextMate scope (None:
    whitespace, left unscoped)."""

    token: _TokenType
    scope: str | None


TERMINAL_STYLES: dict[str, Style | None] = {
    "NAME": None,  # split by name_style
    "DIMS": Style(Number, "constant.numeric.size.cnn"),  # 28x28x1, 3 × 3
    "FLOAT": Style(Number.Float, "constant.numeric.float.cnn"),
    "INT": Style(Number.Integer, "constant.numeric.integer.cnn"),
    "COMMENT": Style(Comment.Single, "comment.line.number-sign.cnn"),
    "_NL": Style(Whitespace, None),
    "ARROW": Style(Operator, "keyword.operator.arrow.cnn"),
    "STAR": Style(Operator, "keyword.operator.repeat.cnn"),  # `* n`, and a product
    "FLOORDIV": Style(Operator, "keyword.operator.arithmetic.cnn"),
    "POW": Style(Operator, "keyword.operator.arithmetic.cnn"),
    "PLUS": Style(Operator, "keyword.operator.plus.cnn"),  # a sum, and branches added
    "MINUS": Style(Operator, "keyword.operator.arithmetic.cnn"),
    "BAR": Style(Operator, "keyword.operator.branch.cnn"),
    "EQUAL": Style(Operator, "keyword.operator.assignment.cnn"),
    "COMMA": Style(Punctuation, "punctuation.separator.comma.cnn"),
    "COLON": Style(Punctuation, "punctuation.separator.label.cnn"),
    "LPAR": Style(Punctuation, "punctuation.section.parens.begin.cnn"),
    "RPAR": Style(Punctuation, "punctuation.section.parens.end.cnn"),
    "LSQB": Style(Punctuation, "punctuation.section.brackets.begin.cnn"),
    "RSQB": Style(Punctuation, "punctuation.section.brackets.end.cnn"),
    "LBRACE": Style(Punctuation, "punctuation.section.braces.begin.cnn"),
    "RBRACE": Style(Punctuation, "punctuation.section.braces.end.cnn"),
}
# the grammar's %ignore patterns have no names of their own (Lark calls them __IGNORE_n):
# they are told apart by what they match
WHITESPACE = Style(Whitespace, None)
CONTINUATION = Style(Punctuation, "constant.character.escape.line-continuation.cnn")
# a NAME is one of these, decided by name_style
KEYWORD = Style(Keyword, "keyword.control.cnn")  # network input let def train
CONSTANT = Style(Keyword.Constant, "constant.language.cnn")  # true false same valid full
LAYER = Style(Name.Builtin, "support.function.layer.cnn")  # Conv, ReLU... (cnndsl.ops)
MACRO = Style(Name.Function, "entity.name.function.macro.cnn")  # def NAME
NETWORK_NAME = Style(Name.Class, "entity.name.type.network.cnn")  # network NAME
LABEL = Style(Name.Label, "entity.name.tag.label.cnn")  # NAME: Conv(...)
ARGUMENT = Style(Name.Attribute, "variable.parameter.cnn")  # NAME = (arguments, settings, let)
OTHER_NAME = Style(Name, "variable.other.cnn")  # bindings, parameters, macro calls
ERROR = Style(Error, "invalid.illegal.cnn")  # a character no terminal matches


@dataclass(frozen=True)
class Terminal:
    name: str
    regex: str
    style: Style | None  # None for NAME


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, to cache its scanner
class TokenDefinitions:
    """The grammar's terminals as its lexer uses them."""

    #: in the order Lark's basic lexer tries them (the first that matches wins), without
    #: the reserved words, which Lark matches as NAME and then renames
    terminals: tuple[Terminal, ...]
    #: reserved word -> its terminal: {"def": "DEF", ...}
    words: dict[str, str]
    #: the terminal the words are cut from
    name_terminal: str
    #: the terminal of the whitespace between tokens on a line (an %ignore pattern)
    whitespace_terminal: str
    #: a character class of what may continue a name ('[0-9A-Z_a-z]'): a word is a keyword
    #: only when no such character follows
    name_tail: str

    def regex(self, terminal: str) -> str:
        return next(t.regex for t in self.terminals if t.name == terminal)


@functools.cache
def token_definitions() -> TokenDefinitions:
    """Read the terminals from grammar/cnn.lark (the parser's grammar file) through Lark."""
    from lark import Lark
    from lark.lexer import PatternStr

    from cnndsl.parser import grammar_text

    lexer = Lark(grammar_text(), parser=None, lexer="basic").lexer
    ordered = list(lexer.terminals)  # sorted by Lark: priority, then longest pattern first
    regexes = [t for t in ordered if not isinstance(t.pattern, PatternStr)]
    words, owners = {}, set()
    for word in (t for t in ordered if isinstance(t.pattern, PatternStr)):
        for owner in regexes:  # Lark's rule: a string its regex also matches is renamed
            if (owner.priority == word.priority
                    and re.fullmatch(owner.pattern.to_regexp(), word.pattern.value)):
                words[word.pattern.value] = word.name
                owners.add(owner.name)
    if len(owners) > 1:
        raise ValueError(f"reserved words are cut from several terminals: {sorted(owners)}")
    name_terminal = owners.pop() if owners else "NAME"
    terminals = tuple(Terminal(t.name, t.pattern.to_regexp(), _terminal_style(t))
                      for t in ordered if t.name not in words.values())
    name_regex = next(t.regex for t in terminals if t.name == name_terminal)
    whitespace = next(t.name for t in terminals if t.style is WHITESPACE)
    return TokenDefinitions(terminals, words, name_terminal, whitespace,
                            _name_tail(name_regex, next(iter(words), "a")))


def _terminal_style(terminal) -> Style | None:
    if terminal.name in TERMINAL_STYLES:
        return TERMINAL_STYLES[terminal.name]
    regex = terminal.pattern.to_regexp()
    if terminal.name.startswith("__IGNORE") and re.fullmatch(regex, " \t"):
        return WHITESPACE
    if terminal.name.startswith("__IGNORE") and re.fullmatch(regex, "\\\n"):
        return CONTINUATION
    raise KeyError(f"terminal {terminal.name} ({regex}) of grammar/cnn.lark has no highlighting "
                   "style: add it to cnndsl.highlight.TERMINAL_STYLES")


def _name_tail(name_regex: str, word: str) -> str:
    """The characters that extend a name, as a regex class; a name is ASCII in the grammar
    (a TextMate `\\b` would also count letters like 'é' as part of a word)."""
    extends = [chr(c) for c in range(32, 127) if re.fullmatch(name_regex, word + chr(c))]
    for sample in "éßж٣µ":
        if re.fullmatch(name_regex, word + sample):
            raise ValueError(f"names may contain {sample!r}: extend _name_tail beyond ASCII")
    return "[" + "".join(_ranges(extends)) + "]"


def _ranges(chars: list[str]) -> Iterator[str]:
    """'0123abc_' -> '0-3', 'a-c', '_' (runs of 3 or more as ranges)."""
    codes = sorted(ord(c) for c in chars)
    start = 0
    while start < len(codes):
        end = start
        while end + 1 < len(codes) and codes[end + 1] == codes[end] + 1:
            end += 1
        run = [re.escape(chr(c)) for c in codes[start:end + 1]]
        yield f"{run[0]}-{run[-1]}" if len(run) >= 3 else "".join(run)
        start = end + 1


# ---- naming the names --------------------------------------------------------------------


def layer_names() -> list[str]:
    """The layers a file can call, as registered now (a layer added to cnndsl.ops.OPS at
    run time is highlighted too)."""
    from cnndsl.ops import user_op_names

    return user_op_names()


def constant_names() -> list[str]:
    """Reserved values (true false same valid full: cnndsl.evaluate.RESERVED) and the words
    layer arguments choose from (nearest, bilinear, channels, all...)."""
    from cnndsl.evaluate import RESERVED, choice_words

    return [*RESERVED, *choice_words()]


def name_style(value: str, before: str | None, after: str | None, words, constants,
               layers) -> Style:
    """The style of a NAME token. `before` / `after`: the terminal right before / after it
    on its line, with only whitespace between (None if there is none). The TextMate grammar
    encodes the same decisions, in the same order, as regexes."""
    if value in words:
        return KEYWORD
    if before == "DEF":
        return MACRO
    if before == "NETWORK":
        return NETWORK_NAME
    if after == "COLON":
        return LABEL
    if after == "EQUAL":
        return ARGUMENT
    if value in constants:
        return CONSTANT
    if value in layers:
        return LAYER
    return OTHER_NAME


# ---- the lexer -------------------------------------------------------------------------


class RawToken(NamedTuple):
    start: int
    terminal: str | None  # None: no terminal matches here (one character)
    value: str


@functools.cache
def _scanner(definitions: TokenDefinitions) -> re.Pattern:
    # group names t0, t1... since Lark's own names (__IGNORE_0) are not ours to rely on
    return re.compile("|".join(f"(?P<t{i}>{t.regex})"
                               for i, t in enumerate(definitions.terminals)))


def scan(text: str, definitions: TokenDefinitions | None = None) -> Iterator[RawToken]:
    """Cut `text` into the grammar's tokens exactly as the parser's lexer does, ignored
    ones (whitespace, comments, line continuations) included; a character no terminal
    matches becomes a RawToken with terminal None, and scanning goes on after it."""
    definitions = definitions or token_definitions()
    scanner = _scanner(definitions)
    terminals = definitions.terminals
    position = 0
    while position < len(text):
        match = scanner.match(text, position)
        if match is None:
            yield RawToken(position, None, text[position])
            position += 1
            continue
        terminal = terminals[int(match.lastgroup[1:])].name
        value = match.group()
        if terminal == definitions.name_terminal:
            terminal = definitions.words.get(value, terminal)
        yield RawToken(position, terminal, value)
        position = match.end()


def styled_tokens(text: str) -> Iterator[tuple[int, Style, str]]:
    """(position, style, text) for every token of `text`, whitespace and errors included."""
    definitions = token_definitions()
    styles = {t.name: t.style for t in definitions.terminals}
    constants, layers = set(constant_names()), set(layer_names())
    tokens = list(scan(text, definitions))

    def neighbour(index: int, step: int) -> str | None:
        """The terminal next to tokens[index] in direction `step`, across whitespace on
        the same line only (as the TextMate grammar, which sees one line at a time)."""
        index += step
        if 0 <= index < len(tokens) and tokens[index].terminal == definitions.whitespace_terminal:
            index += step
        return tokens[index].terminal if 0 <= index < len(tokens) else None

    names = [index for index, token in enumerate(tokens)
             if token.terminal == definitions.name_terminal]
    macros = {tokens[index].value for index in names if neighbour(index, -1) == "DEF"}
    for index, token in enumerate(tokens):
        if token.terminal is None:
            style = ERROR
        elif token.terminal == definitions.name_terminal:
            style = name_style(token.value, neighbour(index, -1), neighbour(index, +1),
                               definitions.words, constants, layers)
            if style is OTHER_NAME and token.value in macros:
                style = MACRO  # a call of a macro defined in this file
        else:
            style = styles.get(token.terminal, KEYWORD)  # the words: DEF, NETWORK...
        yield token.start, style, token.value


class CnnLexer(Lexer):
    """Pygments lexer for cnndsl's `.cnn` network files (grammar/cnn.lark)."""

    name = "cnn"
    aliases = ("cnn", "cnndsl")
    filenames = ("*.cnn",)
    mimetypes = ("text/x-cnn",)

    def get_tokens_unprocessed(self, text):
        for start, style, value in styled_tokens(text):
            # a token's trailing whitespace (the line break after a `\`) shows as whitespace
            body = value.rstrip() if style.token is not Whitespace else value
            if body:
                yield start, style.token, body
            if len(body) < len(value):
                yield start + len(body), Whitespace, value[len(body):]
