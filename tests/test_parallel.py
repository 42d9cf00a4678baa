"""Data-parallel steps (cnndsl.parallel): a batch cut into one shard per thread gives the same
loss, probabilities, outputs and gradients as the whole batch in one piece, BatchNorm and
Dropout included (whole-batch statistics and masks shared across the shards)."""

import threading

import numpy as np
import pytest

import cnndsl
import cnndsl.model
from cnndsl import parallel
from cnndsl.model import Model

# branches (residual sum, concat), pooling, every activation kind that fuses or not
NO_BATCH_COUPLING = """
input 10x10x3
Conv(6, 3) -> ReLU
  -> { Identity + Conv(6, 3) -> ReLU -> Conv(6, 3) } -> ReLU
  -> { Conv(2, 1) | Conv(3, 3) -> LeakyReLU(0.2) | MaxPool(3, 1, pad=1) -> Conv(2, 1) }
  -> MaxPool(2) -> { Identity + DepthwiseConv(3) } -> AvgPool(2, 1)
  -> FC(12) -> Tanh -> FC(5) -> Softmax
"""
WITH_BATCHNORM = "input 8x8x2\nConv(4, 3) -> BatchNorm -> ReLU -> MaxPool(2) -> FC(3) -> Softmax"
WITH_DROPOUT = "input 8x8x2\nConv(4, 3) -> ReLU -> Dropout(0.3) -> FC(3) -> Softmax"
WITH_BOTH_FLAT = ("input 8x8x2\nConv(4, 3) -> BatchNorm -> ReLU -> Dropout(0.2) -> FC(6) "
                  "-> BatchNorm -> Dropout(0.5) -> FC(3) -> Softmax")


@pytest.fixture
def shards(monkeypatch):
    """Pretend the machine has `count` threads (more threads than cores is still correct),
    and that the small test networks are large enough to be cut."""
    def use(count):
        monkeypatch.setattr(parallel, "thread_count", lambda: count)
        monkeypatch.setattr(cnndsl.model, "SMALL_NET_MACS", 0)
    return use


def pair(text, dtype=np.float64):
    """Two identical models: one that may cut batches, one that never does."""
    cut = Model(cnndsl.check_text(text), seed=1, dtype=dtype)
    whole = Model(cnndsl.check_text(text), seed=1, dtype=dtype)
    whole.data_parallel = False
    return cut, whole


def data(model, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *model.input_shape))
    return x, rng.integers(0, model.output_shape[-1], size=n)


def test_shard_bounds_cover_the_batch_in_order():
    assert parallel.shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert parallel.shard_bounds(64, 2) == [(0, 32), (32, 64)]
    assert parallel.shard_bounds(5, 1) == [(0, 5)]


def test_small_batches_are_not_cut(shards):
    shards(4)
    assert parallel.shard_count(7) == 1  # below two shards of MIN_SHARD
    assert parallel.shard_count(2 * parallel.MIN_SHARD) == 2
    assert parallel.shard_count(1000) == 4


@pytest.mark.parametrize("count,n", [(2, 64), (3, 37)])
def test_loss_and_grads_equal_the_whole_batch(shards, count, n):
    shards(count)
    cut, whole = pair(NO_BATCH_COUPLING)
    x, labels = data(cut, n)
    loss, probs, grads = cut.loss_and_grads(x, labels)
    assert len(cut._last_shards) == count  # really cut
    loss0, probs0, grads0 = whole.loss_and_grads(x, labels)
    assert len(whole._last_shards) == 1
    assert loss == pytest.approx(loss0, rel=1e-12)
    np.testing.assert_allclose(probs, probs0, rtol=1e-12, atol=1e-15)
    assert list(grads) == list(grads0) == list(cut.parameters())
    for name in grads:
        np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_forward_backward_equal_the_whole_batch(shards):
    shards(2)
    cut, whole = pair(NO_BATCH_COUPLING)
    x, _ = data(cut, 40)
    gy = np.random.default_rng(5).normal(size=(40, *cut.output_shape))
    for train in (True, False):  # after forward(train=False) backward runs it again, saving
        y, y0 = cut.forward(x, train=train), whole.forward(x, train=train)
        np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-15)
        (dx, grads), (dx0, grads0) = cut.backward(gy), whole.backward(gy)
        assert dx.shape == x.shape
        np.testing.assert_allclose(dx, dx0, rtol=1e-10, atol=1e-13)
        for name in grads:
            np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-10, atol=1e-13)


def test_float32_training_steps_track_the_whole_batch(shards):
    """Three SGD steps in float32 (the training dtype): cutting changes only rounding."""
    from cnndsl.optim import SGD

    shards(2)
    cut, whole = pair(NO_BATCH_COUPLING, dtype=np.float32)
    x, labels = data(cut, 48)
    for model in (cut, whole):
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            optimizer.step(model.loss_and_grads(x, labels)[2])
    for name, value in cut.parameters().items():
        np.testing.assert_allclose(value, whole.parameters()[name], rtol=1e-4, atol=1e-5)


def test_cut_steps_are_reproducible(shards):
    shards(2)
    x, labels = data(pair(NO_BATCH_COUPLING)[0], 32)
    results = []
    for _ in range(2):
        model = pair(NO_BATCH_COUPLING, dtype=np.float32)[0]
        results.append(model.loss_and_grads(x, labels))
    assert results[0][0] == results[1][0]
    for name in results[0][2]:
        assert np.array_equal(results[0][2][name], results[1][2][name])


@pytest.mark.parametrize("text", [WITH_BATCHNORM, WITH_DROPOUT, WITH_BOTH_FLAT])
@pytest.mark.parametrize("count,n", [(2, 32), (3, 29)])
def test_batchnorm_and_dropout_see_the_whole_batch_when_cut(shards, text, count, n):
    """BatchNorm's statistics are the whole batch's (sums over the shards) and Dropout's
    masks the whole batch's draws: two training steps cut equal two whole ones, and the
    running statistics and the generator end in the same state."""
    shards(count)
    cut, whole = pair(text)
    x, labels = data(cut, n)
    cut.ctx.rng = np.random.default_rng(3)
    whole.ctx.rng = np.random.default_rng(3)
    for _ in range(2):
        loss, probs, grads = cut.loss_and_grads(x, labels)
        assert len(cut._last_shards) == count
        loss0, probs0, grads0 = whole.loss_and_grads(x, labels)
        assert loss == pytest.approx(loss0, rel=1e-12)
        np.testing.assert_allclose(probs, probs0, rtol=1e-11, atol=1e-14)
        for name in grads:
            np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-9, atol=1e-12,
                                       err_msg=name)
    for name, value in cut.buffers().items():
        np.testing.assert_allclose(value, whole.buffers()[name], rtol=1e-12, err_msg=name)
    assert cut.ctx.rng.random() == whole.ctx.rng.random()  # the same draws were taken
    gy = np.random.default_rng(4).normal(size=(n, *cut.output_shape))
    cut.ctx.rng = np.random.default_rng(5)
    whole.ctx.rng = np.random.default_rng(5)
    np.testing.assert_allclose(cut.forward(x, train=True), whole.forward(x, train=True),
                               rtol=1e-11, atol=1e-14)
    (dx, _), (dx0, _) = cut.backward(gy), whole.backward(gy)
    np.testing.assert_allclose(dx, dx0, rtol=1e-9, atol=1e-12)


def fail_in_workers(monkeypatch, model):
    """Make every shard that runs on a worker thread raise FloatingPointError."""
    run = type(model._runners[0]).run
    main = threading.get_ident()

    def failing(self, *args, **kwargs):
        if threading.get_ident() != main:
            raise FloatingPointError("in the worker")
        return run(self, *args, **kwargs)

    monkeypatch.setattr(type(model._runners[0]), "run", failing)


def test_a_failing_shard_does_not_leave_the_others_waiting(shards, monkeypatch):
    """A worker shard fails before BatchNorm; the main shard, waiting there for its sums,
    is released and the worker's error reaches the caller (no deadlock)."""
    shards(2)
    model, _ = pair(WITH_BATCHNORM)
    x, labels = data(model, 32)
    fail_in_workers(monkeypatch, model)
    outcome = []

    def attempt():
        try:
            model.loss_and_grads(x, labels)
        except FloatingPointError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and len(outcome) == 1


def test_shards_run_on_different_threads(shards, monkeypatch):
    shards(2)
    model, _ = pair(NO_BATCH_COUPLING)
    x, labels = data(model, 32)
    seen = []
    run = type(model._runners[0]).run

    def spy(self, *args, **kwargs):
        seen.append(threading.get_ident())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(type(model._runners[0]), "run", spy)
    model.loss_and_grads(x, labels)
    assert len(set(seen)) == 2 and threading.get_ident() in seen  # this thread and a worker


def test_an_error_in_a_worker_shard_reaches_the_caller(shards, monkeypatch):
    shards(2)
    model, _ = pair(NO_BATCH_COUPLING)
    x, labels = data(model, 32)
    fail_in_workers(monkeypatch, model)
    with pytest.raises(FloatingPointError, match="in the worker"):
        model.loss_and_grads(x, labels)
    monkeypatch.undo()
    shards(2)
    # and the model still works afterwards, with the numba thread count restored
    import numba

    before = numba.get_num_threads()
    model.loss_and_grads(x, labels)
    assert numba.get_num_threads() == before


def test_backward_checks_the_batch_size(shards):
    shards(2)
    model, _ = pair(NO_BATCH_COUPLING)
    x, _ = data(model, 32)
    model.forward(x, train=True)
    with pytest.raises(ValueError, match="rows"):
        model.backward(np.ones((31, *model.output_shape)))


def test_small_networks_run_whole_with_one_blas_thread(monkeypatch):
    """Below SMALL_NET_MACS a batch is not cut, and NumPy's BLAS runs single-threaded for the
    step (the convs are parallel kernels themselves), then gets its threads back."""
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(parallel, "thread_count", lambda: 2)
    model, _ = pair(NO_BATCH_COUPLING)
    assert model._small
    x, labels = data(model, 64)
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    during = []
    run = type(model._runners[0]).run

    def spy(self, *args, **kwargs):
        during.extend(lib["num_threads"] for lib in threadpool_info()
                      if lib["user_api"] == "blas")
        return run(self, *args, **kwargs)

    monkeypatch.setattr(type(model._runners[0]), "run", spy)
    model.loss_and_grads(x, labels)
    assert len(model._last_shards) == 1
    assert during and set(during) == {1}
    assert [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas"][:len(before)] == before


def test_no_cut_when_the_threading_layer_is_not_threadsafe(monkeypatch):
    import numba

    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert parallel.thread_count() == 1
    monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
    assert parallel.thread_count() == numba.get_num_threads()

    calls = []

    def not_yet():  # as numba before its threading layer started: it starts, then asked again
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Threading layer is not initialized.")
        return "omp"

    monkeypatch.setattr(numba, "threading_layer", not_yet)
    assert parallel.thread_count() == numba.get_num_threads() and len(calls) == 2
