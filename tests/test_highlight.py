"""Highlighting of .cnn files: the Pygments lexer (cnndsl.highlight, the "cnn" entry point)
and the TextMate grammar (editors/, written by cnndsl.tools.textmate), both built from the
terminals of grammar/cnn.lark.

The TextMate grammar is exercised by `textmate_scopes`, a small test-only engine that applies
its `match` rules as TextMate does (one line at a time; at each position the earliest match,
ties going to the rule listed first), with Python's re: the generator keeps the patterns to
the regex subset both engines read alike (cnndsl.tools.textmate.portable).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import doc_programs
from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Lark
from lark.exceptions import UnexpectedCharacters
from lark.lexer import PatternStr, TerminalDef
from pygments.lexers import find_lexer_class_by_name, get_lexer_by_name, get_lexer_for_filename
from pygments.token import Error, Keyword, Name, Number, Operator, Punctuation, Text, Token

from cnndsl import highlight
from cnndsl.highlight import CnnLexer, scan, styled_tokens, token_definitions
from cnndsl.ops import OPS, Op
from cnndsl.parser import grammar_text
from cnndsl.tools import textmate

ROOT = Path(__file__).resolve().parent.parent
EDITORS = ROOT / "editors"
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
# fixtures of valid programs, if the suite grows a folder of them (programs/bad holds errors)
VALID_FIXTURES = sorted(path for path in (ROOT / "tests" / "programs").glob("*/*.cnn")
                        if path.parent.name != "bad")
BAD_PROGRAMS = sorted((ROOT / "tests" / "programs" / "bad").glob("*.cnn"))
def valid_programs() -> list[tuple[str, str]]:
    files = [(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"))
             for path in [*EXAMPLES, *VALID_FIXTURES]]
    return files + doc_programs()


VALID = valid_programs()
VALID_IDS = [where for where, _ in VALID]


def lexed(text: str) -> list[tuple[object, str]]:
    """(token type, text) from the lexer Pygments finds by name (the entry point)."""
    return list(get_lexer_by_name("cnn").get_tokens(text))


def token_of(text: str, word: str, occurrence: int = 0):
    """The token type of the `occurrence`-th token whose text is `word`."""
    found = [kind for kind, value in lexed(text) if value == word]
    assert len(found) > occurrence, f"{word!r} is not a token of {text!r}: {lexed(text)}"
    return found[occurrence]


def unclassified(tokens) -> list[tuple[object, str]]:
    """Tokens with visible characters that are errors or plain text."""
    return [(kind, value) for kind, value in tokens
            if value.strip() and (kind in Error or kind in Text or kind is Token)]


# ---- the Pygments lexer ---------------------------------------------------------------------


def test_the_entry_point_finds_the_lexer():
    assert type(get_lexer_by_name("cnn")) is CnnLexer
    assert type(get_lexer_by_name("cnndsl")) is CnnLexer
    assert type(get_lexer_for_filename("net.cnn")) is CnnLexer
    assert find_lexer_class_by_name("cnn") is CnnLexer


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_pygmentize_classifies_every_token_of_an_example(path):
    """The real `pygmentize` command, through the installed entry point."""
    result = subprocess.run(["pygmentize", "-l", "cnn", "-f", "raw", str(path)],
                            capture_output=True, text=True, check=True)
    tokens = []
    for line in result.stdout.splitlines():
        kind, value = line.split("\t", 1)
        tokens.append((kind, ast.literal_eval(value)))
    assert "".join(value for _, value in tokens).strip() == path.read_text("utf-8").strip()
    visible = [(kind, value) for kind, value in tokens if value.strip()]
    assert visible
    bad = [(kind, value) for kind, value in visible
           if kind == "Token" or kind.startswith(("Token.Error", "Token.Text"))]
    assert bad == []


def test_pygmentize_colours_a_terminal():
    path = ROOT / "examples" / "lenet5.cnn"
    result = subprocess.run(["pygmentize", "-l", "cnn", "-f", "terminal", str(path)],
                            capture_output=True, text=True, check=True)
    assert "\x1b[" in result.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert plain.strip() == path.read_text("utf-8").strip()


@pytest.mark.parametrize(("where", "text"), VALID, ids=VALID_IDS)
def test_valid_programs_have_no_error_and_no_plain_text(where, text):
    tokens = lexed(text)
    assert "".join(value for _, value in tokens).strip() == text.strip()
    assert unclassified(tokens) == []


def test_the_valid_programs_include_the_docs():
    """The docs' programs are checked too (a test that would pass on an empty list)."""
    assert len(VALID) > len(EXAMPLES) + 10


SNIPPET = """\
# a comment
network Net
input 28x28x1
let x = 3, depth = 2
def block(c) = (Conv(c, 3x3, pad=same) → ReLU) * depth -> MaxPool(2)
train { lr = 0.05, epochs = 5 }
stem: Conv(16, 3 × 5, stride=x, bias=false) -> block(32) × x \\
  -> { Identity | Dropout(.5) + FC(10 - 1 * 2 // 2 ^ 1) } -> [FC(2e-3)] -> Softmax
"""


@pytest.mark.parametrize(("word", "kind"), [
    ("network", Keyword), ("input", Keyword), ("let", Keyword), ("def", Keyword),
    ("train", Keyword), ("Conv", Name.Builtin), ("ReLU", Name.Builtin),
    ("MaxPool", Name.Builtin), ("Softmax", Name.Builtin), ("Identity", Name.Builtin),
    ("stem", Name.Label), ("block", Name.Function), ("Net", Name.Class),
    ("28x28x1", Number), ("3x3", Number), ("3 × 5", Number), ("2", Number.Integer),
    ("0.05", Number.Float), (".5", Number.Float), ("2e-3", Number.Float),
    ("# a comment", Token.Comment.Single), ("→", Operator), ("->", Operator),
    ("*", Operator), ("×", Operator), ("|", Operator), ("+", Operator), ("-", Operator),
    ("//", Operator), ("^", Operator), ("=", Operator), ("same", Keyword.Constant),
    ("false", Keyword.Constant), ("pad", Name.Attribute), ("lr", Name.Attribute),
    ("c", Name), ("depth", Name.Attribute), (":", Punctuation), (",", Punctuation),
    ("(", Punctuation), ("{", Punctuation), ("[", Punctuation), ("\\", Punctuation),
])
def test_classification(word, kind):
    assert token_of(SNIPPET, word) is kind


def test_sizes_are_numbers_and_a_name_x_is_a_name():
    tokens = [(kind, value) for kind, value in lexed("let x = 3\nConv(8, 3x3) * x -> FC(x)")
              if value.strip()]
    assert (Number, "3x3") in tokens
    assert [kind for kind, value in tokens if value == "x"] == [Name.Attribute, Name, Name]
    assert token_of("(Conv) * 3 x 3", "3 x 3") is Number  # spaces allowed between numbers


def test_names_are_classified_by_context():
    text = "def stage(c) = Conv(c) -> ReLU\nstage(8) -> stage(16) -> networkx -> c: FC"
    assert token_of(text, "stage", 0) is Name.Function  # defined
    assert token_of(text, "stage", 1) is Name.Function  # and called
    assert token_of(text, "networkx") is Name  # not the keyword `network`
    assert token_of(text, "c", 2) is Name.Label
    assert token_of(SNIPPET, "x", 0) is Name.Attribute  # let x = 3: a name given a value
    assert token_of(SNIPPET, "stride") is Name.Attribute
    assert token_of(SNIPPET, "x", 1) is Name  # stride=x: a use of the binding


def test_error_only_where_the_grammar_has_no_token():
    tokens = lexed("Conv(8) $ -> . ReLU")
    assert [value for kind, value in tokens if kind in Error] == ["$", "."]
    assert token_of("Conv(8) $ -> . ReLU", "ReLU") is Name.Builtin  # lexing goes on


def test_a_layer_registered_at_run_time_is_highlighted(monkeypatch):
    assert token_of("Conv -> Swish", "Swish") is Name

    class Swish(Op):
        name = "Swish"

    monkeypatch.setitem(OPS, "Swish", Swish)
    assert token_of("Conv -> Swish", "Swish") is Name.Builtin


def test_every_terminal_of_the_grammar_has_a_style():
    definitions = token_definitions()
    lark = Lark(grammar_text(), parser=None, lexer="basic")
    named = {t.name for t in definitions.terminals} | set(definitions.words.values())
    assert named == {t.name for t in lark.terminals}
    assert definitions.words == {"network": "NETWORK", "input": "INPUT", "let": "LET",
                                 "def": "DEF", "train": "TRAIN"}
    assert all(t.style is not None for t in definitions.terminals
               if t.name != definitions.name_terminal)


def test_a_new_terminal_without_a_style_is_refused():
    with pytest.raises(KeyError, match="TERMINAL_STYLES"):
        highlight._terminal_style(TerminalDef("AT", PatternStr("@")))


# ---- the same cut as the parser's lexer -----------------------------------------------------


LEXER = Lark(grammar_text(), parser=None, lexer="basic")


def assert_cut_as_lark(text: str) -> None:
    """scan() yields Lark's own tokens; where Lark stops on a character, scan() marks that
    character as an error."""
    ours = list(scan(text))
    theirs = []
    try:
        for token in LEXER.lex(text, dont_ignore=True):
            theirs.append((token.start_pos, token.type, token.value))
    except UnexpectedCharacters as error:
        first_error = next(token for token in ours if token.terminal is None)
        assert first_error.start == error.pos_in_stream
        ours = ours[:ours.index(first_error)]
    assert [(t.start, t.terminal, t.value) for t in ours] == theirs


@pytest.mark.parametrize("path", [*EXAMPLES, *BAD_PROGRAMS],
                         ids=lambda path: path.relative_to(ROOT).as_posix())
def test_tokens_are_the_parsers_tokens(path):
    assert_cut_as_lark(path.read_text("utf-8"))


PIECES = ["network", "input", "let", "def", "train", "networkx", "x", "Conv", "true", "a1",
          "_b", "3", "3x3", "2 × 2", "0.5", ".5", "1e-3", "5e", "->", "→", "*", "×", "//",
          "/", "^", "+", "-", "|", "=", ":", ",", "(", ")", "[", "]", "{", "}", "# c", "\\",
          " ", "\t", "\f", "\n", "\r\n", "\r", ".", "$", "é", "٣"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_fuzz_tokens_are_the_parsers_tokens(pieces):
    assert_cut_as_lark("".join(pieces))


# ---- the TextMate grammar -------------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar() -> dict:
    return json.loads((EDITORS / textmate.GRAMMAR_FILE).read_text("utf-8"))


def textmate_rules(grammar: dict) -> list[tuple[re.Pattern, dict]]:
    rules = []
    for pattern in grammar["patterns"]:
        rule = grammar["repository"][pattern["include"].removeprefix("#")]
        rules.append((re.compile(rule["match"]), rule))
    return rules


def textmate_scopes(grammar: dict, text: str) -> list[str | None]:
    """The scope TextMate gives each character of `text` (None: only source.cnn). Lines are
    tokenized one at a time with their line break, as VS Code does."""
    rules = textmate_rules(grammar)
    scopes: list[str | None] = []
    for line in text.split("\n"):
        line_scopes: list[str | None] = [None] * (len(line) + 1)
        position = 0
        while position < len(line) + 1:
            best = None
            for regex, rule in rules:
                match = regex.search(line + "\n", position)
                if match and (best is None or match.start() < best[0].start()):
                    best = (match, rule)
                    if match.start() == position:
                        break  # nothing can start earlier; ties go to the first rule
            if best is None:
                break
            match, rule = best
            assert match.end() > match.start(), f"empty match of {rule['match']}"
            for group, span in [(0, match.span()), *((int(g), match.span(int(g)))
                                                     for g in rule.get("captures", {}))]:
                scope = rule.get("name") if group == 0 else rule["captures"][str(group)]["name"]
                line_scopes[span[0]:span[1]] = [scope] * (span[1] - span[0])
            position = match.end()
        scopes.extend(line_scopes)
    return scopes[:len(text)]


def test_the_committed_editor_files_are_what_the_generator_writes():
    for name, text in textmate.generated_files().items():
        assert (EDITORS / name).read_text("utf-8") == text, (
            f"editors/{name} is out of date: run python -m cnndsl.tools.textmate")


def test_the_generator_writes_and_checks(tmp_path, capsys):
    assert textmate.main(["--check", "--out", str(tmp_path)]) == 1  # nothing there yet
    assert textmate.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(textmate.generated_files())
    assert textmate.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / textmate.GRAMMAR_FILE).write_text("{}", encoding="utf-8")
    assert textmate.main(["--check", "--out", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_the_grammar_has_the_required_keys(grammar):
    assert grammar["scopeName"] == "source.cnn"
    assert grammar["fileTypes"] == ["cnn"]
    assert grammar["patterns"]
    for key, rule in grammar["repository"].items():
        scopes = [rule.get("name")] + [c["name"] for c in rule.get("captures", {}).values()]
        assert all(scope is None or scope.endswith(".cnn") for scope in scopes), key
        textmate.portable(rule["match"], key)
    manifest = json.loads((EDITORS / "package.json").read_text("utf-8"))
    (language,) = manifest["contributes"]["languages"]
    assert language["extensions"] == [".cnn"]
    (contributed,) = manifest["contributes"]["grammars"]
    assert (EDITORS / contributed["path"]).is_file()
    assert (EDITORS / language["configuration"]).is_file()


@pytest.mark.parametrize("regex", [r"\bdef\b", r"(?i:conv)", r"(?P<n>a)", r"(a)\1", r"\w+",
                                   r"[\s]", r"^#", r"a$", r"(?>ab)", r"a*+"])
def test_portable_refuses_what_one_engine_reads_differently(regex):
    with pytest.raises(ValueError):
        textmate.portable(regex)


@pytest.mark.parametrize(("where", "text"), VALID, ids=VALID_IDS)
def test_textmate_classifies_every_character_of_valid_programs(grammar, where, text):
    scopes = textmate_scopes(grammar, text)
    unscoped = [(i, char) for i, (char, scope) in enumerate(zip(text, scopes, strict=True))
                if not char.isspace() and scope is None]
    assert unscoped == []
    assert not [scope for scope in scopes if scope and scope.startswith("invalid")]


def pygments_scopes(text: str) -> list[str | None]:
    """The TextMate scope of each character as the Pygments lexer styles it, except that a
    call of a macro stays a plain name (TextMate cannot look back at the `def`)."""
    scopes: list[str | None] = [None] * len(text)
    for start, style, value in styled_tokens(text):
        if style is highlight.MACRO and not re.search(r"\bdef[ \t\f]+$", text[:start]):
            style = highlight.OTHER_NAME
        scopes[start:start + len(value)] = [style.scope] * len(value)
    return scopes


@pytest.mark.parametrize(("where", "text"), [*VALID, ("snippet", SNIPPET),
                                             ("errors", "Conv(8) $ -> .é\r ReLU:\n")],
                         ids=[*VALID_IDS, "snippet", "errors"])
def test_textmate_and_pygments_agree(grammar, where, text):
    visible = [i for i, char in enumerate(text) if not char.isspace()]
    textmate_ = textmate_scopes(grammar, text)
    pygments_ = pygments_scopes(text)
    assert [textmate_[i] for i in visible] == [pygments_[i] for i in visible]


def test_textmate_marks_characters_no_terminal_matches(grammar):
    text = "Conv(8) $ -> ."
    scopes = textmate_scopes(grammar, text)
    assert scopes[text.index("$")] == "invalid.illegal.cnn"
    assert scopes[text.index(".")] == "invalid.illegal.cnn"
    assert scopes[text.index("C")] == "support.function.layer.cnn"


def test_textmate_specific_scopes(grammar):
    text = SNIPPET
    scopes = textmate_scopes(grammar, text)

    def scope(word: str, occurrence: int = 0) -> str | None:
        starts = [m.start() for m in re.finditer(re.escape(word), text)]
        return scopes[starts[occurrence]]

    assert scope("network") == "keyword.control.cnn"
    assert scope("Net") == "entity.name.type.network.cnn"
    assert scope("block") == "entity.name.function.macro.cnn"
    assert scope("stem") == "entity.name.tag.label.cnn"
    assert scope("pad") == "variable.parameter.cnn"
    assert scope("Conv") == "support.function.layer.cnn"
    assert scope("28x28x1") == "constant.numeric.size.cnn"
    assert scope("0.05") == "constant.numeric.float.cnn"
    assert scope("→") == scope("->") == "keyword.operator.arrow.cnn"
    assert scope("# a") == "comment.line.number-sign.cnn"
    assert scope("same") == "constant.language.cnn"
    assert scope("\\") == "constant.character.escape.line-continuation.cnn"


def test_textmate_lists_the_layers_it_is_generated_with():
    rules = textmate.textmate_grammar(layers=["Conv", "Swish"])["repository"]
    assert re.fullmatch(rules["layer"]["match"], "Swish")
    assert not re.fullmatch(rules["layer"]["match"], "ReLU")


def test_the_generator_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "cnndsl.tools.textmate", "--check"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
