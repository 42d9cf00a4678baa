"""Pooling padding obeys one rule for every form of `pad` (issue 17): at most size // 2 per
side, on the padding as resolved. What passes the rule checks, compiles, runs, and exports
to PyTorch and ONNX with the same values; what breaks it is a located error with a hint —
MaxPool, AvgPool and L2Pool, in 1-D, 2-D and 3-D."""

from __future__ import annotations

import numpy as np
import pytest
from test_export import assert_matches, inputs, run_onnx, run_pytorch

import cnndsl
from cnndsl.errors import ShapeError

POOLS = ("MaxPool", "AvgPool", "L2Pool")
INPUTS = {1: "9x2", 2: "9x8x2", 3: "7x6x5x2"}


def per_axis(rank: int, values) -> str:
    """A per-axis tuple written for `rank` axes, e.g. (1, 0) in 2-D."""
    return "(" + ", ".join(str(v) for v in values[:rank]) + ")" if rank > 1 else str(values[0])


def accepted(rank: int) -> list[str]:
    """Pool calls whose padding is within the rule: every form of `pad`."""
    return [
        "{pool}(3, 2, pad=valid)",
        "{pool}(3, 2, pad=same)",
        "{pool}(4, 3, pad=same)",  # stride > size // 2 + 1: 'same' still pads <= 2 a side
        "{pool}(2, 1, pad=same)",  # one zero after only
        "{pool}(2, pad=full)",  # full on a 2-wide window: 1 per side, the limit
        "{pool}(1, pad=full)",  # nothing
        "{pool}(3, 2, pad=1)",
        "{pool}(5, 2, pad=2)",
        "{pool}(3, 1, pad=" + per_axis(rank, (1, 0, 1)) + ")",
    ]


def refused(rank: int) -> list[tuple[str, str]]:
    """(pool call, the words of its error) for padding beyond the rule."""
    return [
        ("{pool}(3, 2, pad=full)", "pad=full pads 2 per side on a 3-wide window"),
        ("{pool}(4, 2, pad=full)", "pad=full pads 3 per side on a 4-wide window"),
        ("{pool}(3, 2, pad=2)", "pad=2 pads 2 per side on a 3-wide window"),
        ("{pool}(2, pad=" + per_axis(rank, (0, 2, 0) if rank > 1 else (2,)) + ")",
         "pads 2 per side on a 2-wide window"),
    ]


def program(rank: int, call: str) -> str:
    return f"network P\ninput {INPUTS[rank]}\nConv(3, 1) -> {call} -> Conv(2, 1)\n"


CASES = [(pool, rank, call) for pool in POOLS for rank in (1, 2, 3)
         for call in accepted(rank)]
BAD = [(pool, rank, call, words) for pool in POOLS for rank in (1, 2, 3)
       for call, words in refused(rank)]


def case_id(case) -> str:
    return f"{case[0]}-{case[1]}d-{case[2].format(pool='P')}"


@pytest.mark.parametrize("case", BAD, ids=case_id)
def test_padding_beyond_half_the_window_is_a_located_error(case):
    pool, rank, call, words = case
    text = program(rank, call.format(pool=pool))
    with pytest.raises(ShapeError) as error:
        cnndsl.check_text(text, filename="p.cnn")
    report = str(error.value)
    assert report.startswith(f"p.cnn:3:15: error: {pool} '{pool.lower()}1' ")
    assert words in report
    assert "per side" in report and "hint: pad at most size // 2 per side" in report
    assert "^" * len(call.format(pool=pool)) in report  # the caret under the whole call


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padding_within_the_rule_checks_runs_and_exports(case, tmp_path):
    pool, rank, call = case
    text = program(rank, call.format(pool=pool))
    graph = cnndsl.check_text(text)
    node = graph.nodes[f"{pool.lower()}1"]
    window = int(call.format(pool=pool).split("(")[1].split(",")[0].rstrip(")"))
    assert all(max(sides) <= window // 2 for sides in node["padding"])
    model = cnndsl.compile(text, seed=3)
    x = inputs(model, 2, seed=rank)
    if pool == "L2Pool":
        x = np.abs(x)  # any sign works; positive keeps the comparison's scale honest
    expected = model.forward(x)
    assert expected.shape == (2, *model.output_shape)
    from cnndsl.export.onnx import to_onnx
    from cnndsl.export.pytorch import to_pytorch

    to_onnx(model, tmp_path / "p.onnx")
    assert_matches(run_onnx(tmp_path / "p.onnx", x), expected)
    to_pytorch(model, tmp_path / "p.py")
    assert_matches(run_pytorch(tmp_path / "p.py", x)[0], expected)


def test_every_form_is_exercised():
    forms = " ".join(accepted(2))
    for form in ("pad=valid", "pad=same", "pad=full", "pad=1", "pad=(1, 0)"):
        assert form in forms
