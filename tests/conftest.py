from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example_graphs():
    """(name, checked graph) of every example network, then of every layer kind's
    examples (`Op.examples`)."""
    from cnndsl import check_text
    from cnndsl.ops import OPS, user_op_names

    for path in sorted(EXAMPLES.glob("*.cnn")):
        text = path.read_text()
        yield path.name, check_text(text, {"classes": 10} if "classes" in text else None)
    for name in sorted({OPS[key].name for key in user_op_names()}):
        for shape, chain in OPS[name].examples:
            yield f"{name}: {chain}", check_text(f"input {shape}\n{chain}")


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES
