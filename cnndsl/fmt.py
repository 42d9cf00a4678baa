"""`cnndsl fmt`: one canonical layout for .cnn files, as black and gofmt give Python and Go.

`format_text(text) -> text`. The layout is printed from the AST (`cnndsl.parser.parse`);
the source is consulted only for what the AST does not keep: comments, where the user broke
a chain, which bracket a group uses and how a number was spelt. The style
(docs/language.md, "cnndsl fmt"):

- `->` for every arrow, `*` for repetition and multiplication, `x` in sizes (`3x3`);
- one space around arrows, `|`, `+`, `=` of `let`/`train`, binary operators (`k // 2`);
  none around `=` of a keyword argument (`stride=2`) or `^`, which binds tightest (`2^31`);
- arguments: positional ones first, then keywords in the order of the layer's table (a
  macro's: its parameters'), when that cannot change what the call means;
- expressions with the fewest parentheses that keep their meaning;
- a line break the user wrote next to an arrow is kept, the arrow moved to the start of the
  next line; a chain longer than WIDTH columns is broken before the arrows that overflow;
  continuation lines are indented 2 more than the chain's first item;
- braces (`{ A | B }`, `train { }`) on one line, unless the source breaks the line right
  after `{`, they hold a comment, or they do not fit: then one branch (setting) per line;
- comments kept where they are (a comment inside an expression moves to the end of its
  line); at most one blank line between statements, none inside them.

Before returning, the result is checked as black checks its output: it must parse to the
same program, keep every comment, compile to the identical graph (when the input compiles)
and format to itself. If not, `UnsafeFormat` (a bug in cnndsl, not the user's) is raised.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass

from cnndsl import ast
from cnndsl.errors import CnnDslError, ParseError, Span
from cnndsl.parser import parse

WIDTH = 100  # columns; as the project's Python (ruff's line-length)
INDENT = 2  # continuation lines of a chain, under its first item
BLOCK = 4  # branches and settings of braces written over several lines
ARROW = "->"
END = (float("inf"), float("inf"))

# operator precedence, as grammar/cnn.lark: sum < product < unary minus < power < primary
SUM, PRODUCT, UNARY, POWER, PRIMARY = 1, 2, 3, 4, 5
CLOSING = {"(": ")", "[": "]"}


class UnsafeFormat(Exception):
    """The formatted text would not mean the same as the input: a bug in cnndsl's
    formatter. Nothing must be written."""


def format_text(text: str, filename: str = "<string>") -> str:
    """`text` (.cnn source) in the canonical layout. A file that does not parse raises
    its located ParseError (str() is the report `cnndsl check` prints); UnsafeFormat if the
    result would mean something else (never expected)."""
    try:
        return _format(text)
    except CnnDslError as error:
        raise error.located(text, filename) from None
    except RecursionError:  # the parser's own limit is close: the passes here recurse too
        raise ParseError("the file nests too deeply to format (an expression or chain "
                         "inside hundreds of others)", None,
                         hint="split the expression with 'let', or use a repetition "
                              "('* n')").located(text, filename) from None


def _format(text: str) -> str:
    program = parse(text)
    newline = "\r\n" if text.split("\n", 1)[0].endswith("\r") else "\n"
    text = text.replace("\r\n", "\n")
    comments = find_comments(text)
    result = _Printer(text, program, comments).program()
    _verify(text, program, comments, result)
    return result.replace("\n", newline)


# ---- comments ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comment:
    """`# ...` at 1-based (line, col); own_line: nothing but blanks before it on its line."""

    line: int
    col: int
    text: str
    own_line: bool
    blank_before: bool  # the line above is blank (kept between statements)

    @property
    def position(self) -> tuple[int, int]:
        return (self.line, self.col)


def find_comments(text: str) -> list[Comment]:
    """Every comment of a file that parses, in order. The language has no strings, so
    every '#' starts a comment that runs to the end of its line."""
    lines = text.split("\n")  # as Lark counts lines
    found = []
    for number, line in enumerate(lines, start=1):
        at = line.find("#")
        if at < 0:
            continue
        blank_before = number > 1 and not lines[number - 2].strip()
        found.append(Comment(number, at + 1, line[at:].rstrip(), not line[:at].strip(),
                             blank_before))
    return found


# ---- the printer ---------------------------------------------------------------------------

def _start(node) -> tuple[int, int]:
    return (node.span.line, node.span.col)


def _last_char(node) -> tuple[int, int]:
    """Where the closing bracket of a bracketed node is (its span's last character)."""
    return (node.span.end_line, node.span.end_col - 1)


class _Printer:
    """Writes the program line by line. Comments are emitted at "flush points": before a
    statement, an item of a chain after an arrow, a branch, an argument, a setting, or a
    closing bracket; each is a place where a line break is allowed. A comment goes out at
    the first flush point after it in the source, so it stays where it was, or (inside an
    expression) moves to the end of that line."""

    def __init__(self, text: str, program: ast.Program, comments: list[Comment]):
        self.text = text
        self.source_lines = text.split("\n")
        self.program_node = program
        self.comments = comments
        self.comment_positions = [c.position for c in comments]
        self.next_comment = 0
        self.done: list[str] = []
        self.line = ""
        self.flat_cache: dict[int, str | None] = {}
        self.macros = _macro_parameters(program)

    # ---- output --------------------------------------------------------------------
    @property
    def col(self) -> int:
        return len(self.line)

    def write(self, text: str) -> None:
        self.line += text

    def newline(self, indent: int) -> None:
        self.done.append(self.line.rstrip())
        self.line = " " * indent

    def line_indent(self) -> int:
        return len(self.line) - len(self.line.lstrip(" "))

    def break_to(self, indent: int, comments=(), comment_indent: int | None = None) -> None:
        """Emit `comments` and start a new line at `indent`: a comment that followed code in
        the source follows the current line's code; the others get lines of their own."""
        at = indent if comment_indent is None else comment_indent
        for comment in comments:
            if comment.own_line or not self.line.strip():
                if self.line.strip():
                    self.newline(at)
                self.line = " " * at
            else:
                self.write("  ")
            self.write(comment.text)
            self.newline(at)
        if self.line.strip():
            self.newline(indent)
        else:
            self.line = " " * indent

    def pending(self, position) -> list[Comment]:
        """The comments not yet emitted that come before `position` in the source."""
        end = bisect.bisect_left(self.comment_positions, position, lo=self.next_comment)
        taken = self.comments[self.next_comment:end]
        self.next_comment = end
        return taken

    def has_comment(self, span) -> bool:
        at = bisect.bisect_left(self.comment_positions, (span.line, span.col))
        return at < len(self.comments) and \
            self.comment_positions[at] < (span.end_line, span.end_col)

    # ---- statements ----------------------------------------------------------------
    def program(self) -> str:
        for statement in self.program_node.statements:
            self.top_level_comments(self.pending(_start(statement)))
            self.start_statement(self.blank_before(statement.span.line))
            self.statement(statement)
        self.top_level_comments(self.pending(END))
        if self.line.strip():
            self.done.append(self.line.rstrip())
        while self.done and not self.done[-1]:
            self.done.pop()
        return "".join(line + "\n" for line in self.done)

    def blank_before(self, line: int) -> bool:
        return line > 1 and not self.source_lines[line - 2].strip()

    def start_statement(self, blank: bool) -> None:
        if self.line.strip():
            self.newline(0)
        self.line = ""
        if blank and self.done and self.done[-1]:
            self.done.append("")

    def top_level_comments(self, comments: list[Comment]) -> None:
        for comment in comments:
            if comment.own_line or not self.line.strip():
                self.start_statement(comment.blank_before)
            else:
                self.write("  ")
            self.write(comment.text)
            self.newline(0)

    def statement(self, statement) -> None:
        if isinstance(statement, ast.NetworkStmt):
            self.write(f"network {statement.name}")
        elif isinstance(statement, ast.InputStmt):
            self.write(f"input {self.expr(statement.shape)}")
        elif isinstance(statement, ast.LetStmt):
            self.write("let " + ", ".join(f"{b.name} = {self.expr(b.value)}"
                                          for b in statement.bindings))
        elif isinstance(statement, ast.DefStmt):
            self.definition(statement)
        elif isinstance(statement, ast.TrainStmt):
            self.train(statement)
        else:
            self.chain(statement.chain, block=0, cont=INDENT, reserve=0)

    def definition(self, statement: ast.DefStmt) -> None:
        self.write(f"def {statement.name}")
        if statement.params is not None:
            items = [((s.line, s.col), name) for s, name in zip(statement.param_spans,
                                                                statement.params)]
            after = statement.param_spans[-1] if statement.params else statement.name_span
            self.bracket_list(items, self.closing_paren_after(after))
        self.write(" = ")
        self.chain(statement.body, block=0, cont=INDENT, reserve=0)

    def closing_paren_after(self, span) -> tuple[int, int]:
        """The ')' that closes a parameter list whose last part ends at span's end: only
        blanks, commas, comments and backslash continuations can lie between."""
        line, col = span.end_line, span.end_col
        while True:
            text = self.source_lines[line - 1]
            rest = text[col - 1:]
            found = re.match(r"[\s,(\\]*(\)|#|$)", rest)
            if found.group(1) == ")":
                return (line, col + found.start(1))
            line, col = line + 1, 1

    def train(self, statement: ast.TrainStmt) -> None:
        flat = self.flat_train(statement)
        if flat is not None and self.col + len(flat) <= WIDTH:
            self.write(flat)
            return
        self.write("train {")
        for setting in statement.settings:
            self.break_to(BLOCK, self.pending(_start(setting)))
            self.write(f"{setting.name} = {self.expr(setting.value)}")
        self.break_to(0, self.pending(_last_char(statement)), comment_indent=BLOCK)
        self.write("}")

    def flat_train(self, statement: ast.TrainStmt) -> str | None:
        settings = statement.settings
        if self.has_comment(statement.span) or (
                settings and settings[0].span.line > statement.span.line):
            return None
        if not settings:
            return "train { }"
        inner = ", ".join(f"{s.name} = {self.expr(s.value)}" for s in settings)
        return f"train {{ {inner} }}"

    # ---- chains --------------------------------------------------------------------
    def chain(self, chain: ast.Chain, block: int, cont: int, reserve: int) -> None:
        """Write `chain` from the current column. `block`: the indentation braces that open
        on the current line close at; `cont`: the column of the arrows that start its
        continuation lines; `reserve`: columns that follow the chain on its last line."""
        items = chain.items
        for i, item in enumerate(items):
            extra = reserve if i == len(items) - 1 else 0
            if i > 0:
                comments = self.pending(_start(item))
                flat = self.flat_item(item)
                width = len(flat) + extra if flat is not None else self.head_width(item)
                overflows = self.col + len(f" {ARROW} ") + width > WIDTH
                if comments or _broken_before(items, i) or overflows:
                    self.break_to(cont, comments)
                    self.write(f"{ARROW} ")
                    block = cont
                else:
                    self.write(f" {ARROW} ")
            self.item(item, block, extra)

    def item(self, node, block: int, reserve: int) -> None:
        flat = self.flat_item(node)
        if flat is not None and self.col + len(flat) + reserve <= WIDTH:
            self.write(flat)
        elif isinstance(node, ast.Call):
            self.call(node)
        elif isinstance(node, ast.Group):
            self.group(node, block, reserve)
        elif isinstance(node, ast.Repeat):
            suffix = f" * {self.count(node.count)}"
            self.item(node.body, block, reserve + len(suffix))
            self.write(suffix)
        else:
            self.branches(node, block)

    def head_width(self, node) -> int:
        """Columns of an item's first line, at least (its own layout may add to them)."""
        flat = self.flat_item(node)
        if flat is not None:
            return len(flat)
        if isinstance(node, ast.Call):
            return len(self.call_head(node)) + 1
        if isinstance(node, ast.Repeat):
            return self.head_width(node.body)
        if isinstance(node, ast.Group):
            first = node.chain.items[0]
            opening = Span(node.span.line, node.span.col, first.span.line, first.span.col)
            return 1 if self.has_comment(opening) else 1 + self.head_width(first)
        return 1  # braces open on their own line

    def group(self, node: ast.Group, block: int, reserve: int) -> None:
        opening = self.text_at(_start(node))
        self.write(opening)
        align, closing_indent = self.col, self.col - 1
        comments = self.pending(_start(node.chain.items[0]))
        if comments:  # a comment after the bracket: the group's lines hang below it
            closing_indent = self.line_indent()
            align = closing_indent + BLOCK
            self.break_to(align, comments)
        self.chain(node.chain, block, align + INDENT, reserve + 1)
        comments = self.pending(_last_char(node))
        if comments:
            self.break_to(closing_indent, comments, comment_indent=align)
        self.write(CLOSING[opening])

    def branches(self, node: ast.Branches, block: int) -> None:
        """Over several lines: `{` ends its line, each branch starts one (the second and
        later after their `|` or `+`), `}` starts the last."""
        self.write("{")
        for j, branch in enumerate(node.branches):
            comments = self.pending(_start(branch))
            self.break_to(block + BLOCK if j == 0 else block + BLOCK - 2, comments,
                          comment_indent=block + BLOCK)
            if j:
                self.write(f"{node.ops[j - 1][0]} ")
            self.chain(branch, block + BLOCK, block + BLOCK + INDENT, 0)
        self.break_to(block, self.pending(_last_char(node)), comment_indent=block + BLOCK)
        self.write("}")

    def call(self, node: ast.Call) -> None:
        self.write(self.call_head(node))
        if node.has_parens:
            items = [(_start(arg), self.arg(arg)) for arg in self.ordered_args(node)]
            self.bracket_list(items, _last_char(node))

    def bracket_list(self, items, closing) -> None:
        """`(a, b, c)`, broken only where comments are: continuation lines line up after
        the '(', or hang 4 columns in when a comment follows the '(' itself.
        items: [(source position, text)]; closing: the ')' position."""
        self.write("(")
        align, closing_indent = self.col, self.col - 1
        for i, (position, text) in enumerate(items):
            if i:
                self.write(",")
            comments = self.pending(position)
            if comments and i == 0:  # a comment after '(': the items hang below it
                closing_indent = self.line_indent()
                align = closing_indent + BLOCK
            if comments:
                self.break_to(align, comments)
            elif i:
                self.write(" ")
            self.write(text)
        comments = self.pending(closing)
        if comments:
            self.break_to(closing_indent, comments, comment_indent=align)
        self.write(")")

    # ---- one line ------------------------------------------------------------------
    def flat_item(self, node) -> str | None:
        """The item on one line, or None when it must take several: it holds a comment, a
        line break the user wrote next to an arrow, or braces broken after `{`."""
        key = id(node)
        if key not in self.flat_cache:
            self.flat_cache[key] = None if self.has_comment(node.span) else self._flat(node)
        return self.flat_cache[key]

    def _flat(self, node) -> str | None:
        if isinstance(node, ast.Call):
            head = self.call_head(node)
            if not node.has_parens:
                return head
            return f"{head}({', '.join(self.arg(a) for a in self.ordered_args(node))})"
        if isinstance(node, ast.Group):
            inner = self.flat_chain(node.chain)
            opening = self.text_at(_start(node))
            return None if inner is None else f"{opening}{inner}{CLOSING[opening]}"
        if isinstance(node, ast.Repeat):
            body = self.flat_item(node.body)
            return None if body is None else f"{body} * {self.count(node.count)}"
        if node.branches[0].span.line > node.span.line:
            return None  # the user broke the line after '{': keep the braces open
        chains = [self.flat_chain(branch) for branch in node.branches]
        if None in chains:
            return None
        parts = [chains[0]]
        for (op, _), text in zip(node.ops, chains[1:]):
            parts.append(f"{op} {text}")
        return "{ " + " ".join(parts) + " }"

    def flat_chain(self, chain: ast.Chain) -> str | None:
        if any(_broken_before(chain.items, i) for i in range(1, len(chain.items))):
            return None
        items = [self.flat_item(item) for item in chain.items]
        return None if None in items else f" {ARROW} ".join(items)

    def call_head(self, node: ast.Call) -> str:
        return f"{node.label}: {node.name}" if node.label else node.name

    def arg(self, arg: ast.Arg) -> str:
        value = self.expr(arg.value)
        return value if arg.name is None else f"{arg.name}={value}"

    def ordered_args(self, node: ast.Call) -> tuple[ast.Arg, ...]:
        """Positional arguments, then keywords in the order the layer (or macro) declares
        its parameters; as written when reordering could change the call or its errors:
        an unknown or repeated keyword, a positional after a keyword, a comment inside."""
        args = node.args
        keywords = [a for a in args if a.name is not None]
        if len(keywords) < 2:
            return args
        positional = args[: len(args) - len(keywords)]
        names = [a.name for a in keywords]
        order = self.parameter_order(node.name)
        if any(a.name is None for a in args[len(positional):]) or order is None or \
                len(set(names)) < len(names) or not set(names) <= set(order) or \
                self.has_comment(node.span):
            return args
        return tuple(positional) + tuple(sorted(keywords, key=lambda a: order.index(a.name)))

    def parameter_order(self, name: str) -> list[str] | None:
        if name in self.macros:
            return self.macros[name]
        from cnndsl.ops import OPS

        op = OPS.get(name)
        if op is None or not op.user_callable or not dataclasses.is_dataclass(op.Params):
            return None
        return [f.name for f in dataclasses.fields(op.Params) if "kind" in f.metadata]

    def count(self, count) -> str:
        """A repetition count: a literal whole number, a size or a name as it is; anything
        else in parentheses (the grammar asks for them)."""
        plain = isinstance(count, (ast.Name, ast.Dims)) or (
            isinstance(count, ast.Num) and isinstance(count.value, int))
        return self.expr(count) if plain else f"({self.expr(count)})"

    def text_at(self, position) -> str:
        line, col = position
        return self.source_lines[line - 1][col - 1]

    # ---- expressions ---------------------------------------------------------------
    def expr(self, node, need: int = 0) -> str:
        """`node` with the fewest parentheses: those around a part whose precedence is
        below what its place needs."""
        text, precedence = self._expr(node)
        return f"({text})" if precedence < need else text

    def _expr(self, node) -> tuple[str, int]:
        if isinstance(node, ast.Num):
            return self.number(node), PRIMARY
        if isinstance(node, ast.Dims):
            return "x".join(str(v) for v in self.dims(node)), PRIMARY
        if isinstance(node, ast.Name):
            return node.id, PRIMARY
        if isinstance(node, ast.TupleExpr):
            items = [self.expr(item) for item in node.items]
            return f"({', '.join(items)}{',' if len(items) == 1 else ''})", PRIMARY
        if isinstance(node, ast.Neg):
            return f"-{self.expr(node.operand, UNARY)}", UNARY
        if node.op == "^":  # right associative; its left side is a primary
            left, right = self.expr(node.left, PRIMARY), self.expr(node.right, UNARY)
            return f"{left}^{right}", POWER
        level = SUM if node.op in "+-" else PRODUCT
        left, right = self.expr(node.left, level), self.expr(node.right, level + 1)
        return f"{left} {node.op} {right}", level

    def number(self, node: ast.Num) -> str:
        """As written (0.5 stays 0.5, 5e-4 stays 5e-4), exponent in lower case."""
        line = self.source_lines[node.span.line - 1]
        return line[node.span.col - 1: node.span.end_col - 1].lower()

    def dims(self, node: ast.Dims) -> list[str]:
        line = self.source_lines[node.span.line - 1]
        return re.split(r"\s*[x×]\s*", line[node.span.col - 1: node.span.end_col - 1])


def _broken_before(items, i: int) -> bool:
    """The source has a line break between item i-1 and item i of a chain."""
    return items[i - 1].span.end_line < items[i].span.line


def _macro_parameters(program: ast.Program) -> dict[str, list[str]]:
    """{macro: its parameters}, for macros defined once (twice is an error of its own)."""
    seen: dict[str, list[str]] = {}
    twice = set()
    for statement in program.statements:
        if isinstance(statement, ast.DefStmt):
            if statement.name in seen:
                twice.add(statement.name)
            seen[statement.name] = list(statement.params or ())
    return {name: params for name, params in seen.items() if name not in twice}


# ---- the safety check ----------------------------------------------------------------------

def _verify(text: str, program: ast.Program, comments: list[Comment], result: str) -> None:
    """Refuse a result that parses to another program, loses a comment, compiles to another
    graph, or is not its own format (the checks black makes of its output)."""
    try:
        formatted = parse(result)
    except CnnDslError as error:
        raise UnsafeFormat(f"the formatted text does not parse: {error.message} at "
                           f"{error.span}") from None
    if _shape(program) != _shape(formatted):
        raise UnsafeFormat("the formatted text parses to another program")
    kept = find_comments(result)
    if [c.text for c in comments] != [c.text for c in kept]:
        raise UnsafeFormat("the formatted text does not keep every comment")
    difference = _graph_difference(text, result)
    if difference:
        raise UnsafeFormat(f"the formatted text compiles to another network: {difference}")
    if _Printer(result, formatted, kept).program() != result:
        raise UnsafeFormat("formatting the formatted text changes it again")


def _shape(node):
    """The AST without source positions, keyword arguments in name order (when unique)."""
    if isinstance(node, tuple):
        return tuple(_shape(item) for item in node)
    if isinstance(node, Span):
        return None
    if isinstance(node, ast.Num):
        return ("Num", type(node.value).__name__, node.value)
    if isinstance(node, ast.Call):
        positional = [a for a in node.args if a.name is None]
        keywords = [a for a in node.args if a.name is not None]
        names = [a.name for a in keywords]
        trailing = node.args[len(positional):] == tuple(keywords)
        if trailing and len(set(names)) == len(names):
            keywords.sort(key=lambda a: a.name)
            args = tuple(positional + keywords)
        else:
            args = node.args
        return ("Call", node.name, node.label, node.has_parens, _shape(args))
    if dataclasses.is_dataclass(node):
        return (type(node).__name__, *(_shape(getattr(node, f.name))
                                       for f in dataclasses.fields(node) if "span" not in f.name))
    return node


def _graph_difference(text: str, result: str) -> str | None:
    """The first difference between the graphs the two texts compile to; None when equal
    or when the input does not compile (its parse was compared already)."""
    from cnndsl.frontend import check_text

    try:
        before = check_text(text)
    except CnnDslError:
        return None
    try:
        after = check_text(result)
    except CnnDslError as error:
        return f"it no longer compiles ({error.message})"
    nodes_before, nodes_after = list(before.nodes), list(after.nodes)
    if nodes_before != nodes_after:
        return f"layers {nodes_before[:50]} became {nodes_after[:50]}"
    for name in nodes_before:
        old, new = _node_facts(before.nodes[name]), _node_facts(after.nodes[name])
        if old != new:
            key = _first_difference(old, new)
            return f"layer {name}: {key} {old.get(key)!r} became {new.get(key)!r}"
    old, new = _graph_facts(before.graph), _graph_facts(after.graph)
    if old != new:
        key = _first_difference(old, new)
        return f"{key} {old.get(key)!r} became {new.get(key)!r}"
    return None


def _first_difference(old: dict, new: dict) -> str:
    """The key that differs, what the layer is before what follows from it."""
    first = ["op", "params", "inputs", "label", "written", "scopes", "shape"]
    keys = first + sorted((set(old) | set(new)) - set(first))
    return next(k for k in keys if old.get(k) != new.get(k))


def _node_facts(attrs: dict) -> dict:
    facts = {key: value for key, value in attrs.items() if not key.endswith("span")}
    facts["scopes"] = tuple((s.id, s.kind, s.label, s.index, s.count)
                            for s in attrs.get("scopes", ()))
    return facts


def _graph_facts(attrs: dict) -> dict:
    facts = dict(attrs)
    facts["used_bindings"] = sorted(attrs.get("used_bindings", ()))  # keyword order
    return facts
