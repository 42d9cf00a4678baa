"""docs/language.md, the reference, keeps up with the code: every registered layer and every
command and option is documented, and the README points to it (not to LANGUAGE.md, which a
user who clones or installs cnndsl does not have)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cnndsl.cli import build_parser
from cnndsl.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "language.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


# ---- what is checked (pure functions, so the tests of the tests below can use them) ----


def undocumented_layers(doc: str, names) -> list[str]:
    """Layer names that appear as `Name` in no table row and no heading of `doc`."""
    lines = [line for line in doc.splitlines() if line.startswith(("|", "#"))]
    text = "\n".join(lines)
    return [name for name in names if f"`{name}`" not in text]


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("the cnndsl parser has no subcommands")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: parser} of the CLI's subcommands, as build_parser() defines them."""
    return dict(_subparsers(parser).choices)


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"]


def command_section(doc: str, command: str) -> str | None:
    """The text under the heading "### `cnndsl COMMAND`", up to the next heading of its level
    or above; None when there is no such heading."""
    match = re.search(rf"^(#+) `cnndsl {re.escape(command)}`\s*$", doc, re.MULTILINE)
    if match is None:
        return None
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(doc, match.end())
    return doc[match.end(): end.start() if end else len(doc)]


def undocumented_commands(doc: str, parser: argparse.ArgumentParser) -> list[str]:
    """Commands without a section, and options (`COMMAND --option`, or `--option` of cnndsl
    itself) that their section (the whole document for cnndsl's own) does not mention."""
    missing = [option for option in long_options(parser) if option not in doc]
    for name, sub in subcommands(parser).items():
        section = command_section(doc, name)
        if section is None:
            missing.append(name)
            continue
        missing += [f"{name} {option}" for option in long_options(sub)
                    if not re.search(rf"{re.escape(option)}(?![\w-])", section)]
    return missing


# ---- the tests -------------------------------------------------------------------------


def test_every_registered_layer_and_alias_is_documented(doc):
    assert undocumented_layers(doc, list(OPS)) == []


def test_every_command_and_option_is_documented(doc):
    assert undocumented_commands(doc, build_parser()) == []


def test_readme_points_to_the_reference_not_to_language_md():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "LANGUAGE.md §" not in readme
    assert not re.search(r"LANGUAGE\.md", readme), "the README still names LANGUAGE.md"
    assert "(docs/language.md" in readme, "the README does not link docs/language.md"


def test_a_new_layer_without_documentation_is_caught(doc):
    assert undocumented_layers(doc, [*OPS, "FrobConv"]) == ["FrobConv"]


def test_a_new_command_or_option_without_documentation_is_caught(doc):
    parser = build_parser()
    frob = _subparsers(parser).add_parser("frob")
    frob.add_argument("--speed")
    subcommands(parser)["check"].add_argument("--frobnicate", action="store_true")
    parser.add_argument("--frob-all", action="store_true")
    assert sorted(undocumented_commands(doc, parser)) == ["--frob-all", "check --frobnicate",
                                                         "frob"]
