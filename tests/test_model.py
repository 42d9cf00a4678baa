"""The compiled model (docs/language.md): API, initialisation, and reverse-mode autodiff
checked by float64 central differences and against PyTorch on multi-branch networks."""

import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.model import Model
from cnndsl.ops import OPS, user_op_names

# every layer kind's own examples (Op.examples: input shape, chain), each followed by FC so
# every output matters; a kind's first example is named after it, the others get -2, -3...
LAYER_CASES = {
    (name if i == 0 else f"{name}-{i + 1}"): example
    for name in dict.fromkeys(OPS[key].name for key in user_op_names())
    for i, example in enumerate(OPS[name].examples)
}

BRANCHY = """
input 8x8x3
def res(c) = { Identity + Conv(c, 3, bias=false) -> BatchNorm -> ReLU -> Conv(c, 3) } -> ReLU
Conv(4, 3) -> res(4)
  -> { Conv(2, 1) | Conv(3, 3) -> LeakyReLU(0.2) | MaxPool(3, 1, pad=1) -> Conv(2, 1) }
  -> { Identity | BatchNorm -> Conv(3, 3, stride=1) }
  -> AvgPool(2) -> { Identity + DepthwiseConv(3) } -> FC(6) -> Tanh -> FC(4) -> Softmax
"""


def model_of(text, dtype=np.float64, seed=0, backend="numba"):
    return Model(cnndsl.check_text(text), seed=seed, dtype=dtype, backend=backend)


def test_every_layer_kind_has_examples():
    """The shared tests (gradchecks here, exports in test_export.py) reach a kind through
    its examples: a kind without any would go untested."""
    missing = [name for name in user_op_names() if not OPS[name].examples]
    assert missing == []
    assert len(LAYER_CASES) >= len({OPS[name].name for name in user_op_names()})


# ---- the API ----------------------------------------------------------------------------
def test_compile_and_load():
    text = (EXAMPLES / "lenet5.cnn").read_text()
    model = cnndsl.compile(text)
    assert model.input_shape == (32, 32, 1) and model.output_shape == (10,)
    assert model.num_params == 61_706
    loaded = cnndsl.load(str(EXAMPLES / "lecture.cnn"), k=3)
    assert sum(name.endswith(".weight") and name.startswith("conv")
               for name in loaded.parameters()) == 6


@pytest.mark.parametrize("name", ["resnet18.cnn", "googlenet.cnn", "densenet121.cnn",
                                  "mobilenet_v1.cnn", "m5_audio_1d.cnn", "voxnet_3d.cnn"])
def test_num_params_equals_check(name):
    graph = cnndsl.check_file(str(EXAMPLES / name))
    model = Model(graph)
    assert model.num_params == sum(n["params_count"] for n in graph.nodes.values())


def test_parameters_in_source_order_weight_before_bias_and_writable():
    model = model_of("input 6x6x2\n{ a: Conv(3, 3) | b: Conv(2, 1, bias=false) } -> "
                     "BatchNorm -> FC(4)", dtype=np.float32)
    names = list(model.parameters())
    assert names == ["a.weight", "a.bias", "b.weight", "batchnorm1.weight",
                     "batchnorm1.bias", "fc1.weight", "fc1.bias"]
    assert list(model.buffers()) == ["batchnorm1.running_mean", "batchnorm1.running_var"]
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
    before = model.forward(x)
    model.parameters()["fc1.bias"][:] += 1.0  # a writable view: the model changes
    assert np.allclose(model.forward(x), before + 1.0, atol=1e-6)


def test_initialisation_is_pytorch_default_and_seeded():
    model = model_of("input 16x16x8\nConv(32, 3) -> FC(100)", dtype=np.float32, seed=1)
    weight = model.parameters()["conv1.weight"]
    bound = 1 / np.sqrt(8 * 9)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.95 * bound
    assert abs(weight.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform's std
    fc = model.parameters()["fc1.weight"]
    assert np.abs(fc).max() <= 1 / np.sqrt(16 * 16 * 32)
    again = model_of("input 16x16x8\nConv(32, 3) -> FC(100)", dtype=np.float32, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(model.parameters().values(),
                                                     again.parameters().values()))
    other = model_of("input 16x16x8\nConv(32, 3) -> FC(100)", dtype=np.float32, seed=2)
    assert not np.array_equal(weight, other.parameters()["conv1.weight"])


def test_bad_input_shape_is_a_clear_error():
    model = model_of("input 6x6x2\nConv(3)", dtype=np.float32)
    with pytest.raises(ValueError, match=r"takes input of shape \(N, 6, 6, 2\)"):
        model.forward(np.zeros((1, 6, 6, 3), np.float32))


# ---- gradients by central differences ------------------------------------------------------
def numeric_gradcheck(model, x, train, coordinates=6, seed=0):
    """Compare backward() with central differences of L = sum(y * r), float64."""
    rng = np.random.default_rng(seed)
    r = None

    def loss():
        model.ctx.rng = np.random.default_rng(123)  # the same dropout mask every call
        y = model.forward(x, train=train)
        return float(np.sum(y * r))

    model.ctx.rng = np.random.default_rng(123)
    y = model.forward(x, train=train)
    r = rng.normal(size=y.shape)
    gx, grads = model.backward(r)
    eps = 1e-6
    arrays = {"input": (x, gx), **{n: (model.parameters()[n], grads[n]) for n in grads}}
    for name, (array, analytic) in arrays.items():
        assert analytic.shape == array.shape, name
        flat = array.reshape(-1)
        for index in rng.choice(flat.size, size=min(coordinates, flat.size), replace=False):
            saved = flat[index]
            flat[index] = saved + eps
            up = loss()
            flat[index] = saved - eps
            down = loss()
            flat[index] = saved
            numeric = (up - down) / (2 * eps)
            got = analytic.reshape(-1)[index]
            assert abs(got - numeric) <= 1e-5 + 1e-4 * abs(numeric), (name, index, got, numeric)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("op_name", sorted(LAYER_CASES))
def test_gradcheck_every_layer(op_name, backend):
    shape, layer = LAYER_CASES[op_name]
    model = model_of(f"input {shape}\n{layer} -> FC(3)", backend=backend)
    dims = [int(d) for d in shape.split("x")]
    x = np.random.default_rng(1).normal(size=(3, *dims))
    for train in (True, False):
        numeric_gradcheck(model, x, train)


def test_gradcheck_multi_branch_network():
    model = model_of(BRANCHY)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3))
    numeric_gradcheck(model, x, train=True, coordinates=4)
    numeric_gradcheck(model, x, train=False, coordinates=4)


@pytest.mark.parametrize("rank_input", ["20x3", "9x10x3", "6x7x8x2"])
def test_gradcheck_1d_2d_3d(rank_input):
    text = (f"input {rank_input}\nConv(4, 3, stride=2) -> BatchNorm -> ReLU -> "
            "{ Identity | MaxPool(3, 1, pad=1) } -> AvgPool(2, 1) -> Conv(2, 1, pad=valid)"
            " -> GlobalAvgPool -> FC(3)")
    model = model_of(text)
    dims = [int(d) for d in rank_input.split("x")]
    numeric_gradcheck(model, np.random.default_rng(3).normal(size=(2, *dims)), train=True)


def test_numba_equals_reference_backend():
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3))
    fast, slow = model_of(BRANCHY), model_of(BRANCHY, backend="reference")
    r = np.random.default_rng(5).normal(size=(2, 4))
    y_fast, y_slow = fast.forward(x, train=True), slow.forward(x, train=True)
    assert np.allclose(y_fast, y_slow, rtol=1e-10, atol=1e-12)
    gx_fast, g_fast = fast.backward(r)
    gx_slow, g_slow = slow.backward(r)
    assert np.allclose(gx_fast, gx_slow, rtol=1e-9, atol=1e-12)
    for name in g_fast:
        assert np.allclose(g_fast[name], g_slow[name], rtol=1e-9, atol=1e-12), name


FUSED = """
input 9x9x2
Conv(4, 3) -> ReLU -> { Conv(3, 3, stride=2) -> ReLU | MaxPool(3, 2, pad=1) -> Conv(3, 1) }
  -> Conv(5, 3) -> ReLU -> FC(3)
"""


def test_conv_relu_fusion_plan_and_gradients():
    model = model_of(FUSED)
    fused = [layer.name for layer in model.layers
             if layer.geometry is not None and layer.geometry.get("activation") == "relu"]
    assert len(fused) == 3  # every Conv -> ReLU pair; the 1x1 Conv has no ReLU after it
    x = np.random.default_rng(11).normal(size=(2, 9, 9, 2))
    numeric_gradcheck(model, x, train=True)
    numeric_gradcheck(model, x, train=False)
    slow = model_of(FUSED, backend="reference")
    assert np.allclose(model.forward(x), slow.forward(x), rtol=1e-10, atol=1e-12)
    r = np.random.default_rng(12).normal(size=(2, 3))
    for (gx, g), (gx_slow, g_slow) in [(model.backward(r), slow.backward(r))]:
        assert np.allclose(gx, gx_slow, rtol=1e-9, atol=1e-12)
        for name in g:
            assert np.allclose(g[name], g_slow[name], rtol=1e-9, atol=1e-12), name


def test_relu_with_fan_out_or_on_the_output_is_not_fused():
    model = model_of("input 6x6x2\nConv(3, 3) -> { ReLU | Identity } -> FC(2)")
    assert not any(layer.geometry is not None and "activation" in layer.geometry
                   for layer in model.layers)
    ends = model_of("input 6x6x2\nConv(3, 3) -> ReLU")
    x = np.random.default_rng(13).normal(size=(2, 6, 6, 2))
    assert np.array_equal(ends.forward(x), np.maximum(ends.forward(x), 0))
    numeric_gradcheck(ends, x, train=True)


def test_inference_keeps_no_backward_state_and_backward_still_works():
    model = model_of(FUSED)
    x = np.random.default_rng(14).normal(size=(2, 9, 9, 2))
    r = np.random.default_rng(15).normal(size=(2, 3))
    model.forward(x, train=True)
    gx_train, g_train = model.backward(r)
    y = model.forward(x, train=False)
    assert all(runner.saved is None for runner in model._runners)  # nothing kept for backward
    gx, g = model.backward(r)    # ... which re-runs the forward, saving
    assert np.array_equal(model.forward(x), y)
    assert np.allclose(gx, gx_train) and all(np.allclose(g[n], g_train[n]) for n in g)


def test_allocator_tuning_runs_once_and_respects_glibc_settings(monkeypatch):
    import cnndsl.model as model_module

    calls = []
    monkeypatch.setattr(model_module.ctypes, "CDLL", lambda name: calls.append(name))
    monkeypatch.setattr(model_module, "_allocator_tuned", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    model_module._keep_freed_memory()
    assert calls == []  # the user's own glibc setting wins
    monkeypatch.setattr(model_module, "_allocator_tuned", False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    model_module._keep_freed_memory()  # CDLL returns None here: no mallopt, no crash
    model_module._keep_freed_memory()
    assert len(calls) == (1 if model_module.sys.platform.startswith("linux") else 0)


# ---- against PyTorch ------------------------------------------------------------------------
def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


# Conv -> ReLU is fused in the run plan (the Conv computes the ReLU, the ReLU layer passes
# its input through): networks with that pattern in every place it can occur (1-D, 2-D,
# 3-D, residuals, branches, before the logits, at the output), next to patterns that are
# not fused (a Conv read twice, a ReLU after a DepthwiseConv, SeparableConv or ConvT)
FUSED_TORCH = {
    "fused_2d": """
input 9x9x3
Conv(4, 3) -> ReLU
  -> { Identity + Conv(4, 3) -> ReLU -> Conv(4, 3, bias=false) -> ReLU }
  -> { Conv(3, 3, stride=2) -> ReLU | MaxPool(3, 2, pad=1) -> Conv(2, 1) -> ReLU
     | Conv(2, 2, stride=2) -> Tanh }
  -> BatchNorm -> Conv(6, 3, dilation=2) -> ReLU -> Conv(6, 3, groups=3) -> ReLU
  -> Conv(5, 3) -> { ReLU | Identity } -> DepthwiseConv(3) -> ReLU -> SeparableConv(4, 3)
  -> ReLU -> ConvT(3, 3, stride=2) -> ReLU -> FC(4) -> Softmax
""",
    "fused_1d": """
input 20x3
Conv(4, 3, stride=2) -> ReLU -> { Identity + Conv(4, 3) -> ReLU }
  -> { Conv(2, 1) -> ReLU | DepthwiseConv(3) -> ReLU | SeparableConv(3, 3) -> ReLU }
  -> ConvT(3, 2, stride=2) -> ReLU -> Conv(3, 3, pad=valid) -> ReLU -> GlobalAvgPool -> FC(3)
""",
    "fused_3d": """
input 6x7x8x2
Conv(4, 3, stride=2) -> ReLU -> { Identity + Conv(4, 3) -> ReLU }
  -> { Conv(2, 1) -> ReLU | MaxPool(3, 1, pad=1) }
  -> ConvT(3, 2, stride=2) -> ReLU -> SeparableConv(3, 3) -> ReLU -> GlobalMaxPool -> FC(3)
""",
    "fused_logits": "input 6x6x2\nConv(4, 3) -> ReLU -> Conv(3, 1) -> ReLU -> Softmax",
    "fused_output": "input 6x6x2\nConv(4, 3, stride=2) -> ReLU",
    "fashion_small": (EXAMPLES / "fashion_small.cnn").read_text(),
}
# one-sided padding and true convolution (issue 14), in a residual and before a pool
PADDED_FLIPPED = """
input 9x8x3
Conv(4, 2, pad=((0, 1), (1, 0)), flip=true) -> ReLU
  -> { Identity + DepthwiseConv(3, pad=(1, (0, 2)), flip=true) -> Conv(4, 3, pad=same) }
  -> MaxPool(3, 2, pad=((1, 1), (0, 1))) -> LocalConv(3, 2, pad=((0, 1), (1, 0)))
  -> AvgPool(2, pad=((0, 1), (0, 0))) -> FC(5) -> Softmax
"""
TORCH_NETWORKS = {"branchy": BRANCHY,
                  "mnist_pytorch": (EXAMPLES / "mnist_pytorch.cnn").read_text(),
                  "padded_flipped": PADDED_FLIPPED,
                  **FUSED_TORCH}


@pytest.mark.parametrize("name", sorted(FUSED_TORCH))
def test_torch_networks_have_fused_activations(name):
    """Each FUSED_TORCH network has a Conv -> ReLU folded, so the comparisons below
    exercise the fusion (they would not, were the plan to change)."""
    model = model_of(FUSED_TORCH[name], dtype=np.float32)
    assert any(layer.fused_into for layer in model.layers)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("text", list(TORCH_NETWORKS.values()), ids=list(TORCH_NETWORKS))
def test_forward_and_gradients_match_pytorch(text, train):
    torch = pytest.importorskip("torch")
    from torch_reference import to_numpy_channels_last, torch_forward

    model = model_of(text, dtype=np.float32, seed=3)
    if not train:  # make the running statistics non-trivial first
        model.forward(np.random.default_rng(6).normal(size=(4, *model.input_shape)),
                      train=True)
    x = np.random.default_rng(7).normal(size=(4, *model.input_shape)).astype(np.float32)
    has_dropout = any(layer.op == "Dropout" for layer in model.layers)
    if has_dropout and train:
        pytest.skip("dropout masks differ between engines; compared in eval mode")
    y = model.forward(x, train=train)
    r = np.random.default_rng(8).normal(size=y.shape).astype(np.float32)
    gx, grads = model.backward(r)
    y_t, x_t, leaves = torch_forward(model, x, train=train)
    (y_t * torch.from_numpy(_to_torch_layout(r)).double()).sum().backward()
    assert relative_error(y, to_numpy_channels_last(y_t)) < 1e-4
    assert relative_error(gx, to_numpy_channels_last(x_t.grad)) < 1e-4
    for name, leaf in leaves.items():
        assert relative_error(grads[name], leaf.grad.numpy()) < 1e-4, name


def _to_torch_layout(r):
    return np.ascontiguousarray(np.moveaxis(r, -1, 1)) if r.ndim > 2 else r


@pytest.mark.parametrize("text", [(EXAMPLES / "lenet5.cnn").read_text(),
                                  FUSED_TORCH["fashion_small"], FUSED_TORCH["fused_2d"]],
                         ids=["lenet5", "fashion_small", "fused_2d"])
def test_loss_matches_pytorch_cross_entropy(text):
    torch = pytest.importorskip("torch")
    from torch_reference import torch_forward

    model = model_of(text, dtype=np.float32, seed=4)
    x = np.random.default_rng(9).normal(size=(5, *model.input_shape)).astype(np.float32)
    labels = np.array([0, 3, 9, 3, 1]) % model.output_shape[0]
    loss, probs, grads = model.loss_and_grads(x, labels)
    model_eval_logits, _, leaves = torch_forward(model, x, train=True)
    # torch_forward ends in Softmax: take the logits node's value instead
    logits = torch.log(model_eval_logits)
    torch_loss = torch.nn.functional.nll_loss(logits, torch.from_numpy(labels))
    torch_loss.backward()
    assert abs(loss - torch_loss.item()) < 1e-5
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    for name, leaf in leaves.items():
        assert relative_error(grads[name], leaf.grad.numpy()) < 1e-4, name


# ---- the lecture's worked example through the API ------------------------------------------
def test_lecture_5x5_image_with_3x3_kernel():
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    kernel = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32)
    for pad, expected_size in (("valid", 3), ("same", 5)):
        model = cnndsl.compile(f"input 5x5x1\nConv(1, 3x3, pad={pad})")
        model.parameters()["conv1.weight"][0, 0] = kernel
        model.parameters()["conv1.bias"][:] = 0
        y = model.forward(image)[0, :, :, 0]
        assert y.shape == (expected_size, expected_size)
        # cross-correlation: left column minus right column, 3 rows: -2 * 3 = -6 inside
        interior = y if pad == "valid" else y[1:-1, 1:-1]
        assert np.allclose(interior, -6.0)


@pytest.mark.nojit
def test_tiny_network_gradcheck_runs_without_jit_too():
    model = model_of("input 5x5x2\nConv(2, 3) -> BatchNorm -> ReLU -> MaxPool(2) -> FC(3) -> "
                     "Softmax")
    numeric_gradcheck(model, np.random.default_rng(10).normal(size=(2, 5, 5, 2)), train=True,
                      coordinates=3)
