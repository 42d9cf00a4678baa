"""User-facing errors: every mistake in a .cnn file is data with a location.

`CnnDslError(message, span, hint)` carries what went wrong and where. `format(source,
filename)` renders it as a compiler would::

    net.cnn:3:14: error: Conv 'conv3': kernel 5x5 is larger than its padded input 3x3
     3 | block(64) -> Conv(32, 5x5, pad=valid)
       |              ^^^^^^^^^^^^^^^^^^^^^^^^
    hint: use pad=same, a smaller kernel, or less pooling before this layer
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """1-based line/column of the first character; end is exclusive (as Lark's meta)."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def at(line: int, col: int, length: int = 1) -> Span:
        return Span(line, col, line, col + max(length, 1))

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


class CnnDslError(Exception):
    """An error in the user's file or data (exit status 1, never a traceback)."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: tuple[tuple[str, Span | None], ...] = ()):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)
        # set by `located()` once the text the error is in is known, so that str(e) in
        # Python is the same report the CLI prints
        self.source: str | None = None
        self.filename: str | None = None

    def located(self, source: str | None, filename: str) -> CnnDslError:
        """Remember the text and file this error is in (the first call wins)."""
        if self.filename is None:
            self.source, self.filename = source, filename
        return self

    def __str__(self) -> str:
        if self.filename is None:
            return self.message
        return self.format(self.source, self.filename)

    def with_note(self, note: str, span: Span | None) -> CnnDslError:
        self.notes = self.notes + ((note, span),)
        return self

    def format(self, source: str | None = None, filename: str = "<input>") -> str:
        lines = source_lines(source) if source is not None else []
        out = [_header(filename, self.span, f"error: {self.message}")]
        out += _excerpt(lines, self.span)
        for note, span in self.notes:
            out.append(_header(filename, span, f"note: {note}"))
            out += _excerpt(lines, span)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


class ParseError(CnnDslError):
    """The text is not in the language (syntax)."""


class BindingError(CnnDslError):
    """A name is unbound, defined twice, or used where it may not be."""


class UnknownOpError(CnnDslError):
    """A layer name that is neither in the registry nor a `def`."""


class ArgumentError(CnnDslError):
    """A layer or macro called with arguments it does not take."""


class ShapeError(CnnDslError):
    """A layer cannot take the shape it receives."""


class GraphError(CnnDslError):
    """The file's structure is wrong (no body, two inputs, mixed branch operators...)."""


class ShapeMismatch(Exception):
    """Raised by an op's shape rule, without location; the shape pass adds layer and span."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def did_you_mean(word: str, candidates, what: str = "") -> str | None:
    """A hint naming the closest candidates, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not close:
        lower = {c.lower(): c for c in candidates}
        if word.lower() in lower:
            close = [lower[word.lower()]]
    if not close:
        return None
    names = " or ".join(f"'{c}'" for c in close)
    return f"did you mean {names}?" + (f" ({what})" if what else "")


def _header(filename: str, span: Span | None, text: str) -> str:
    where = f"{filename}:{span.line}:{span.col}" if span else filename
    return f"{where}: {text}"


def source_lines(source: str) -> list[str]:
    """The lines as the parser counts them: split at '\n' only ('\f' is white space)."""
    lines = source.split("\n")
    if lines[-1] == "":
        lines.pop()  # as str.splitlines(): no line after the last line break
    return [line.removesuffix("\r") for line in lines]


EXCERPT_WIDTH = 200  # a longer source line is shown as a window around the caret


def _excerpt(lines: list[str], span: Span | None) -> list[str]:
    if span is None or not (1 <= span.line <= len(lines)):
        return []
    text = lines[span.line - 1]
    end = span.end_col if span.end_line == span.line else len(text) + 1
    width = max(1, min(end, len(text) + 1) - span.col)
    if len(text) > EXCERPT_WIDTH:
        text, span, width = _window(text, span, width)
    # keep tabs in the caret line so the caret lines up under the text
    pad = "".join(ch if ch == "\t" else " " for ch in text[: span.col - 1])
    gutter = str(span.line)
    return [f" {gutter} | {text}", f" {' ' * len(gutter)} | {pad}{'^' * width}"]


def _window(text: str, span: Span, width: int) -> tuple[str, Span, int]:
    """About EXCERPT_WIDTH characters of `text` around the caret, '…' where it is cut."""
    width = min(width, EXCERPT_WIDTH // 2)
    start = max(0, span.col - 1 - EXCERPT_WIDTH // 4)
    stop = min(len(text), start + EXCERPT_WIDTH)
    start = max(0, min(start, stop - EXCERPT_WIDTH))
    head = "…" if start > 0 else ""
    tail = "…" if stop < len(text) else ""
    col = span.col - start + len(head)
    return head + text[start:stop] + tail, Span.at(span.line, col, width), width
