"""The compile pass (cnndsl.plan): fusion groups, buffer liveness, the arena's offsets, and
`cnndsl check --plan`. The plan is not executed yet; the checks here are over the plan
itself, by a checker that shares nothing with the planner but the Plan it reads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import EXAMPLES, example_graphs

from cnndsl import check_text
from cnndsl.cli import main
from cnndsl.ops import graph_layer
from cnndsl.plan import lower
from cnndsl.plan import memory as plan_memory
from cnndsl.plan import steps as plan_steps
from cnndsl.plan.fusion import fold_batchnorm
from cnndsl.plan.steps import BackwardStep, ConvStep, MergeStep, NormStep

BATCH = 2


# ---- the independent checker ------------------------------------------------------
def violations(plan) -> list[str]:
    """Everything wrong with `plan`'s memory: two buffers live at one step sharing bytes,
    a buffer outside the arena, a step whose values are not live when it runs, a peak
    below what is live at once or above allocating everything separately."""
    found = []
    buffers = list(plan.buffers)
    ranges = {b.name: (plan.offsets[b.name], plan.offsets[b.name] + b.nbytes)
              for b in buffers}
    for b in buffers:
        start, end = ranges[b.name]
        if start < 0 or end > plan.arena:
            found.append(f"{b.name} [{start}, {end}) is outside the arena of {plan.arena}")
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            live_together = a.first <= b.last and b.first <= a.last
            (a0, a1), (b0, b1) = ranges[a.name], ranges[b.name]
            if live_together and a0 < b1 and b0 < a1:
                found.append(f"{a.name} and {b.name} are live together and share memory")
    found += _dead_reads(plan)
    steps = range(len(plan.steps))
    at_once = max(sum(b.nbytes for b in buffers if b.first <= t <= b.last) for t in steps)
    if plan.arena < at_once:
        found.append(f"arena {plan.arena} < {at_once} bytes live at one step")
    if plan.arena > plan.unplanned_bytes:
        found.append(f"arena {plan.arena} > no reuse {plan.unplanned_bytes}")
    return found


def _dead_reads(plan) -> list[str]:
    """Steps touching a buffer that is not live then."""
    by_name = {b.name: b for b in plan.buffers}
    forward = {s.output: s for s in plan.forward_steps}

    def buffer_of(value):  # a pass-through step's output is its input's buffer
        while value not in by_name and value in forward:
            value = forward[value].inputs[0]
        return by_name.get(value)

    found = []
    for step in plan.forward_steps:
        for value in (*step.inputs, step.output):
            buffer = buffer_of(value)
            if buffer is None or not buffer.first <= step.index <= buffer.last:
                found.append(f"step {step.index} uses {value}, not live then")
    for step in plan.steps:
        if not isinstance(step, BackwardStep):
            continue
        source = plan.steps[step.forward]
        for value in source.kept:
            buffer = by_name[f"{value}:kept"]
            if not buffer.first <= step.index <= buffer.last:
                found.append(f"backward step {step.index} reads {value}, not live then")
        gradient = by_name.get(f"d{source.output}")
        if gradient is not None and not gradient.first <= step.index <= gradient.last:
            found.append(f"backward step {step.index} reads d{source.output}, not live")
    return found


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_every_example_plan_never_aliases_live_buffers(train):
    checked = 0
    for name, graph in example_graphs():
        plan = lower(graph, BATCH, train)
        assert violations(plan) == [], name
        checked += 1
    assert checked > 30


def test_planning_saves_memory_on_resnet18_at_batch_32():
    graph = check_text((EXAMPLES / "resnet18.cnn").read_text())
    for train in (True, False):
        plan = lower(graph, 32, train)
        assert plan.arena < 0.6 * plan.unplanned_bytes


# ---- the mutation checks: a wrong planner is caught ----------------------------------
def test_checker_catches_a_planner_that_ignores_lifetimes(monkeypatch):
    graph = check_text((EXAMPLES / "lecture.cnn").read_text())
    monkeypatch.setattr(plan_steps.Buffer, "overlaps", lambda self, other: False)
    wrong = violations(lower(graph, BATCH, train=True))
    assert any("live together and share memory" in v for v in wrong)


def test_checker_catches_a_planner_that_reuses_a_gap_too_small(monkeypatch):
    graph = check_text((EXAMPLES / "lecture.cnn").read_text())
    monkeypatch.setattr(plan_memory, "_best_gap", lambda busy, size: 0)
    assert any("share memory" in v for v in violations(lower(graph, BATCH, train=False)))


def test_checker_catches_a_buffer_freed_too_early(monkeypatch):
    """A liveness bug (the conv's saved input freed after the forward) is caught too."""
    graph = check_text("input 8x8x1\nConv(2, 3) -> ReLU -> AvgPool(2) -> FC(3)")
    plan = lower(graph, BATCH, train=True)
    early = [plan_steps.Buffer(b.name, b.kind, b.shape, b.itemsize, b.first,
                               b.first if b.name == "relu1:kept" else b.last)
             for b in plan.buffers]
    offsets = plan_memory.assign_offsets(early)
    broken = plan_steps.Plan(True, BATCH, plan.steps, tuple(early), offsets,
                             plan_memory.arena_bytes(early, offsets))
    assert violations(plan) == []
    assert any("reads relu1, not live" in v for v in violations(broken))


# ---- fusion ---------------------------------------------------------------------
def _steps(text: str, train: bool):
    return lower(check_text(text), BATCH, train).forward_steps


def test_conv_relu_pool_is_one_step_keeping_the_relu_output_only_for_an_avgpool():
    """A max pool takes the ReLU on its input (max commutes with ReLU) and keeps its own
    output for the mask; an average pool does not, so the ReLU's output is kept."""
    for pool, kept in (("MaxPool", ()), ("AvgPool", ("relu1",))):
        for train in (True, False):
            first, *_ = _steps(f"input 8x8x3\nConv(4, 3) -> ReLU -> {pool}(2) -> FC(2)",
                               train)
            assert isinstance(first, ConvStep)
            assert first.layers == ("conv1", "relu1", f"{pool.lower()}1")
            assert first.epilogue == ("bias", "relu", pool.lower())
            assert first.kept == (kept if train else ())
    plan = lower(check_text("input 8x8x3\nConv(4, 3) -> ReLU -> MaxPool(2) -> FC(2)"),
                 BATCH, True)
    pooled = plan.buffer("maxpool1")  # read by the step's backward (the ReLU mask)
    assert pooled.last == next(s.index for s in plan.steps
                               if isinstance(s, BackwardStep) and s.forward == 0)


def test_a_value_read_twice_is_not_fused_into_its_readers():
    steps = _steps("input 8x8x3\nConv(4, 3) -> ReLU -> { MaxPool(2) + AvgPool(2) }", False)
    assert [s.layers for s in steps] == [("conv1", "relu1"), ("maxpool1",),
                                         ("avgpool1",), ("add1",)]
    steps = _steps("input 8x8x3\nConv(4, 3) -> { ReLU + Identity }", False)
    assert steps[0].layers == ("conv1",)


def test_batchnorm_folds_into_the_conv_only_at_inference():
    text = "input 8x8x3\nConv(4, 3, bias=false) -> BatchNorm -> ReLU -> FC(2)"
    inference = _steps(text, train=False)
    assert inference[0].layers == ("conv1", "batchnorm1", "relu1")
    assert inference[0].epilogue == ("bias", "batchnorm", "relu")
    training = _steps(text, train=True)
    assert training[0].layers == ("conv1",) and training[0].epilogue == ()
    assert isinstance(training[1], NormStep)
    assert training[1].layers == ("batchnorm1", "relu1")


def test_add_then_relu_is_one_merge_step_and_fc_takes_its_activation():
    steps = _steps("input 4x4x2\n{ Identity + Conv(2, 3, pad=same) } -> ReLU -> FC(8) "
                   "-> Tanh -> FC(2)", False)
    merge = next(s for s in steps if isinstance(s, MergeStep))
    assert merge.layers == ("add1", "relu1") and merge.reduction == "sum"
    assert ("fc1", "tanh1") in [s.layers for s in steps]


def test_the_logits_are_never_fused_past():
    steps = _steps("input 4\nFC(3) -> ReLU -> Softmax", True)
    assert [s.layers for s in steps] == [("fc1", "relu1"), ("softmax1",)]


# ---- the one fusion that changes the arithmetic: BatchNorm folded ---------------------
def test_folded_batchnorm_equals_conv_then_batchnorm_at_inference():
    from cnndsl.kernels.reference.conv import conv_forward
    from cnndsl.model import Model

    graph = check_text("input 6x5x3\nConv(4, 3, stride=2, pad=1) -> BatchNorm(eps=0.001)")
    model = Model(graph, seed=1, dtype=np.float64, backend="reference")
    rng = np.random.default_rng(0)
    params, buffers = model.parameters(), model.buffers()
    params["batchnorm1.weight"][:] = rng.uniform(0.5, 2, 4)
    params["batchnorm1.bias"][:] = rng.normal(size=4)
    buffers["batchnorm1.running_mean"][:] = rng.normal(size=4)
    buffers["batchnorm1.running_var"][:] = rng.uniform(0.1, 3, 4)
    x = rng.normal(size=(3, 6, 5, 3))
    expected = model.forward(x, train=False)

    w, b = fold_batchnorm(params["conv1.weight"], params["conv1.bias"],
                          params["batchnorm1.weight"], params["batchnorm1.bias"],
                          buffers["batchnorm1.running_mean"],
                          buffers["batchnorm1.running_var"], 0.001)
    g = graph_layer(graph, "conv1").geometry  # N×D×H×W×C, weights F×C×KD×KH×KW
    folded = conv_forward(x[:, None], w[:, :, None], b, g["stride"], g["dilation"],
                          g["pad_before"], g["pad_after"], 1)[:, 0]
    np.testing.assert_allclose(folded, expected, rtol=1e-12, atol=1e-12)


def test_folded_batchnorm_into_fc_without_bias():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(5, 6)), rng.normal(size=(3, 6))
    gamma, beta, mean = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3)
    var = rng.uniform(0.2, 2, 3)
    fw, fb = fold_batchnorm(w, None, gamma, beta, mean, var, 1e-5)
    expected = (x @ w.T - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(x @ fw.T + fb, expected, rtol=1e-12, atol=1e-12)


# ---- cnndsl check --plan -----------------------------------------------------------
def test_check_plan_prints_steps_arena_and_peaks(tmp_path, capsys):
    net = tmp_path / "tiny.cnn"
    net.write_text("input 8x8x1\nConv(4, 3, pad=same) -> ReLU -> MaxPool(2) -> FC(3)\n")
    assert main(["check", str(net), "--plan", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "plan of a training step at batch 32: 2 forward steps, loss, 2 backward steps" \
        in out
    assert re.search(r"^ +1  conv +conv1\+relu1\+maxpool1  4x4x4 +[0-9,]+  maxpool1 argmax@",
                     out, re.MULTILINE)
    assert re.search(r"^ +2  dense +fc1 +3 ", out, re.MULTILINE)
    assert "fused groups, inference: 1, covering 3 of 4 layers" in out
    # inference: the input (8 KB) and the pool's output (8 KB) are live at step 1; the
    # FC's output (384 bytes) reuses the input's memory
    assert re.search(r"^  inference +16\.4 KB  \(16\.8 KB without reuse, 2% less\)$", out,
                     re.MULTILINE)
    assert re.search(r"^  training step +\S+ KB  \(", out, re.MULTILINE)


def test_check_json_plan_adds_a_plan_object(capsys):
    assert main(["check", "--json", "--plan", "--batch", "4",
                 str(EXAMPLES / "lecture.cnn")]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["memory"]["batch"] == 4 and report["plan"]["batch"] == 4
    training = report["plan"]["training"]
    assert training["steps"][0] == {
        "kind": "conv", "index": 0, "layers": ["conv1", "relu1"], "inputs": ["input"],
        "output": "relu1", "shape": [28, 28, 32], "kept": [], "epilogue": ["bias", "relu"]}
    assert training["planned_bytes"] <= training["unplanned_bytes"]
    assert {b["kind"] for b in training["buffers"]} == {
        "activation", "saved", "gradient", "workspace"}
