"""cnndsl.warmup: which kernels a model needs, found without running them, and compiled up
front with progress; the serial/parallel kernel variants of cnndsl.kernels.jit."""

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT

import cnndsl
from cnndsl.warmup import CACHED, COMPILED, MISSING, needed, prepare

# cut into shards (over cnndsl.parallel.SMALL_NET_MACS): its kernels run serial
CUT_NET = """input 28x28x1
Conv(32, 3x3) -> BatchNorm -> ReLU -> MaxPool(2) -> Conv(64, 3x3) -> ReLU -> MaxPool(2)
  -> Dropout(0.25) -> FC(128) -> ReLU -> FC(10) -> Softmax"""
# small: whole batches, parallel kernels
SMALL_NET = "input 12x12x1\nConv(4, 3) -> Tanh -> AvgPool(2) -> FC(10)"

_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cnndsl
    from cnndsl.warmup import needed, prepare
    from numba.core import event

    processes = int(sys.argv[1])
    model = cnndsl.compile("input 4\\nFC(3) -> ReLU -> FC(2)")
    before = [use.state for use in needed(model, 16)]
    calls, again = [], []
    first = prepare(model, 16, report=lambda *a: calls.append(a), processes=processes)
    second = prepare(model, 16, report=lambda *a: again.append(a), processes=processes)

    compiled = []  # by a real step and inference pass after prepare: nothing
    class Compiles(event.Listener):
        def on_start(self, e): pass
        def on_end(self, e): compiled.append(e.data["dispatcher"].py_func.__qualname__)
    event.register("numba:compile", Compiles())
    model.loss_and_grads(np.ones((16, 4), np.float32), np.arange(16) % 2)
    model.forward(np.ones((3, 4), np.float32))
    print(json.dumps(dict(before=before, calls=calls, first=first, second=second,
                          again=again, compiled=compiled)))
""")


def _probe(cache_dir, processes: int) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(processes)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("processes", [1, 2])
def test_prepare_reports_progress_on_an_empty_cache_then_nothing(tmp_path, processes):
    cold = _probe(tmp_path, processes)  # a fresh process on an empty Numba cache
    total = len(cold["before"])
    assert total >= 3 and set(cold["before"]) == {MISSING}
    assert [c[0] for c in cold["calls"]] == list(range(total + 1))  # 0, 1, ..., total
    assert {c[1] for c in cold["calls"]} == {total}
    assert cold["calls"][0][2] is None
    assert sorted(c[2] for c in cold["calls"][1:]) == sorted(cold["first"])
    assert all(name.count(".") == 1 for name in cold["first"])  # module.function
    assert cold["second"] == [] and cold["again"] == []
    assert cold["compiled"] == []  # prepare compiled everything the step needed

    warm = _probe(tmp_path, processes)  # the next process finds them on disk: nothing to do
    assert warm["before"] == [CACHED] * total
    assert warm["calls"] == [] and warm["first"] == [] and warm["compiled"] == []


@pytest.mark.parametrize("text", [CUT_NET, SMALL_NET])
def test_after_prepare_training_and_inference_compile_nothing(text):
    from numba.core import event

    model = cnndsl.compile(text)
    prepare(model, 64)
    assert {use.state for use in needed(model, 64)} == {COMPILED}
    compiled = []

    class Compiles(event.Listener):
        def on_start(self, e):
            pass

        def on_end(self, e):
            compiled.append(e.data["dispatcher"].py_func.__qualname__)

    listener = Compiles()
    event.register("numba:compile", listener)
    try:
        rng = np.random.default_rng(0)
        for n in (64, 37, 5, 1):  # whole and partial batches, ones too small to cut
            x = rng.random((n, *model.input_shape), dtype=np.float32)
            model.loss_and_grads(x, rng.integers(0, 10, n))
            model.forward(x)
    finally:
        event.unregister("numba:compile", listener)
    assert compiled == []


def test_needed_runs_no_kernel_and_leaves_the_model_as_it_was():
    from cnndsl.parallel import thread_count

    model = cnndsl.compile(CUT_NET)
    params = {k: v.copy() for k, v in model.parameters().items()}
    buffers = {k: v.copy() for k, v in model.buffers().items()}
    rng_state = model.ctx.rng.bit_generator.state
    uses = needed(model, 64)
    names = {use.name for use in uses}
    assert {"conv._conv_blocks_forward", "conv._conv_blocks_backward", "norm._bn_sums",
            "pool._maxpool_fwd", "loss._softmax_xent", "norm._bn_eval_fwd"} <= names
    assert len({(use.name, use.argtypes) for use in uses}) == len(uses)  # each once
    if thread_count() > 1:  # a model that cuts its batches runs the serial variants only
        assert all(use.serial for use in uses)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, params[name])
    for name, value in model.buffers().items():
        np.testing.assert_array_equal(value, buffers[name])
    assert model.ctx.rng.bit_generator.state == rng_state
    # ...and the model still trains as one that was never traced
    x = np.random.default_rng(1).random((16, 28, 28, 1), dtype=np.float32)
    fresh = cnndsl.compile(CUT_NET)
    loss, _, grads = model.loss_and_grads(x, np.arange(16) % 10)
    fresh_loss, _, fresh_grads = fresh.loss_and_grads(x, np.arange(16) % 10)
    assert loss == fresh_loss
    for name in grads:
        np.testing.assert_array_equal(grads[name], fresh_grads[name])


def test_tracing_reaches_a_steps_shards_but_no_other_thread():
    from concurrent.futures import ThreadPoolExecutor

    from cnndsl.kernels.elementwise import relu_forward
    from cnndsl.kernels.jit import tracing

    x = np.array([-1.0, 2.0], np.float32)
    recorded = []
    with tracing(lambda *call: recorded.append(call)), ThreadPoolExecutor(1) as pool:
        relu_forward(x)  # recorded, not run
        other = pool.submit(relu_forward, x).result()  # another thread: runs
    assert len(recorded) == 1 and recorded[0][0].name == "elementwise._relu_fwd"
    np.testing.assert_array_equal(other, [0, 2])
    np.testing.assert_array_equal(relu_forward(x), [0, 2])  # and after: runs


def test_small_networks_run_the_parallel_variants():
    from cnndsl.parallel import thread_count

    if thread_count() == 1:
        pytest.skip("one Numba thread: every kernel runs serial")
    uses = needed(cnndsl.compile(SMALL_NET), 64)
    assert uses and not any(use.serial for use in uses)
    model = cnndsl.compile(CUT_NET)
    model.data_parallel = False  # whole batches on every thread: parallel too
    assert not any(use.serial for use in needed(model, 64))


def test_work_is_split_with_each_dispatchers_signatures_together():
    from cnndsl.warmup import _split

    model = cnndsl.compile(CUT_NET)
    uses = needed(model, 64)
    shares = _split(uses, 2)
    assert len(shares) == 2 and sorted(id(u) for s in shares for u in s) == sorted(map(id, uses))
    for use in uses:  # both signatures of a kernel (float32 and float64, say): one share
        assert sum(any(u.dispatcher is use.dispatcher for u in share) for share in shares) == 1
    # the two costliest kernels (the direct conv's, here) go to different processes
    costs = {u.name: len(u.dispatcher.py_func.__code__.co_code) for u in uses}
    big = set(sorted(costs, key=costs.get)[-2:])
    assert all(name.startswith(("conv._direct", "conv._narrow")) for name in big), big
    assert all({u.name for u in share} & big for share in shares)  # one big one each
    (one,) = _split(uses, 1)
    assert sorted(map(id, one)) == sorted(map(id, uses)) and len(_split(uses[:1], 4)) == 1


def test_nothing_to_prepare_for_the_numpy_backend():
    from cnndsl.model import Model

    model = Model(cnndsl.check_text(SMALL_NET), backend="reference")
    assert needed(model, 8) == [] and prepare(model, 8, report=pytest.fail) == []


def test_kernels_write_their_results_and_return_nothing():
    """What lets warmup trace a step without running its kernels (cnndsl.kernels.jit)."""
    # every kernel module, so that KERNELS lists them all
    import cnndsl.kernels.conv
    import cnndsl.kernels.elementwise
    import cnndsl.kernels.loss
    import cnndsl.kernels.norm
    import cnndsl.kernels.pool  # noqa: F401
    from cnndsl.kernels.jit import KERNELS

    assert len(KERNELS) >= 30
    for kernel in KERNELS:
        tree = ast.parse(textwrap.dedent(inspect.getsource(kernel.py_func)))
        returns = [node for node in ast.walk(tree)
                   if isinstance(node, ast.Return) and node.value is not None]
        assert not returns, f"{kernel.name} returns a value"
