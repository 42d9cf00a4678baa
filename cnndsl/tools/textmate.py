"""Write the VS Code / TextMate highlighting of `.cnn` files (editors/) from the grammar.

    python -m cnndsl.tools.textmate          # writes editors/cnn.tmLanguage.json, and the
                                             # package.json and language-configuration.json
                                             # of the VS Code extension editors/ is
    python -m cnndsl.tools.textmate --check  # exit 1 if a file there is out of date

Run from a checkout. The rules are grammar/cnn.lark's terminals in the order the parser's lexer
tries them (`cnndsl.highlight.token_definitions`), with the scopes of
`cnndsl.highlight.TERMINAL_STYLES`, and the NAME terminal split into keywords, layers, labels...
by regexes that decide as `cnndsl.highlight.name_style` does, in the same order. Every
position of a line is matched by some rule (whitespace by unnamed rules, anything else by a
last `invalid.illegal` rule), so TextMate's "earliest match, ties by rule order" cuts a line
exactly as Lark's "first terminal that matches here" does.

Portability: the patterns are plain `match` rules (no begin/end) and use only the regex syntax
that Python's `re` and Oniguruma (TextMate, VS Code) read alike: literals, classes, `\\d`,
groups, alternation, greedy/lazy repetition, look-ahead and fixed-width look-behind. `portable`
checks each pattern, so tests/test_highlight.py can run the grammar with Python's `re`.
Regenerate after adding a layer to cnndsl.ops (the layer names are listed in the grammar).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from cnndsl import highlight
from cnndsl.highlight import Style, TokenDefinitions

GRAMMAR_FILE = "cnn.tmLanguage.json"
SCOPE = "source.cnn"
COMMENT_MARKER = "#"
# repository keys of the terminals whose lowercase name would read badly
RULE_KEYS = {"DIMS": "size", "_NL": "newline", "FLOORDIV": "floor-division", "POW": "power",
             "LPAR": "open-paren", "RPAR": "close-paren", "LSQB": "open-bracket",
             "RSQB": "close-bracket", "LBRACE": "open-brace", "RBRACE": "close-brace"}


def textmate_grammar(layers: list[str] | None = None) -> dict:
    """The TextMate grammar as a JSON-able dict. `layers`: the layer names to list
    (default: those registered in cnndsl.ops now)."""
    definitions = highlight.token_definitions()
    layers = sorted(highlight.layer_names() if layers is None else layers)
    rules: dict[str, dict] = {}
    for terminal in definitions.terminals:
        if terminal.name == definitions.name_terminal:
            rules.update(_name_rules(definitions, terminal.regex, layers))
        else:
            rules[_rule_key(terminal.name, definitions)] = _rule(terminal.style, terminal.regex)
    rules["invalid"] = _rule(highlight.ERROR, ".")  # no terminal matches this character
    for key, rule in rules.items():
        portable(rule["match"], key)
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/"
                   "tmlanguage.json",
        "name": "cnn",
        "scopeName": SCOPE,
        "fileTypes": [pattern.removeprefix("*.") for pattern in highlight.CnnLexer.filenames],
        "comment": "Generated from grammar/cnn.lark by `python -m cnndsl.tools.textmate`; "
                   "do not edit. Rules are tried in order; each is one token of the grammar.",
        "patterns": [{"include": f"#{key}"} for key in rules],
        "repository": rules,
    }


def _name_rules(definitions: TokenDefinitions, name: str, layers: list[str]) -> dict:
    """The NAME terminal, split as highlight.name_style splits it and in its order: a name
    after `def` / `network`, a keyword, a name before ':' / '=', a reserved value, a layer,
    any other name."""
    tail, space = definitions.name_tail, definitions.regex(definitions.whitespace_terminal)
    by_terminal = {terminal: word for word, terminal in definitions.words.items()}
    keyword = rf"{_one_of(definitions.words)}(?!{tail})"
    whole_name = rf"{name}(?!{tail})"

    def after(word_terminal: str, style: Style) -> dict:
        word = re.escape(by_terminal[word_terminal])
        return {"match": rf"({word})(?!{tail})(?:{space})((?!{keyword}){whole_name})",
                "captures": {"1": {"name": highlight.KEYWORD.scope},
                             "2": {"name": style.scope}}}

    def before(terminal: str) -> str:
        return rf"{whole_name}(?=(?:{space})?(?:{definitions.regex(terminal)}))"

    return {
        "macro-definition": after("DEF", highlight.MACRO),
        "network-name": after("NETWORK", highlight.NETWORK_NAME),
        "keyword": _rule(highlight.KEYWORD, keyword),
        "label": _rule(highlight.LABEL, before("COLON")),
        "argument": _rule(highlight.ARGUMENT, before("EQUAL")),
        "constant": _rule(highlight.CONSTANT, rf"{_one_of(highlight.constant_names())}(?!{tail})"),
        "layer": _rule(highlight.LAYER, rf"{_one_of(layers)}(?!{tail})"),
        "name": _rule(highlight.OTHER_NAME, name),
    }


def _one_of(words) -> str:
    return "(?:" + "|".join(re.escape(word) for word in sorted(words)) + ")"


def _rule(style: Style, regex: str) -> dict:
    return {"name": style.scope, "match": regex} if style.scope else {"match": regex}


def _rule_key(terminal: str, definitions: TokenDefinitions) -> str:
    if terminal == definitions.whitespace_terminal:
        return "whitespace"
    if terminal.startswith("__IGNORE"):  # the grammar's other unnamed %ignore: '\' newline
        return "line-continuation"
    return RULE_KEYS.get(terminal, terminal.strip("_").lower().replace("_", "-"))


# ---- the regex subset both engines read alike ---------------------------------------------

_PORTABLE_OPS = {"LITERAL", "NOT_LITERAL", "ANY", "IN", "BRANCH", "SUBPATTERN", "MAX_REPEAT",
                 "MIN_REPEAT", "ASSERT", "ASSERT_NOT"}
_PORTABLE_CLASS_ITEMS = {"LITERAL", "RANGE", "NEGATE", "CATEGORY"}
# \d is Unicode-aware in both (checked against vscode-oniguruma); \s and \w are not alike
_PORTABLE_CATEGORIES = {"CATEGORY_DIGIT", "CATEGORY_NOT_DIGIT"}


def portable(regex: str, where: str = "pattern") -> None:
    """Raise ValueError unless `regex` keeps to the subset Python's re and Oniguruma share.
    Excluded: backreferences, named groups, inline flags, anchors (^ $ \\b \\A \\Z: TextMate
    sees one line at a time), atomic groups and possessive repeats (Python 3.11+ only), and
    \\w, \\s (their Unicode sets differ between the engines)."""
    try:
        from re import _parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse
    parsed = sre_parse.parse(regex)
    if parsed.state.groupdict:
        raise ValueError(f"{where}: named groups are not portable: {regex}")
    _check_portable(parsed, regex, where)


def _check_portable(items, regex: str, where: str) -> None:
    for op, value in items:
        name = str(op)
        if name not in _PORTABLE_OPS:
            raise ValueError(f"{where}: {name} is outside the portable regex subset: {regex}")
        if name == "IN":
            for item, argument in value:
                if str(item) not in _PORTABLE_CLASS_ITEMS or (
                        str(item) == "CATEGORY" and str(argument) not in _PORTABLE_CATEGORIES):
                    raise ValueError(f"{where}: class item {item} {argument} is not portable: "
                                     f"{regex}")
        elif name == "BRANCH":
            for branch in value[1]:
                _check_portable(branch, regex, where)
        elif name == "SUBPATTERN":
            _group, add_flags, del_flags, body = value
            if add_flags or del_flags:
                raise ValueError(f"{where}: inline flags are not portable: {regex}")
            _check_portable(body, regex, where)
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            _check_portable(value[2], regex, where)
        elif name in ("ASSERT", "ASSERT_NOT"):
            _check_portable(value[1], regex, where)


# ---- the VS Code extension around the grammar ---------------------------------------------


def language_configuration() -> dict:
    """Comment toggling and bracket matching for VS Code, from the parser's brackets."""
    from cnndsl.parser import BRACKET_TEXT, OPENERS

    pairs = [[BRACKET_TEXT[opener], BRACKET_TEXT[closer]] for opener, closer in OPENERS.items()]
    return {"comments": {"lineComment": COMMENT_MARKER}, "brackets": pairs,
            "autoClosingPairs": pairs, "surroundingPairs": pairs}


def extension_manifest() -> dict:
    """package.json of a VS Code extension made of the editors/ folder."""
    from cnndsl import __version__

    lexer = highlight.CnnLexer
    return {
        "name": "cnndsl-cnn",
        "displayName": "cnndsl networks (.cnn)",
        "description": "Syntax highlighting of cnndsl's .cnn network files",
        "version": __version__,
        "publisher": "cnndsl",
        "license": "MIT",
        "engines": {"vscode": "^1.60.0"},
        "categories": ["Programming Languages"],
        "contributes": {
            "languages": [{
                "id": "cnn",
                "aliases": list(lexer.aliases),
                "extensions": [pattern.removeprefix("*") for pattern in lexer.filenames],
                "configuration": "./language-configuration.json",
            }],
            "grammars": [{"language": "cnn", "scopeName": SCOPE, "path": f"./{GRAMMAR_FILE}"}],
        },
    }


def generated_files() -> dict[str, str]:
    """File name (in editors/) -> text."""
    documents = {GRAMMAR_FILE: textmate_grammar(),
                 "language-configuration.json": language_configuration(),
                 "package.json": extension_manifest()}
    return {name: json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            for name, document in documents.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="editors", help="folder to write (default: editors)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs from what would be written")
    args = parser.parse_args(argv)
    from cnndsl.checkpoint import write_atomically

    stale = []
    for name, text in generated_files().items():
        path = Path(args.out) / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
            continue
        write_atomically(path, lambda handle, text=text: handle.write(text.encode("utf-8")))
        print(f"wrote {path}")
    for path in stale:
        print(f"out of date: {path} (run python -m cnndsl.tools.textmate)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
