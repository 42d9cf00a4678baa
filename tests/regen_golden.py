"""Rewrite the goldens tests/programs/bad/NAME.err (stderr) and NAME.out (stdout: after a
shape error, the table of the layers checked before it) from the current output.

    python tests/regen_golden.py              # every tests/programs/bad/*.cnn
    python tests/regen_golden.py NAME ...     # only these cases (NAME or NAME.cnn)

#############################################################################################
#                                                                                           #
#   EVERY GOLDEN THIS SCRIPT WRITES MUST BE RE-READ BY A HUMAN BEFORE IT IS COMMITTED.      #
#                                                                                           #
#   This script records what cnndsl prints *now*, right or wrong. A golden is only worth    #
#   something if a person has checked, for each regenerated .err file, that:                #
#     - the FILE:LINE:COL header names the line and column of the offending text,           #
#     - the caret line puts '^' under exactly that text (count the columns),                #
#     - the message says what is wrong in words a user understands (layer name, the shape   #
#       it received, what it needed), and the hint (if any) is good advice,                 #
#     - every note (macro call site, repetition) points at the right place,                 #
#     - there is no "internal error" and no traceback.                                      #
#   Use `git diff tests/programs/bad/` and read every changed line. If an output is wrong,  #
#   do NOT commit it as a golden: fix cnndsl, or leave the case out and report the bug.     #
#                                                                                           #
#############################################################################################

The goldens are produced exactly as tests/test_errors.py checks them: in-process
`cnndsl.cli.main(["check", "tests/programs/bad/NAME.cnn"])` with the repository root as the
working directory, so the header carries that relative path.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "programs" / "bad"


def run_check(relative_path: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `cnndsl check relative_path`, run from the repo root."""
    from cnndsl.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(["check", relative_path])
            except SystemExit as exit_:
                status = exit_.code
    finally:
        os.chdir(previous)
    return status, out.getvalue(), err.getvalue()


def main(names: list[str]) -> int:
    if names:
        paths = [BAD / (n if n.endswith(".cnn") else n + ".cnn") for n in names]
    else:
        paths = sorted(BAD.glob("*.cnn"))
    problems = 0
    for path in paths:
        if not path.is_file():
            print(f"no such case: {path}", file=sys.stderr)
            problems += 1
            continue
        relative = path.relative_to(REPO).as_posix()
        status, out, err = run_check(relative)
        golden = path.with_suffix(".err")
        old = golden.read_text(encoding="utf-8") if golden.exists() else None
        partial_table = out.startswith("network ") and "<-- the error below" in out
        if (status != 1 or (out and not partial_table) or "Traceback" in err
                or "internal error" in err):
            print(f"NOT WRITTEN {relative}: exit {status}, stdout {out!r}\n{err}",
                  file=sys.stderr)
            problems += 1
            continue
        golden.write_text(err, encoding="utf-8", newline="\n")
        table = path.with_suffix(".out")
        if out:
            table.write_text(out, encoding="utf-8", newline="\n")
        elif table.exists():
            table.unlink()
        state = "new" if old is None else ("changed" if old != err else "same")
        print(f"{state:8} {golden.relative_to(REPO).as_posix()}")
    print("\nNow READ every new or changed golden (git diff tests/programs/bad/) before "
          "committing: header line:col, caret, message, hint, notes.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
