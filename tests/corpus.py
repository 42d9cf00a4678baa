"""The .cnn programs tests run over: the examples, the bad programs, and the code blocks of
the README and docs/ that are programs."""

from __future__ import annotations

import re
from pathlib import Path

from cnndsl import check_text, parse
from cnndsl.errors import CnnDslError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FILES = sorted((ROOT / "examples").glob("*.cnn"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def parses(text: str) -> bool:
    try:
        parse(text)
    except CnnDslError:
        return False
    return True


def checks(text: str) -> bool:
    try:
        check_text(text)
    except CnnDslError:
        return False
    return True


def doc_programs() -> list[tuple[str, str]]:
    """(where, text) of the README's and docs' code blocks that are .cnn programs: those
    tagged ```cnn, and untagged ones that parse."""
    programs = []
    for doc in DOCS:
        for number, match in enumerate(FENCE.finditer(doc.read_text(encoding="utf-8"))):
            language, text = match.groups()
            if language == "cnn" or (language == "" and parses(text)):
                programs.append((f"{doc.name}#{number}", text))
    return programs
