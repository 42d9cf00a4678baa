"""Regenerate the diagrams of the examples (the README's pictures).

    python -m cnndsl.tools.diagrams               # README pictures into docs/diagrams/
    python -m cnndsl.tools.diagrams --all         # every example, SVG and PNG

Run from a checkout (it reads examples/*.cnn). Big networks are drawn collapsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnndsl.render import render_to_file

README_PICTURES = {"lenet5": False, "resnet18": True}  # name -> collapse
COLLAPSED = {"resnet18", "vgg16", "densenet121", "mobilenet_v1", "googlenet"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="examples", help="folder of .cnn files")
    parser.add_argument("--out", default="docs/diagrams", help="where to write the pictures")
    parser.add_argument("--all", action="store_true", help="every example, not only the README's")
    args = parser.parse_args(argv)

    examples = Path(args.examples)
    names = sorted(p.stem for p in examples.glob("*.cnn")) if args.all else list(README_PICTURES)
    for name in names:
        collapse = README_PICTURES.get(name, name in COLLAPSED)
        for fmt in ("svg", "png"):
            out = Path(args.out) / f"{name}.{fmt}"
            outcome = render_to_file(str(examples / f"{name}.cnn"), {}, str(out), fmt,
                                     collapse=collapse)
            if outcome.missing_dot or outcome.error is not None:
                print(f"failed: {name} ({'no dot program' if outcome.missing_dot else 'error'})",
                      file=sys.stderr)
                return 1
            print(f"wrote {out}" + (" (collapsed)" if collapse else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
