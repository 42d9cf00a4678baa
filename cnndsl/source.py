"""Reading a .cnn file: text or a located error, never a traceback.

Also the two guards every file cnndsl reads goes through: `open_regular` (a FIFO, a device
or a socket would block or never end, so only regular files are opened) and `printable`
(text from a file, shown on a terminal, with its control characters escaped)."""

from __future__ import annotations

import os
import stat

from cnndsl.errors import CnnDslError, Span

MAX_SOURCE_BYTES = 10 * 2**20   # a network description; 100,000 layers fit in a few MB


class FileError(CnnDslError):
    """The file cannot be read, or is not text."""


def printable(text: str, keep: str = "") -> str:
    """text with every character that is not printable (ESC and the other control codes,
    bidirectional overrides, ...) shown as a Python escape, \\x1b, except those in keep."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable() or c in keep:
            out.append(c)
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000
                       else f"\\U{n:08x}")
    return "".join(out)


def file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', ... for a stat mode that is not a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike):
    """A binary file object for path, which must be a regular file; OSError otherwise
    (NotRegularFile, whose strerror says what it is, for a FIFO, a device, a folder...).
    Opened with O_NONBLOCK so a FIFO swapped in after the check cannot block the open."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, file_kind(mode))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, file_kind(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class NotRegularFile(OSError):
    """open_regular was given a FIFO, a device, a socket or a folder."""

    def __init__(self, path, kind: str):
        super().__init__(f"it is {kind}, not a regular file")
        self.strerror = f"it is {kind}, not a regular file"
        self.filename = os.fspath(path)
        self.kind = kind


def read_source(path: str) -> str:
    """The text of a .cnn file; FileError (whose str() names `path`) otherwise."""
    try:
        return _read(path)
    except FileError as error:
        raise error.located(None, printable(str(path))) from None


def _read(path: str) -> str:
    shown = printable(str(path))
    try:
        with open_regular(path) as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
    except NotRegularFile as error:
        if error.kind == "a directory":
            raise FileError(f"cannot read '{shown}': it is a directory") from None
        raise FileError(f"cannot read '{shown}': {error.strerror}",
                        hint="give the path of a .cnn file") from None
    except OSError as error:
        raise FileError(f"cannot read '{shown}': {error.strerror or error}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise FileError(f"cannot read '{shown}': it is larger than {MAX_SOURCE_BYTES // 2**20} "
                        "MB, too large for a network description",
                        hint="a .cnn file describes layers, not data; `* N` and blocks "
                             "repeat layers without writing them out")
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
