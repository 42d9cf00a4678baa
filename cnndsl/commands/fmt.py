"""`cnndsl fmt FILE...`: rewrite .cnn files in the canonical layout (cnndsl.fmt).

Every file is read and formatted before any is written: a file that does not parse is
reported (exit 1) and nothing is written; so is a formatting that would change a network
(exit 3, a bug in cnndsl). Messages go to stderr; stdout holds only formatted text (`-`)
and diffs (`--diff`).
"""

from __future__ import annotations

import sys

DESCRIPTION = (
    "Rewrite each FILE in place in the canonical layout: '->' arrows, one space around "
    "them, arguments in the layer table's order, long chains broken before an arrow, "
    "comments kept. The result is checked to compile to the identical network before "
    "anything is written. '-' reads standard input and writes standard output.")


def add_command(command) -> None:
    parser = command("fmt", help="rewrite .cnn files in the canonical layout",
                     description=DESCRIPTION)
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help=".cnn files; '-' formats standard input to standard output")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file would change, listing it "
                             "(for CI and pre-commit hooks; default: rewrite the files)")
    parser.add_argument("--diff", action="store_true",
                        help="write nothing; print a unified diff of each file that would "
                             "change")
    parser.set_defaults(run=run_fmt)


class _Result:
    def __init__(self, path: str, old: str, new: str):
        self.path, self.old, self.new = path, old, new

    @property
    def changed(self) -> bool:
        return self.old != self.new


def run_fmt(args, context: dict) -> int:
    from cnndsl.errors import CnnDslError
    from cnndsl.fmt import UnsafeFormat

    results, failed, unsafe = [], False, False
    for path in dict.fromkeys(args.files):  # a file named twice is formatted once
        try:
            results.append(_format_one(path))
        except CnnDslError as error:
            print(str(error), file=sys.stderr)
            failed = True
        except UnsafeFormat as error:
            shown = "<stdin>" if path == "-" else path
            print(f"cnndsl: internal error: cannot format {shown} safely: {error}; nothing "
                  "was written\nThis is a bug in cnndsl; please report it with the file "
                  "that caused it.", file=sys.stderr)
            unsafe = True
    if failed or unsafe:
        if results:
            print("cnndsl: nothing was written", file=sys.stderr)
        return 3 if unsafe else 1
    if args.diff:
        for result in results:
            if result.changed:
                sys.stdout.write(_unified_diff(result))
    elif not args.check:
        _write(results)
    return _report(results, args)


def _format_one(path: str) -> _Result:
    from cnndsl.fmt import format_text
    from cnndsl.source import read_source

    text = _read_stdin() if path == "-" else read_source(path)
    return _Result(path, text, format_text(text, "<stdin>" if path == "-" else path))


def _read_stdin() -> str:
    from cnndsl.source import FileError

    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise FileError(f"this is not UTF-8 text (byte 0x{data[error.start]:02x})",
                        hint="save the file as UTF-8").located(None, "<stdin>") from None


def _write(results: list[_Result]) -> None:
    """Changed files, each atomically (a reader sees the old file or the new one); a
    symbolic link stays a link to the rewritten file."""
    import os

    from cnndsl.checkpoint import write_atomically

    for result in results:
        if result.path == "-":
            sys.stdout.write(result.new)
        elif result.changed:
            data = result.new.encode("utf-8")
            write_atomically(os.path.realpath(result.path),
                             lambda handle, data=data: handle.write(data), "formatted file")


def _report(results: list[_Result], args) -> int:
    """`reformatted FILE` (`would reformat FILE` with --check or --diff) for each changed
    file, then a count; exit 1 with --check when a file would change."""
    changed = [r for r in results if r.changed]
    dry = args.check or args.diff
    for result in changed:
        shown = "<stdin>" if result.path == "-" else result.path
        print(f"{'would reformat' if dry else 'reformatted'} {shown}", file=sys.stderr)
    unchanged = len(results) - len(changed)
    counts = []
    if changed:
        counts.append(f"{_files(len(changed))} {'would be reformatted' if dry else 'reformatted'}")
    if unchanged:
        counts.append(f"{_files(unchanged)} {'would be ' if dry else ''}left unchanged")
    print(", ".join(counts), file=sys.stderr)
    return 1 if args.check and changed else 0


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def _unified_diff(result: _Result) -> str:
    import difflib

    shown = "<stdin>" if result.path == "-" else result.path
    lines = []
    for line in difflib.unified_diff(result.old.splitlines(keepends=True),
                                     result.new.splitlines(keepends=True),
                                     shown, shown):
        lines.append(line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n")
    return "".join(lines)
