"""Reading a .cnn file: text or a located error, never a traceback."""

from __future__ import annotations

from pathlib import Path

from cnndsl.errors import CnnDslError, Span


class FileError(CnnDslError):
    """The file cannot be read, or is not text."""


def read_source(path: str) -> str:
    """The text of a .cnn file; FileError (whose str() names `path`) otherwise."""
    try:
        return _read(path)
    except FileError as error:
        raise error.located(None, str(path)) from None


def _read(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise FileError(f"cannot read '{path}': it is a directory") from None
    except OSError as error:
        raise FileError(f"cannot read '{path}': {error.strerror or error}") from None
    if b"\0" in data:
        raise FileError("this is not a text file (it contains NUL bytes)",
                        _span_at(data, data.index(b"\0")),
                        hint="cnndsl reads .cnn network descriptions written as UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileError(f"this is not UTF-8 text (byte 0x{data[error.start]:02x})",
                        _span_at(data, error.start),
                        hint="save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _span_at(data: bytes, offset: int) -> Span:
    """Line and column (in characters, not bytes) of a byte offset."""
    line = data.count(b"\n", 0, offset) + 1
    line_start = data.rfind(b"\n", 0, offset) + 1
    before = data[line_start:offset].decode("utf-8", errors="replace")
    return Span.at(line, len(before) + 1)
