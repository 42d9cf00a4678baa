"""Running a lowered plan (cnndsl.plan.run): every value between steps in one arena at the
plan's offsets, fused steps through the fused kernels. Float64 throughout, so a difference
is a bug and not rounding: fused and unfused plans must give the layer-by-layer model's
loss, probabilities and gradients; with every buffer poisoned (NaN bytes) after its last
step, they still must (a plan that let two live values share bytes, or that freed a value
a backward still reads, gives NaN or a wrong gradient instead)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import EXAMPLES, example_graphs

from cnndsl import check_text
from cnndsl.model import Model
from cnndsl.plan import lower
from cnndsl.plan.run import PlanRunner

BATCH = 2


EXAMPLE_NAMES = sorted(path.name for path in EXAMPLES.glob("*.cnn"))


def _batch(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, *model.input_shape))
    labels = rng.integers(0, int(np.prod(model.output_shape)), BATCH)
    return x, labels


def _run_plan(model, train: bool, fuse: bool, poison: bool, x, labels=None, plan=None):
    plan = plan or lower(model.graph, BATCH, train, fuse=fuse, itemsize=8)
    runner = PlanRunner(model.sandbox(), plan, poison=poison)
    return runner.loss_and_grads(x, labels) if train else runner.forward(x)


def _close(a, b, what):
    scale = max(1.0, float(np.max(np.abs(b)))) if np.size(b) else 1.0
    assert np.all(np.isfinite(a)), f"{what}: not finite"
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * scale, err_msg=what)


def _same_step(got, expected, name):
    (loss, probs, grads), (loss0, probs0, grads0) = got, expected
    _close(loss, loss0, f"{name}: loss")
    _close(probs, probs0, f"{name}: probabilities")
    assert list(grads) == list(grads0)
    for key in grads0:
        _close(grads[key], grads0[key], f"{name}: d{key}")


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_poisoned_fused_and_unfused_training_plans_give_the_models_gradients(name):
    text = (EXAMPLES / name).read_text()
    graph = check_text(text, {"classes": 10} if "classes" in text else None)
    model = Model(graph, seed=1, dtype=np.float64)
    x, labels = _batch(model)
    expected = model.sandbox().loss_and_grads(x, labels)
    fused = _run_plan(model, True, True, True, x, labels)
    unfused = _run_plan(model, True, False, True, x, labels)
    _same_step(fused, expected, f"{name} fused")
    _same_step(unfused, expected, f"{name} unfused")
    _same_step(fused, unfused, f"{name} fused vs unfused")


def test_every_op_example_trains_and_infers_alike_fused_unfused_and_poisoned():
    """Each op kind's examples (73 small graphs): training step and inference pass."""
    checked = 0
    for name, graph in example_graphs():
        if name.endswith(".cnn"):
            continue  # the example networks have their own test above
        model = Model(graph, seed=2, dtype=np.float64)
        x, labels = _batch(model, seed=3)
        expected = model.sandbox().loss_and_grads(x, labels)
        for fuse in (True, False):
            _same_step(_run_plan(model, True, fuse, True, x, labels), expected,
                       f"{name} fuse={fuse}")
            _close(_run_plan(model, False, fuse, True, x), model.forward(x),
                   f"{name} inference fuse={fuse}")
        checked += 1
    assert checked > 30


@pytest.mark.parametrize("name", ["resnet18.cnn", "mobilenet_v1.cnn", "googlenet.cnn",
                                  "fashion_small.cnn", "lecture.cnn", "voxnet_3d.cnn"])
def test_inference_plans_with_batchnorm_folded_give_the_models_output(name):
    """At inference a BatchNorm after a conv is folded into its weights; with trained-like
    running statistics (not the initial 0/1) that changes the arithmetic, not the result."""
    text = (EXAMPLES / name).read_text()
    model = Model(check_text(text, {"classes": 10} if "classes" in text else None),
                  seed=1, dtype=np.float64)
    rng = np.random.default_rng(4)
    for key, array in model.buffers().items():
        array[...] = rng.uniform(0.5, 1.5, array.shape) if key.endswith("running_var") \
            else rng.normal(0, 0.1, array.shape)
    x, _ = _batch(model)
    expected = model.forward(x)
    for fuse in (True, False):
        _close(_run_plan(model, False, fuse, True, x), expected, f"{name} fuse={fuse}")


def test_fusion_runs_relu_and_pool_in_the_conv_and_folds_batchnorm():
    text = ("input 12x12x3\nConv(8, 3, bias=false) -> BatchNorm -> ReLU -> MaxPool(2) -> "
            "Conv(8, 3) -> ReLU -> MaxPool(2) -> FC(16) -> ReLU -> FC(10)")
    model = Model(check_text(text), dtype=np.float64)
    inference = PlanRunner(model, lower(model.graph, BATCH, False, itemsize=8))
    def members(runner):
        return [[(layer.name, dict(layer.geometry or {}).get("activation"),
                  dict(layer.geometry or {}).get("input_activation"),
                  dict(layer.geometry or {}).get("pool")) for layer, _ in group]
                for group in runner._members.values()]

    pool = ((1, 2, 2), (1, 2, 2), (0, 0, 0), (0, 0, 0))
    # BN folded, the ReLU and the max pool computed by the conv
    assert members(inference) == [
        [("conv1", "relu", None, pool)],
        [("conv2", "relu", None, pool)],
        [("fc1", "relu", None, None)],                          # FC + ReLU
        [("fc2", None, None, None)]]                            # the logits: alone
    # training: the ReLU in the pool (which keeps its argmax for the backward)
    assert members(PlanRunner(model, lower(model.graph, BATCH, True, itemsize=8)))[:2] == [
        [("conv1", None, None, None)], [("batchnorm1", None, None, None),
                                        ("maxpool1", None, "relu", None)]]
    folded = inference._members[0][0][0]
    assert folded.params.bias and not np.array_equal(
        folded.weights["weight"], model.parameters()["conv1.weight"])  # a folded copy
    training = lower(model.graph, BATCH, True, itemsize=8)
    # in training the ReLU before a max pool keeps no mask: the pool keeps its output
    assert not any(b.name.endswith(":kept") for b in training.buffers
                   if b.name.startswith("relu2"))


# ---- the poison is what catches a bad plan ---------------------------------------
def _mutated(plan, **changes):
    return dataclasses.replace(plan, **changes)


def test_poison_catches_a_plan_whose_live_buffers_share_memory():
    """Every buffer at offset 0 (as if liveness were ignored): unpoisoned the arena's
    overlapping writes already corrupt the result; poisoned it is NaN."""
    model = Model(check_text((EXAMPLES / "lecture.cnn").read_text()), dtype=np.float64)
    x, labels = _batch(model)
    expected = model.sandbox().loss_and_grads(x, labels)
    plan = lower(model.graph, BATCH, True, itemsize=8)
    largest = max(b.nbytes for b in plan.buffers)
    bad = _mutated(plan, offsets={b.name: 0 for b in plan.buffers}, arena=largest)
    with pytest.raises(AssertionError):
        _same_step(_run_plan(model, True, True, True, x, labels, plan=bad), expected, "bad")


def test_poison_catches_a_value_freed_before_the_backward_that_reads_it():
    """A conv's input freed right after the conv runs (its backward still reads it): the
    bytes are still intact without poison, so only the poisoned run shows the error."""
    model = Model(check_text((EXAMPLES / "lecture.cnn").read_text()), dtype=np.float64)
    x, labels = _batch(model)
    expected = model.sandbox().loss_and_grads(x, labels)
    plan = lower(model.graph, BATCH, True, itemsize=8)
    conv2 = next(s for s in plan.forward_steps if s.layers[0] == "conv2")
    victim = next(b for b in plan.buffers if b.name == conv2.inputs[0])
    early = dataclasses.replace(victim, last=conv2.index)
    bad = _mutated(plan, buffers=tuple(early if b is victim else b for b in plan.buffers))
    _same_step(_run_plan(model, True, True, False, x, labels, plan=bad), expected,
               "unpoisoned")  # nothing reused those bytes yet: it looks right
    with pytest.raises(AssertionError):
        _same_step(_run_plan(model, True, True, True, x, labels, plan=bad), expected,
                   "poisoned")


# ---- the arena ------------------------------------------------------------------
def test_the_arena_is_allocated_once_and_reused_across_steps():
    model = Model(check_text((EXAMPLES / "fashion_small.cnn").read_text()), dtype=np.float64)
    plan = lower(model.graph, BATCH, True, itemsize=8)
    runner = PlanRunner(model.sandbox(), plan)
    arena = runner._arena
    assert arena.nbytes == plan.arena and arena.ctypes.data % 64 == 0
    x, labels = _batch(model)
    first = runner.loss_and_grads(x, labels)
    second = runner.loss_and_grads(x, labels)
    assert runner._arena is arena
    _same_step(second, first, "second step")
    with pytest.raises(ValueError, match="batches of 2"):
        runner.loss_and_grads(x[:1], labels[:1])
    with pytest.raises(ValueError, match="float64"):
        PlanRunner(model, lower(model.graph, BATCH, True))  # float32 sizes, float64 model


# ---- the fused max pool kernel, Numba against its NumPy twin ---------------------------
@pytest.mark.parametrize("window", [((2, 2), (2, 2), (0, 0), (0, 0)),
                                   ((3, 3), (2, 2), (1, 1), (1, 1)),
                                   ((3, 2), (1, 2), (0, 1), (2, 0))])
def test_maxpool_with_relu_on_its_input_equals_relu_then_maxpool(window):
    from cnndsl.kernels import pool
    from cnndsl.kernels.reference import pool as ref

    kernel, stride, before, after = ((1, *t) for t in window)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 1, 7, 6, 5))
    x[0, 0, :3, :3, 0] = -1.0  # a window of negatives only: its gradient must be zero
    dy_shape = pool.maxpool_forward(x, kernel, stride, before, after)[0].shape
    dy = rng.standard_normal(dy_shape)
    relu_x = np.maximum(x, 0)
    y0, am0 = ref.maxpool_forward(relu_x, kernel, stride, before, after)
    dx0 = ref.maxpool_backward(dy, am0, x.shape) * (x > 0)
    for module in (pool, ref):
        y, am = module.maxpool_forward(x, kernel, stride, before, after, relu=True)
        np.testing.assert_array_equal(y, y0)
        dx = module.maxpool_backward(dy, am, x.shape, y=y)
        np.testing.assert_allclose(dx, dx0, rtol=0, atol=1e-15)
