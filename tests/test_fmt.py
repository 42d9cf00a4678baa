"""`cnndsl fmt` and `cnndsl.fmt.format_text`: the canonical layout of .cnn files.

- before/after pairs for each construct, and comments kept in place;
- every example, every program of the docs and tests/programs/bad that parses: formatting
  is idempotent and (when the file compiles) gives the identical graph;
- the command as a user runs it: in place, --check, --diff, '-', errors, nothing written
  when anything fails, and the refusal of an unsafe result.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT
from corpus import doc_programs, parses

from cnndsl import check_text
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ParseError
from cnndsl.fmt import UnsafeFormat, format_text

INPUT = "input 28x28x1\n"


def fmt(text: str) -> str:
    return format_text(text)


# ---- before -> after, one construct each ---------------------------------------------------

PAIRS = {
    "arrows": ("Conv(8)→ReLU  ->MaxPool(2)", "Conv(8) -> ReLU -> MaxPool(2)"),
    "call spacing": ("Conv( 32 ,3x3 , stride = 2 , )", "Conv(32, 3x3, stride=2)"),
    "sizes": ("Conv(8, 3 × 3) -> MaxPool(2 x 2)", "Conv(8, 3x3) -> MaxPool(2x2)"),
    "repetition": ("(Conv(8)->ReLU)×3 -> ReLU*2", "(Conv(8) -> ReLU) * 3 -> ReLU * 2"),
    "repetition count": ("ReLU * (2) -> ReLU * ((1 + 1)) -> ReLU * (2.0)",
                         "ReLU * 2 -> ReLU * (1 + 1) -> ReLU * (2.0)"),
    "square brackets kept": ("[ (Conv -> ReLU) * 2 -> Pool ] * 2",
                             "[(Conv -> ReLU) * 2 -> Pool] * 2"),
    "concat braces": ("{Conv(8,1)|Conv(8,3)  |  MaxPool(3,1,pad=1)}",
                      "{ Conv(8, 1) | Conv(8, 3) | MaxPool(3, 1, pad=1) }"),
    "add braces": ("{ Identity+Conv(1,1) }", "{ Identity + Conv(1, 1) }"),
    "labels": ("c1 :Conv(8) -> out:FC(10)", "c1: Conv(8) -> out: FC(10)"),
    "bare and empty parens kept": ("Conv -> ReLU() -> FC", "Conv -> ReLU() -> FC"),
    "keywords in table order": ("Conv(8, pad=valid, bias=false, stride=2, kernel=3)",
                                "Conv(8, kernel=3, stride=2, pad=valid, bias=false)"),
    "keywords of an alias": ("Pool(pad=1, stride=2, size=3)", "Pool(size=3, stride=2, pad=1)"),
    "keywords kept keywords": ("Conv(filters=8, kernel=3)", "Conv(filters=8, kernel=3)"),
    "unknown keyword left as written": ("Conv(8, stride=2, padding=1)",
                                        "Conv(8, stride=2, padding=1)"),
    "repeated keyword left as written": ("Conv(8, stride=2, pad=1, stride=1)",
                                         "Conv(8, stride=2, pad=1, stride=1)"),
    "expressions": ("FC(( 2 + 3 ) * 4 - ( 1 ) + 2^(3) // ( 2 ^ 2 ))",
                    "FC((2 + 3) * 4 - 1 + 2^3 // 2^2)"),
    "expressions keep needed parentheses": ("FC(2 - (3 - 1)) -> FC((-2)^2) -> FC((2^3)^2)",
                                            "FC(2 - (3 - 1)) -> FC((-2)^2) -> FC((2^3)^2)"),
    "power is right associative": ("FC(2 ^ 3 ^ 2) -> FC(-2^2) -> FC(2^-1 * 8)",
                                   "FC(2^3^2) -> FC(-2^2) -> FC(2^-1 * 8)"),
    "multiplication sign": ("FC(k × 3) -> FC(2 × 3)", "FC(k * 3) -> FC(2x3)"),
    "numbers as written": ("Dropout(.5) -> BatchNorm(eps=1E-3, momentum=0.10)",
                           "Dropout(.5) -> BatchNorm(eps=1e-3, momentum=0.10)"),
    "tuples": ("Conv(8, ( 1 , 3, ), pad = (0,1))", "Conv(8, (1, 3), pad=(0, 1))"),
}


@pytest.mark.parametrize("name", PAIRS)
def test_chain_constructs(name):
    before, after = PAIRS[name]
    assert fmt(INPUT + before + "\n") == INPUT + after + "\n"


STATEMENTS = {
    "network and input": ("network   Net\ninput   (28 , 28, 1)\nConv",
                          "network Net\ninput (28, 28, 1)\nConv"),
    "let": ("input 8x8x1\nlet k=2 ,m = k+1\nConv(k)", "input 8x8x1\nlet k = 2, m = k + 1\nConv(k)"),
    "def": ("input 8x8x1\ndef  b( c ,k )=Conv(c,k)->ReLU\ndef s()=ReLU\ndef t =ReLU\nb(2,3)",
            ("input 8x8x1\ndef b(c, k) = Conv(c, k) -> ReLU\ndef s() = ReLU\ndef t = ReLU\n"
             "b(2, 3)")),
    "macro keywords in parameter order": (
        "input 8x8x1\ndef b(c, k) = Conv(c, k)\nb(k=3, c=2) -> b(2, k=3)",
        "input 8x8x1\ndef b(c, k) = Conv(c, k)\nb(c=2, k=3) -> b(2, k=3)"),
    "train on one line": ("input 8x8x1\ntrain{lr=0.1 epochs = 2,}\nConv",
                          "input 8x8x1\ntrain { lr = 0.1, epochs = 2 }\nConv"),
    "train kept open": ("input 8x8x1\ntrain {\n lr=0.1, epochs = 2 }\nConv",
                        "input 8x8x1\ntrain {\n    lr = 0.1\n    epochs = 2\n}\nConv"),
    "empty train": ("input 8x8x1\ntrain {}\nConv", "input 8x8x1\ntrain { }\nConv"),
    "blank lines": ("\n\n# top\n\n\n\ninput 8x8x1\n\n\nConv\n\n\n",
                    "# top\n\ninput 8x8x1\n\nConv"),
    "statement order kept": ("Conv(k)\nlet k = 2\ninput 8x8x1", "Conv(k)\nlet k = 2\ninput 8x8x1"),
    "trailing spaces and tabs": ("input 8x8x1   \n\tConv(8)\t\n", "input 8x8x1\nConv(8)"),
    "line continued by a backslash": (
        "input 8x8x1\nlet a = 1, \\\n    b = 2\nConv(a) \\\n -> ReLU",
        "input 8x8x1\nlet a = 1, b = 2\nConv(a)\n  -> ReLU"),
}


@pytest.mark.parametrize("name", STATEMENTS)
def test_statements(name):
    before, after = STATEMENTS[name]
    assert fmt(before) == after + "\n"


def test_line_breaks_next_to_arrows_are_kept_with_the_arrow_first():
    text = INPUT + "Conv(8) ->\n    ReLU -> MaxPool(2)\n->FC(10)\n"
    assert fmt(text) == INPUT + "Conv(8)\n  -> ReLU -> MaxPool(2)\n  -> FC(10)\n"


def test_line_breaks_elsewhere_are_joined():
    text = INPUT + "Conv(8,\n   3x3) -> (ReLU\n) -> { Identity\n | ReLU }\n"
    assert fmt(text) == INPUT + "Conv(8, 3x3) -> (ReLU) -> { Identity | ReLU }\n"


def test_a_long_chain_breaks_before_the_arrow_that_overflows():
    layers = " -> ".join(f"Conv({n}, 3x3) -> ReLU" for n in range(10, 20))
    out = fmt(INPUT + layers + "\n")
    lines = out.splitlines()[1:]
    assert len(lines) > 1 and all(len(line) <= 100 for line in lines)
    assert all(line.startswith("  -> ") for line in lines[1:])
    assert " -> ".join(line.removeprefix("  -> ") for line in lines) == layers
    # the first line is filled: the next item would not have fitted on it
    assert len(lines[0]) + len(" -> ") + len(lines[1].split(" -> ")[1]) > 100


def test_a_long_group_breaks_inside_under_its_first_item():
    inner = " -> ".join(f"Conv({n}, 3x3, stride=1)" for n in range(10, 16))
    out = fmt(INPUT + f"ReLU -> ({inner}) * 2\n")
    assert out == INPUT + (
        "ReLU\n"
        "  -> (Conv(10, 3x3, stride=1) -> Conv(11, 3x3, stride=1) -> Conv(12, 3x3, stride=1)\n"
        "        -> Conv(13, 3x3, stride=1) -> Conv(14, 3x3, stride=1) -> Conv(15, 3x3, "
        "stride=1)) * 2\n")


def test_long_braces_take_one_branch_per_line():
    branch = "Conv(128, 3x3, bias=false) -> BatchNorm -> ReLU"
    out = fmt(INPUT + f"{{ Identity + {branch} -> {branch} }} -> ReLU\n")
    assert out == INPUT + (
        "{\n"
        "    Identity\n"
        "  + Conv(128, 3x3, bias=false) -> BatchNorm -> ReLU -> Conv(128, 3x3, bias=false) "
        "-> BatchNorm\n"
        "      -> ReLU\n"
        "} -> ReLU\n")


def test_braces_broken_after_the_opening_brace_stay_open():
    text = INPUT + "def d = {\n  Identity | ReLU\n}\nd -> { ReLU\n | Identity }\n"
    assert fmt(text) == INPUT + ("def d = {\n    Identity\n  | ReLU\n}\n"
                                 "d -> { ReLU | Identity }\n")


def test_nested_open_braces_indent_by_block():
    text = INPUT + "ReLU\n  -> {\n Identity\n | {\n ReLU | Identity } }\n"
    assert fmt(text) == INPUT + ("ReLU\n  -> {\n      Identity\n    | {\n"
                                 "          ReLU\n        | Identity\n      }\n  }\n")


def test_empty_and_comment_only_files():
    assert fmt("") == ""
    assert fmt("\n\n  \n") == ""
    assert fmt("# only a comment   \n\n\n# and another") == "# only a comment\n\n# and another\n"


def test_crlf_line_ends_are_kept():
    text = "input 8x8x1\r\n# note\r\nConv  ->ReLU\r\n"
    assert fmt(text) == "input 8x8x1\r\n# note\r\nConv -> ReLU\r\n"


# ---- comments ------------------------------------------------------------------------------

def test_comments_stay_in_place():
    text = (
        "# header\n"
        "\n"
        "network Net   # name\n"
        "input 28x28x1\n"
        "  # about the macro\n"
        "def b(c) = Conv(c) ->  # after an arrow\n"
        "   ReLU\n"
        "c1: Conv(8)   # first\n"
        "  # before the second line\n"
        "  -> b(8)\n"
        "# the end\n")
    assert fmt(text) == (
        "# header\n"
        "\n"
        "network Net  # name\n"
        "input 28x28x1\n"
        "# about the macro\n"
        "def b(c) = Conv(c)  # after an arrow\n"
        "  -> ReLU\n"
        "c1: Conv(8)  # first\n"
        "  # before the second line\n"
        "  -> b(8)\n"
        "# the end\n")


def test_comments_inside_brackets_break_the_line_there():
    text = INPUT + (
        "(  # a group\n"
        "Conv(8,  # filters\n"
        "  3x3) -> ReLU  # relu\n"
        ") * 2 -> {  # branches\n"
        "  Identity  # shortcut\n"
        "  + ReLU\n"
        "  # closing\n"
        "}\n")
    assert fmt(text) == INPUT + (
        "(  # a group\n"
        "    Conv(8,  # filters\n"
        "         3x3) -> ReLU  # relu\n"
        ") * 2 -> {  # branches\n"
        "    Identity  # shortcut\n"
        "  + ReLU\n"
        "    # closing\n"
        "}\n")


def test_comments_in_train_and_def_parameters():
    text = ("input 8x8x1\n"
            "def b(c,  # channels\n"
            "      k  # kernel\n"
            ") = Conv(c, k)\n"
            "train { lr = 0.1  # small\n"
            "        epochs = 2 }\n"
            "b(2, 3)\n")
    assert fmt(text) == ("input 8x8x1\n"
                         "def b(c,  # channels\n"
                         "      k  # kernel\n"
                         "     ) = Conv(c, k)\n"
                         "train {\n"
                         "    lr = 0.1  # small\n"
                         "    epochs = 2\n"
                         "}\n"
                         "b(2, 3)\n")


def test_a_comment_inside_an_expression_moves_to_the_end_of_its_line():
    text = "input 8x8x1\nlet a = (1 +  # one\n  2)\nConv(a)\n"
    assert fmt(text) == "input 8x8x1\nlet a = 1 + 2  # one\nConv(a)\n"


def test_keywords_are_not_reordered_around_a_comment():
    text = INPUT + "Conv(8, pad=1,  # pad\n  stride=2)\n"
    out = fmt(text)
    assert out.index("pad=1") < out.index("stride=2") and "# pad" in out


# ---- idempotence and graph identity on every program we have -------------------------------

def _graph_facts(graph) -> tuple:
    """What a compiled network is, without source positions."""
    nodes = []
    for name, attrs in graph.nodes(data=True):
        scopes = tuple((s.kind, s.label, s.index, s.count) for s in attrs["scopes"])
        nodes.append((name, attrs["op"], attrs["params"], tuple(attrs["inputs"]),
                      attrs["shape"], attrs["label"], attrs["written"], scopes,
                      attrs.get("param_shapes")))
    return (tuple(nodes), graph.graph["name"], graph.graph["input_shape"],
            graph.graph["bindings"], graph.graph["output"], graph.graph["train_settings"])


PROGRAMS = {f"examples/{p.name}": p.read_text(encoding="utf-8")
            for p in sorted(EXAMPLES.glob("*.cnn"))}
PROGRAMS.update({f"tests/programs/{p.parent.name}/{p.name}": p.read_text(encoding="utf-8")
                 for p in sorted((ROOT / "tests" / "programs").rglob("*.cnn"))})
PROGRAMS.update(doc_programs())
PARSING = {name: text for name, text in PROGRAMS.items() if parses(text)}


def test_the_corpus_is_not_empty():
    assert len(PARSING) > 40
    assert sum(name.startswith("examples/") for name in PARSING) == len(list(EXAMPLES.glob("*.cnn")))
    assert len(list(EXAMPLES.glob("*.cnn"))) >= 16


@pytest.mark.parametrize("name", sorted(PARSING))
def test_formatting_is_idempotent_and_keeps_the_graph(name):
    text = PARSING[name]
    once = fmt(text)
    assert fmt(once) == once
    assert [line.split("#", 1)[1].rstrip() for line in text.splitlines() if "#" in line] == \
        [line.split("#", 1)[1] for line in once.splitlines() if "#" in line]
    try:
        before = check_text(text)
    except CnnDslError as error:
        with pytest.raises(type(error)):
            check_text(once)
        return
    assert _graph_facts(check_text(once)) == _graph_facts(before)


@pytest.mark.parametrize("name", sorted(set(PROGRAMS) - set(PARSING)))
def test_a_file_that_does_not_parse_is_the_same_error_as_check(name, tmp_path, capsys):
    path = tmp_path / "bad.cnn"
    path.write_text(PROGRAMS[name], encoding="utf-8")
    assert main(["check", str(path)]) == 1
    from_check = capsys.readouterr().err
    assert main(["fmt", str(path)]) == 1
    assert capsys.readouterr().err == from_check
    assert path.read_text(encoding="utf-8") == PROGRAMS[name]


def test_the_examples_are_formatted():
    changed = [name for name, text in PROGRAMS.items()
               if name.startswith("examples/") and fmt(text) != text]
    assert changed == []


def test_the_lecture_notation_as_written_is_the_formatted_example():
    """examples/lecture.cnn quotes the notes' line in a comment, and the same line with the
    classifier FC(classes) before its Softmax: written that way, the file formats to itself
    and compiles to the same graph, which is the notes' network plus that one layer."""
    text = PROGRAMS["examples/lecture.cnn"]
    notes = "[(Conv→ReLU)*k→Pool]*m→(FC→ReLU)*n→Softmax"
    compact = notes.replace("→Softmax", "→FC(classes)→Softmax")
    assert f"#   {notes}\n" in text and f"#   {compact}\n" in text
    body = text.splitlines()[-1]
    as_written = text.replace(body, compact)
    assert fmt(as_written) == text
    graph = check_text(text)
    assert _graph_facts(check_text(as_written)) == _graph_facts(graph)
    as_in_the_notes = check_text(text.replace(body, notes))
    ops = [node["op"] for _, node in graph.nodes(data=True)]
    notes_ops = [node["op"] for _, node in as_in_the_notes.nodes(data=True)]
    assert ops == notes_ops[:-1] + ["FC", "Softmax"]
    assert graph.nodes[graph.graph["output"]]["shape"] == (graph.graph["bindings"]["classes"],)


# ---- the safety check ----------------------------------------------------------------------

def _breaking_printer(monkeypatch, change):
    from cnndsl import fmt as module

    original = module._Printer.program
    monkeypatch.setattr(module._Printer, "program", lambda self: change(original(self)))


@pytest.mark.parametrize("change, message", [
    (lambda out: out.replace("Conv(8)", "Conv(9)"), "another program"),
    (lambda out: out.replace("# note", ""), "comment"),
    (lambda out: out.replace("->", "->\n->"), "does not parse"),
])
def test_an_unsafe_result_is_refused(monkeypatch, change, message):
    _breaking_printer(monkeypatch, change)
    with pytest.raises(UnsafeFormat, match=message):
        format_text(INPUT + "Conv(8) -> ReLU  # note\n")


def test_a_result_with_another_graph_is_refused(monkeypatch):
    # keyword order would be a different program only if cnndsl sorted into a wrong order
    from cnndsl import fmt as module

    monkeypatch.setattr(module, "_shape", lambda node: None)  # skip the AST comparison
    _breaking_printer(monkeypatch, lambda out: out.replace("Conv(8)", "Conv(9)"))
    with pytest.raises(UnsafeFormat, match="another network: layer conv1: params"):
        format_text(INPUT + "Conv(8) -> ReLU\n")


def test_an_unstable_result_is_refused(monkeypatch):
    from cnndsl import fmt as module

    calls = []
    original = module._Printer.program

    def second_pass_differs(self):
        calls.append(1)
        out = original(self)
        return out + "\n# extra\n" if len(calls) > 1 else out

    monkeypatch.setattr(module._Printer, "program", second_pass_differs)
    monkeypatch.setattr(module, "find_comments", lambda text: [])
    with pytest.raises(UnsafeFormat, match="changes it again"):
        format_text(INPUT + "Conv(8)->ReLU\n")


def test_the_command_writes_nothing_when_unsafe(monkeypatch, tmp_path, capsys):
    good, bad = tmp_path / "good.cnn", tmp_path / "bad.cnn"
    good.write_text(INPUT + "ReLU->ReLU\n", encoding="utf-8")
    bad.write_text(INPUT + "Conv(8)->ReLU\n", encoding="utf-8")
    _breaking_printer(monkeypatch, lambda out: out.replace("Conv(8)", "Conv(9)"))
    assert main(["fmt", str(good), str(bad)]) == 3
    err = capsys.readouterr().err
    assert f"cnndsl: internal error: cannot format {bad} safely: the formatted text parses " \
           "to another program; nothing was written" in err
    assert good.read_text() == INPUT + "ReLU->ReLU\n"
    assert bad.read_text() == INPUT + "Conv(8)->ReLU\n"


# ---- the command ---------------------------------------------------------------------------

UGLY = INPUT + "Conv(8)→ReLU\n"
PRETTY = INPUT + "Conv(8) -> ReLU\n"


@pytest.fixture
def files(tmp_path):
    ugly, pretty = tmp_path / "ugly.cnn", tmp_path / "pretty.cnn"
    ugly.write_text(UGLY, encoding="utf-8")
    pretty.write_text(PRETTY, encoding="utf-8")
    return ugly, pretty


def test_in_place(files, capsys):
    ugly, pretty = files
    assert main(["fmt", str(ugly), str(pretty)]) == 0
    assert ugly.read_text(encoding="utf-8") == PRETTY
    assert pretty.read_text(encoding="utf-8") == PRETTY
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"reformatted {ugly}\n1 file reformatted, 1 file left unchanged\n"


def test_in_place_keeps_a_symbolic_link(files, tmp_path):
    ugly, _ = files
    link = tmp_path / "link.cnn"
    link.symlink_to(ugly)
    assert main(["fmt", str(link)]) == 0
    assert link.is_symlink() and ugly.read_text(encoding="utf-8") == PRETTY


def test_check(files, capsys):
    ugly, pretty = files
    assert main(["fmt", "--check", str(pretty)]) == 0
    assert capsys.readouterr().err == "1 file would be left unchanged\n"
    assert main(["fmt", str(ugly), "--check", str(pretty)]) == 1  # options among files
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"would reformat {ugly}\n"
                            "1 file would be reformatted, 1 file would be left unchanged\n")
    assert ugly.read_text(encoding="utf-8") == UGLY


def test_diff(files, capsys):
    ugly, pretty = files
    assert main(["fmt", "--diff", str(ugly), str(pretty)]) == 0
    out = capsys.readouterr().out
    assert out == (f"--- {ugly}\n+++ {ugly}\n@@ -1,2 +1,2 @@\n input 28x28x1\n"
                   "-Conv(8)→ReLU\n+Conv(8) -> ReLU\n")
    assert ugly.read_text(encoding="utf-8") == UGLY
    assert main(["fmt", "--diff", "--check", str(ugly)]) == 1


def test_diff_of_a_file_without_a_final_newline(tmp_path, capsys):
    path = tmp_path / "n.cnn"
    path.write_text(INPUT + "ReLU", encoding="utf-8")
    assert main(["fmt", "--diff", str(path)]) == 0
    assert capsys.readouterr().out.endswith(
        "-ReLU\n\\ No newline at end of file\n+ReLU\n")


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_stdin_to_stdout(monkeypatch, capsys):
    _stdin(monkeypatch, UGLY.encode())
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == PRETTY
    _stdin(monkeypatch, UGLY.encode())
    assert main(["fmt", "--check", "-"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "would reformat <stdin>" in captured.err
    _stdin(monkeypatch, b"input 8x8x1\nConv(8) ReLU\n")
    assert main(["fmt", "-"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("<stdin>:2:9: error: unexpected 'ReLU'")
    _stdin(monkeypatch, b"input 8x8x1\n\xff\n")
    assert main(["fmt", "-"]) == 1
    assert capsys.readouterr().err.startswith("<stdin>: error: this is not UTF-8 text (byte 0xff)")


def test_errors_write_nothing(files, tmp_path, capsys):
    ugly, _ = files
    broken = tmp_path / "broken.cnn"
    broken.write_text(INPUT + "(Conv(8) -> ReLU\n", encoding="utf-8")
    missing = tmp_path / "missing.cnn"
    assert main(["fmt", str(ugly), str(broken), str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:2:1: error: '(' is never closed\n 2 | (Conv(8) -> ReLU\n   | ^\n" in err
    assert f"{missing}: error: cannot read '{missing}': No such file or directory" in err
    assert err.endswith("cnndsl: nothing was written\n")
    assert ugly.read_text(encoding="utf-8") == UGLY  # the good file too
    assert "Traceback" not in err


def test_a_file_that_does_not_check_is_still_formatted(tmp_path):
    path = tmp_path / "shape.cnn"
    path.write_text("input 4x4x1\nConv(8,  9x9,pad=valid)\n", encoding="utf-8")
    assert main(["fmt", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == "input 4x4x1\nConv(8, 9x9, pad=valid)\n"


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fmt"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["fmt", "--bogus", "x.cnn"])
    assert exit_.value.code == 2


def test_library_errors_are_located():
    with pytest.raises(ParseError) as error:
        format_text("input 8x8x1\nConv(8) ReLU\n", "net.cnn")
    assert str(error.value).startswith("net.cnn:2:9: error: unexpected 'ReLU'")


def test_fmt_does_not_load_numba(files):
    ugly, _ = files
    code = ("import sys; from cnndsl.cli import main; rc = main(['fmt', '--check', "
            f"{str(ugly)!r}]); print('numba' in sys.modules, rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    assert done.stdout.split() == ["False", "1"], done.stderr


def test_a_file_too_deep_to_format_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "deep.cnn"
    path.write_text("input 8x8x1\nlet a = " + " + ".join(["1"] * 600) + "\nFC(a)\n",
                    encoding="utf-8")
    assert main(["fmt", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: error: the file nests too deeply")
    assert "Traceback" not in err and "internal error" not in err
