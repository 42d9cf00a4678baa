"""Error reporting (docs/language.md): every mistake in a .cnn file is reported as

    FILE:LINE:COL: error: MESSAGE
     L | the source line
       |    ^^^^ under the offending text
    hint: ...

with exit status 1, nothing on stdout, and never a traceback.

Two kinds of tests:
- golden: every tests/programs/bad/NAME.cnn is checked in-process and its stderr must equal
  NAME.err exactly (regenerate with tests/regen_golden.py, then READ every changed golden);
- explicit: for the most important cases, line/column/caret are computed from the source
  here, and the key words of the message and hint are asserted one by one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import cnndsl
from cnndsl.cli import main

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "programs" / "bad"
BAD_CASES = sorted(p.stem for p in BAD.glob("*.cnn"))


def run(argv, capsys) -> tuple[int, str, str]:
    """`cnndsl ARGV` in-process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def check(tmp_path, monkeypatch, capsys):
    """check(source) -> stderr of `cnndsl check net.cnn` (cwd = a temp dir), asserting the
    common contract: exit 1, no traceback, no internal error, and nothing on stdout but,
    after a shape error, the table of the layers checked before it."""
    monkeypatch.chdir(tmp_path)

    def _check(source: str, *extra: str) -> str:
        Path("net.cnn").write_text(source, encoding="utf-8")
        status, out, err = run(["check", "net.cnn", *extra], capsys)
        assert "Traceback" not in err
        assert "internal error" not in err, err
        assert status == 1, err
        if out:  # only the partial table of a shape error, its last row the failing layer
            table = out.splitlines()
            assert table[0].startswith("network ") and " stopped at '" in table[0], out
            assert table[-2].endswith("<-- the error below"), out
            assert re.search(r"stopped at '([^']+)'", table[0]).group(1) in err.split("\n")[0]
        return err

    return _check


# ---- golden files ------------------------------------------------------------------------


def test_bad_programs_exist():
    assert len(BAD_CASES) >= 60


@pytest.mark.parametrize("name", BAD_CASES)
def test_golden(name, in_repo, capsys):
    relative = f"tests/programs/bad/{name}.cnn"
    golden = BAD / f"{name}.err"
    assert golden.exists(), f"{golden} is missing: run tests/regen_golden.py {name} and read it"
    status, out, err = run(["check", relative], capsys)
    assert "Traceback" not in err
    assert status == 1
    table = BAD / f"{name}.out"  # after a shape error: the layers that did check
    assert out == (table.read_text(encoding="utf-8") if table.exists() else "")
    assert err == golden.read_text(encoding="utf-8")


def test_every_golden_has_a_program():
    goldens = [*BAD.glob("*.err"), *BAD.glob("*.out")]
    orphans = [p.name for p in goldens if not p.with_suffix(".cnn").exists()]
    assert not orphans


@pytest.mark.parametrize("name", sorted(p.stem for p in BAD.glob("*.out")))
def test_shape_error_tables_stop_at_the_failing_layer(name):
    """A table golden belongs to a shape error: it names the layer the error names and
    marks it as its last row."""
    table = (BAD / f"{name}.out").read_text(encoding="utf-8").splitlines()
    error = (BAD / f"{name}.err").read_text(encoding="utf-8").splitlines()[0]
    failing = re.search(r"stopped at '([^']+)'", table[0]).group(1)
    assert f"'{failing}'" in error
    assert table[-2].startswith(failing + " ") and table[-2].endswith("<-- the error below")
    assert sum("<-- the error below" in line for line in table) == 1


@pytest.mark.parametrize("name", BAD_CASES)
def test_golden_excerpts_quote_the_source(name):
    """Every FILE:L:C header in a golden is followed by source line L, verbatim, and a caret
    line whose first '^' is in column C (guards against hand-edited goldens)."""
    source = (BAD / f"{name}.cnn").read_text(encoding="utf-8").splitlines()
    lines = (BAD / f"{name}.err").read_text(encoding="utf-8").splitlines()
    header = re.compile(rf"tests/programs/bad/{re.escape(name)}\.cnn:(\d+):(\d+): (error|note): ")
    assert header.match(lines[0]) and lines[0].split(": ")[1] == "error"
    for i, text in enumerate(lines):
        m = header.match(text)
        if not m or i + 2 >= len(lines) or not lines[i + 1].startswith(f" {m.group(1)} | "):
            continue
        line, col = int(m.group(1)), int(m.group(2))
        assert lines[i + 1] == f" {line} | {source[line - 1]}"
        caret = lines[i + 2][len(f" {line} | "):]
        assert caret.index("^") == col - 1


# ---- explicit checks: location, caret, message words, hint ----------------------------------


def locate(source: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the n-th occurrence of `needle` in `source`."""
    start = -1
    for _ in range(occurrence):
        start = source.index(needle, start + 1)
    line = source.count("\n", 0, start) + 1
    col = start - (source.rfind("\n", 0, start) + 1) + 1
    return line, col


def underlined(stderr: str, line: int, source_line: str, which: int = 0) -> str:
    """The text the caret line marks under ` LINE | source_line` (the which-th such excerpt)."""
    lines = stderr.splitlines()
    quoted = f" {line} | {source_line}"
    positions = [i for i, text in enumerate(lines) if text == quoted]
    assert len(positions) > which, f"no excerpt of line {line} in:\n{stderr}"
    caret_line = lines[positions[which] + 1]
    prefix = f" {' ' * len(str(line))} | "
    assert caret_line.startswith(prefix)
    carets = caret_line[len(prefix):]
    start = carets.index("^")
    end = len(carets.rstrip())
    assert set(carets[start:end]) == {"^"}
    return source_line[start:end]


def assert_error_at(stderr: str, source: str, needle: str, occurrence: int = 1,
                    underline: str | None = None) -> str:
    """The first line is `net.cnn:L:C: error: ` at `needle`, and the caret marks `underline`
    (default: the needle itself). Returns the message."""
    line, col = locate(source, needle, occurrence)
    first = stderr.splitlines()[0]
    prefix = f"net.cnn:{line}:{col}: error: "
    assert first.startswith(prefix), f"expected {prefix!r}, got:\n{stderr}"
    assert underlined(stderr, line, source.splitlines()[line - 1]) == (underline or needle)
    return first[len(prefix):]


def hint_of(stderr: str) -> str:
    hints = [line for line in stderr.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1, stderr
    return hints[0][len("hint: "):]


def test_unknown_layer_typo(check):
    source = "input 28x28x1\nConv(8, 3x3) -> ReLU -> MaxPoool(2) -> FC(10)\n"
    err = check(source)
    message = assert_error_at(err, source, "MaxPoool")
    assert "unknown layer" in message and "'MaxPoool'" in message
    assert "did you mean" in hint_of(err) and "'MaxPool'" in hint_of(err)


def test_unknown_layer_lowercase_suggests_the_layer(check):
    source = "input 28x28x1\nConv(8) -> relu -> FC(10)\n"
    err = check(source)
    assert "'relu'" in assert_error_at(err, source, "relu")
    assert "'ReLU'" in hint_of(err)


@pytest.mark.parametrize("opener,closer", [("(", ")"), ("[", "]"), ("{", "}")])
def test_unclosed_bracket(check, opener, closer):
    inner = "Identity + Conv(8)" if opener == "{" else "Conv(8) -> ReLU"
    source = f"input 28x28x1\nConv(4) -> {opener}{inner} -> MaxPool(2)\n"
    err = check(source)
    message = assert_error_at(err, source, opener, occurrence=2 if opener == "(" else 1)
    assert message == f"'{opener}' is never closed"
    assert closer in hint_of(err)


def test_mismatched_bracket(check):
    source = "input 28x28x1\n(Conv(8) -> ReLU] * 2\n"
    err = check(source)
    message = assert_error_at(err, source, "]")
    assert "'('" in message and "2:1" in message
    assert "')'" in hint_of(err)


def test_unbound_name_with_suggestion(check):
    source = "input 28x28x1\nlet width = 16\nConv(widht, 3x3) -> ReLU\n"
    err = check(source)
    assert assert_error_at(err, source, "widht") == "unbound name 'widht'"
    assert "'width'" in hint_of(err)


def test_unbound_name_without_suggestion(check):
    source = "input 28x28x1\nConv(filters, 3x3) -> ReLU\n"
    err = check(source)
    assert assert_error_at(err, source, "filters") == "unbound name 'filters'"
    assert "let filters" in hint_of(err) and "--set filters=" in hint_of(err)


def test_kernel_larger_than_input(check):
    source = ("input 28x28x1\n"
              "Conv(8, 5x5, pad=valid) -> MaxPool(2) -> Conv(8, 5x5, pad=valid) -> MaxPool(2)\n"
              "  -> Conv(16, 5x5, pad=valid) -> FC(10)\n")
    err = check(source)
    message = assert_error_at(err, source, "Conv(16, 5x5, pad=valid)")
    assert "Conv 'conv3'" in message  # the layer
    assert "4x4x8" in message  # what it received: 28 -> 24 -> 12 -> 8 -> 4
    assert "5x5" in message and "valid" in message  # what it needed
    assert "pad=same" in hint_of(err)


@pytest.mark.parametrize("input_shape,kernel,received", [
    ("20x3", "21", "20x3"), ("6x6x6x2", "3x7x3", "6x6x6x2")])
def test_kernel_larger_than_input_1d_3d(check, input_shape, kernel, received):
    source = f"input {input_shape}\nReLU -> Conv(4, {kernel}, pad=valid)\n"
    err = check(source)
    message = assert_error_at(err, source, f"Conv(4, {kernel}, pad=valid)")
    assert "'conv1'" in message and received in message and kernel in message


def test_labelled_layer_is_named_by_its_label(check):
    source = "input 8x8x1\nbig: Conv(4, 9x9, pad=valid)\n"
    err = check(source)
    assert "Conv 'big'" in assert_error_at(err, source, "big: Conv(4, 9x9, pad=valid)")


def test_add_branches_of_different_shapes(check):
    source = "input 32x32x16\nConv(16) -> { Identity + Conv(32, 3x3, stride=2) } -> ReLU\n"
    err = check(source)
    braces = "{ Identity + Conv(32, 3x3, stride=2) }"
    message = assert_error_at(err, source, braces)
    assert "'+'" in message
    assert "32x32x16" in message and "16x16x32" in message
    assert "stride" in hint_of(err)


def test_concat_with_different_spatial_sizes(check):
    source = "input 32x32x16\n{ Conv(8, 1x1) | Conv(8, 3x3, pad=valid) }\n"
    err = check(source)
    message = assert_error_at(err, source, "{ Conv(8, 1x1) | Conv(8, 3x3, pad=valid) }")
    assert "'|'" in message and "spatial" in message
    assert "32x32x8" in message and "30x30x8" in message
    assert "pad" in hint_of(err)


@pytest.mark.parametrize("count,text,occurrence,value", [
    ("(n - 3)", "n - 3", 1, "-1"),
    ("(0 - n)", "0 - n", 1, "-2"),
    ("n * (0 - 1)", "0 - 1", 1, "-1"),  # `X * n * c` is `(X * n) * c`: the outer count
])
def test_negative_repetition_count(check, count, text, occurrence, value):
    source = f"input 28x28x1\nlet n = 2\n(Conv(8) -> ReLU) * {count} -> FC(10)\n"
    err = check(source)
    line, _ = locate(source, text, occurrence)
    assert line == 3
    message = assert_error_at(err, source, text, occurrence)
    assert message == f"repetition count {value} is negative"
    assert "0 leaves the group out" in hint_of(err)


def test_repetition_count_not_whole(check):
    source = "input 28x28x1\nlet k = 1.5\n(Conv(8) -> ReLU) * k\n"
    err = check(source)
    message = assert_error_at(err, source, "k", occurrence=2)
    assert "repetition count" in message and "1.5" in message


def test_missing_arrow(check):
    source = "input 28x28x1\nConv(8, 3x3) ReLU -> FC(10)\n"
    err = check(source)
    assert "unexpected 'ReLU'" in assert_error_at(err, source, "ReLU")
    assert "'->'" in hint_of(err)


def test_error_inside_macro_notes_the_call_site(check):
    source = ("input 8x8x1\ndef block(c) = Conv(c, 3x3, pad=valid) -> ReLU\n"
              "block(8) -> block(8) -> block(8) -> block(8)\n")
    err = check(source)
    message = assert_error_at(err, source, "Conv(c, 3x3, pad=valid)")
    assert "2x2x8" in message and "3x3" in message
    line, col = locate(source, "block(8)", occurrence=4)
    note = f"net.cnn:{line}:{col}: note: in block(8), called here"
    assert note in err.splitlines()
    assert underlined(err, line, source.splitlines()[line - 1]) == "block(8)"


def test_error_inside_repetition_notes_the_iteration(check):
    source = "input 16x16x1\n(Conv(8) -> MaxPool(2)) * 5 -> FC(10)\n"
    err = check(source)
    message = assert_error_at(err, source, "MaxPool(2)")
    assert "1x1x8" in message
    assert "net.cnn:2:1: note: in repetition 5 of 5" in err.splitlines()


def test_mixed_branch_operators(check):
    source = "input 32x32x16\n{ Conv(8) | Conv(8) + Identity }\n"
    err = check(source)
    assert "mixed" in assert_error_at(err, source, "+")


def test_two_body_chains(check):
    source = "input 28x28x1\nConv(8) -> ReLU\nMaxPool(2) -> FC(10)\n"
    err = check(source)
    assert_error_at(err, source, "MaxPool(2) -> FC(10)")
    assert "net.cnn:2:1: note: the first one is here" in err.splitlines()
    assert "'->'" in hint_of(err)


# Files without a network. There is no offending text; the error must still be clear.
# (The current caret, under line 1 column 1, is not asserted: see the report.)
@pytest.mark.parametrize("source", ["input 28x28x1\n", "# just a comment\n# another\n",
                                    "input 28x28x1  # the input\nlet k = 2\n", ""])
def test_file_without_network(check, source):
    err = check(source)
    assert err.startswith("net.cnn:")
    assert "error: the file has no network" in err.splitlines()[0]
    assert "->" in hint_of(err)


def test_misspelt_padding_mode_is_reported_at_the_value(check):
    source = "input 28x28x1\nConv(8, 3x3, pad=sam)\n"
    err = check(source)
    assert "'sam'" in assert_error_at(err, source, "sam")


def test_misspelt_padding_mode_suggests_same(check):
    err = check("input 28x28x1\nConv(8, 3x3, pad=sam)\n")
    assert "'same'" in hint_of(err)


def test_dropout_out_of_range(check):
    source = "input 28x28x1\nConv(8) -> Dropout(1.5)\n"
    err = check(source)
    message = assert_error_at(err, source, "1.5")
    assert "Dropout" in message and "1.5" in message and "[0.0, 1.0)" in message


def test_dropout_out_of_range_wording(check):
    err = check("input 28x28x1\nConv(8) -> Dropout(1.5)\n")
    assert "p must be a number in [0.0, 1.0)" in err


def test_boolean_repetition_count_is_shown_in_dsl_spelling(check):
    err = check("input 28x28x1\nReLU * true\n")
    assert "got true" in err.splitlines()[0]


def test_trailing_arrow_before_comments(check):
    source = "input 28x28x1\nConv(8) -> ReLU ->\n\n# the end\n"
    err = check(source)
    assert err.startswith("net.cnn:2:")


def test_zero_to_negative_float_power(check):
    check("input 28x28x1\nConv(0.0 ^ -1)\n")


@pytest.mark.parametrize("source", [
    "input 28x28x1\n" + "(" * 400 + "ReLU" + ")" * 400 + "\n",
    "input 28x28x1\nReLU" + " * 1" * 600 + "\n",
    "input 28x28x1\nConv(8" + " + 1" * 600 + ")\n",
])
def test_deep_nesting_is_an_error_not_a_crash(check, source):
    err = check(source)
    assert err.startswith("net.cnn")
    assert "error: " in err.splitlines()[0]


def test_crlf_line_endings(check):
    source = "input 28x28x1\r\nConv(8) -> Frob\r\n"
    err = check(source)
    assert err.splitlines()[0].startswith("net.cnn:2:12: error: unknown layer 'Frob'")
    assert underlined(err, 2, "Conv(8) -> Frob") == "Frob"


# ---- files that cannot be read as text --------------------------------------------------


def test_binary_file_with_nul(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("net.cnn").write_bytes(b"input 28x28x1\nCo\x00nv(8)\n")
    status, out, err = run(["check", "net.cnn"], capsys)
    assert status == 1 and out == "" and "Traceback" not in err
    assert err.startswith("net.cnn:2:3: error: this is not a text file (it contains NUL bytes)")
    assert "UTF-8" in hint_of(err)


def test_invalid_utf8(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("net.cnn").write_bytes(b"input 28x28x1\nConv(8) -> \xff\xfe\n")
    status, out, err = run(["check", "net.cnn"], capsys)
    assert status == 1 and out == "" and "Traceback" not in err
    assert err.startswith("net.cnn:2:12: error: this is not UTF-8 text (byte 0xff)")
    assert "UTF-8" in hint_of(err)


def test_invalid_utf8_column_counts_characters(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("net.cnn").write_bytes(b"input 28x28x1\nConv(8) \xe2\x86\x92 \xff\n")  # '→' then 0xff
    status, _, err = run(["check", "net.cnn"], capsys)
    assert status == 1 and err.startswith("net.cnn:2:11: error:")


def test_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(["check", "nothere.cnn"], capsys)
    assert status == 1 and out == "" and "Traceback" not in err
    assert err.startswith("nothere.cnn: error: cannot read 'nothere.cnn': ")
    assert "No such file" in err


def test_directory_instead_of_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("adir").mkdir()
    status, out, err = run(["check", "adir"], capsys)
    assert status == 1 and out == ""
    assert err.startswith("adir: error: cannot read 'adir': it is a directory")


# ---- command line: --json, usage errors, --set ------------------------------------------------


def test_json_with_a_bad_file(in_repo, capsys):
    status, out, err = run(["check", "--json", "tests/programs/bad/unknown_layer_typo.cnn"],
                           capsys)
    assert status == 1
    assert json.loads(out) == {"layers": [], "error": {
        "kind": "UnknownOpError", "message": "unknown layer 'MaxPoool'",
        "file": "tests/programs/bad/unknown_layer_typo.cnn", "line": 2, "col": 25,
        "end_line": 2, "end_col": 33, "notes": [], "layer": None,
        "hint": "did you mean 'MaxPool' or 'Pool' or 'GlobalMaxPool'?"}}
    assert err.startswith("tests/programs/bad/unknown_layer_typo.cnn:2:25: error: "
                          "unknown layer 'MaxPoool'")
    assert err == (BAD / "unknown_layer_typo.err").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv", [
    ["check"],  # missing file argument
    ["check", "tests/programs/bad/repeat_negative.cnn", "--bogus"],  # unknown flag
    [],  # no command
    ["frobnicate", "x.cnn"],  # unknown command
    ["check", "tests/programs/bad/repeat_negative.cnn", "--set"],  # --set without a value
    ["check", "tests/programs/bad/repeat_negative.cnn", "--set", "k=abc"],  # not a number
    ["check", "tests/programs/bad/repeat_negative.cnn", "--set", "k"],  # no '='
    ["check", "tests/programs/bad/repeat_negative.cnn", "--set", "2k=3"],  # not a name
])
def test_usage_errors_exit_2(argv, in_repo, capsys):
    status, out, err = run(argv, capsys)
    assert status == 2
    assert out == ""
    assert "usage:" in err and "Traceback" not in err


def test_set_abc_names_the_binding(in_repo, capsys):
    status, _, err = run(["check", "tests/programs/bad/repeat_negative.cnn", "--set", "k=abc"],
                         capsys)
    assert status == 2
    assert "'k'" in err and "'abc'" in err


LET_K = "input 28x28x1\nlet k = 2\n(Conv(8) -> ReLU) * k -> FC(10)\n"


def _count_convs(layers) -> int:
    return sum(1 for layer in layers if layer["op"] == "Conv")


@pytest.mark.parametrize("extra,convs", [([], 2), (["--set", "k=3"], 3),
                                         (["--set", "k = 1"], 1)])
def test_set_overrides_let_on_the_command_line(extra, convs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("net.cnn").write_text(LET_K, encoding="utf-8")
    status, out, err = run(["check", "net.cnn", "--json", *extra], capsys)
    assert status == 0, err
    assert _count_convs(json.loads(out)["layers"]) == convs


def test_set_negative_is_a_file_error_at_the_count(check):
    err = check(LET_K, "--set", "k=-1")
    assert_error_at(err, LET_K, "k", occurrence=2)
    assert "repetition count -1 is negative" in err


def test_check_text_bindings_override_let():
    def convs(graph):
        return sum(1 for _, node in graph.nodes(data=True) if node["op"] == "Conv")

    assert convs(cnndsl.check_text(LET_K)) == 2
    assert convs(cnndsl.check_text(LET_K, {"k": 3})) == 3
    with pytest.raises(cnndsl.CnnDslError) as info:
        cnndsl.check_text(LET_K, {"k": -1})
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (3, 21)
