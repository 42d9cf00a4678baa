"""The `cnndsl` command line (LANGUAGE.md §6).

Exit status: 0 valid, 1 an error in the user's file or data, 2 a usage error.
A user never sees a traceback: errors in their file are printed as
`FILE:LINE:COL: error: ...` with the source line and a caret; anything else is reported
as an internal error (set CNNDSL_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from cnndsl.errors import CnnDslError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_binding(text: str) -> tuple[str, int]:
    """`k=2` -> ("k", 2); used as an argparse type, so a bad one is a usage error."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not NAME_RE.match(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{name}' must be bound to a whole number, got '{value}'") from None


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the .cnn network description")
    parser.add_argument("--set", dest="bindings", metavar="NAME=VALUE", action="append",
                        type=parse_binding, default=[],
                        help="override a 'let' binding (repeatable), e.g. --set k=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnndsl", description="Check, draw, train and export convolutional networks "
                                   "written as text (.cnn files).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser("check", help="parse and shape-check a file; print its layers")
    add_file_arguments(check)
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (LANGUAGE.md §6) instead of the table")
    check.add_argument("--dump-ir", action="store_true",
                       help="also print every IR node with its attributes (debugging)")
    check.set_defaults(run=run_check)

    render = commands.add_parser(
        "render", help="draw the network with graphviz (svg, png, pdf or dot)",
        description="Draw the network: one node per layer, the tensor shape on every edge, "
                    "repetitions and macro calls as clusters.")
    add_file_arguments(render)
    render.add_argument("-o", "--output", metavar="OUT",
                        help="output file (default: the file's name with the format's suffix, "
                             "in the current folder); the suffix picks the format")
    render.add_argument("--format", choices=FORMATS, help="svg (default), png, pdf or dot")
    render.add_argument("--collapse", action="store_true",
                        help="draw each repetition once, with a ×k badge")
    render.add_argument("--rankdir", choices=("TB", "LR"), default="TB",
                        help="top to bottom (default) or left to right")
    render.set_defaults(run=run_render)
    return parser


class Loaded:
    """A file read and checked, with what error reporting needs."""

    def __init__(self, args):
        from cnndsl.frontend import check_text
        from cnndsl.source import read_source

        self.path = args.file
        self.text = None
        self.text = read_source(args.file)
        self.bindings = dict(args.bindings)
        self.graph = check_text(self.text, self.bindings)
        used = self.graph.graph.get("used_bindings", [])
        for name in self.bindings:
            if name not in used:
                print(f"cnndsl: warning: --set {name}={self.bindings[name]} is not used by "
                      f"{self.path}", file=sys.stderr)


def run_check(args, context: dict) -> int:
    from cnndsl.summary import dump_ir, format_table, to_json

    context["path"] = args.file
    loaded = Loaded(args)
    if args.json:
        print(json.dumps(to_json(loaded.graph)))
    else:
        print(format_table(loaded.graph))
        if args.dump_ir:
            print()
            print(dump_ir(loaded.graph))
    return 0


FORMATS = ("svg", "png", "pdf", "dot")


def run_render(args, context: dict) -> int:
    from pathlib import Path

    from cnndsl.render import render_to_file

    context["path"] = args.file
    out, fmt = _render_target(args)
    outcome = render_to_file(args.file, args.bindings, out, fmt, collapse=args.collapse,
                             rankdir=args.rankdir)
    if outcome.missing_dot:
        print(f"cnndsl: error: the graphviz 'dot' program is not installed, so {fmt.upper()} "
              f"cannot be made; wrote the diagram's source to {outcome.written}\n"
              "hint: install graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew "
              f"install graphviz), then run again, or run: dot -T{fmt} {outcome.written} -o "
              f"{Path(out).name}", file=sys.stderr)
        return 1
    if outcome.error is not None:
        print(outcome.error.format(outcome.text, args.file), file=sys.stderr)
        print(f"cnndsl: wrote {outcome.written}, drawn up to the error", file=sys.stderr)
        return 1
    print(f"wrote {outcome.written}", file=sys.stderr)
    return 0


def _render_target(args) -> tuple[str, str]:
    from pathlib import Path

    suffix = Path(args.output).suffix.lstrip(".").lower() if args.output else ""
    if args.format and suffix in FORMATS and suffix != args.format:
        _usage_error(f"-o {args.output} has the suffix .{suffix} but --format is {args.format}")
    if args.output and not args.format and suffix not in FORMATS:
        _usage_error(f"cannot tell the format of -o {args.output}: use a .svg, .png, .pdf or "
                     ".dot suffix, or --format")
    fmt = args.format or suffix or "svg"
    out = args.output or f"{Path(args.file).stem}.{fmt}"
    return out, fmt


def _usage_error(message: str):
    print(f"cnndsl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    context: dict = {}
    try:
        return args.run(args, context)
    except CnnDslError as error:
        from cnndsl.source import FileError

        text = None if isinstance(error, FileError) else _source_for(context.get("path"))
        print(error.format(text, context.get("path") or "<input>"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnndsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug in cnndsl, not in the user's file
        if os.environ.get("CNNDSL_DEBUG"):
            raise
        print(f"cnndsl: internal error: {type(error).__name__}: {error}\n"
              "This is a bug in cnndsl; please report it with the file that caused it "
              "(CNNDSL_DEBUG=1 shows the traceback).", file=sys.stderr)
        return 3


def _source_for(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
