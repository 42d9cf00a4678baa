"""LayerNorm(eps=1e-5, over=channels|all) (cnndsl/ops/localnorm.py): over the channels at
each position (bare; PyTorch's nn.LayerNorm(C) on a channels-last tensor) or over every
non-batch axis (PyTorch's nn.LayerNorm([C, H, W]) on a channels-first map, weight and bias
(C, H, W)). Checked against PyTorch (F.layer_norm: forward, input, weight and bias
gradients), by float64 central differences, through the ONNX export (LayerNormalization at
opset 17, the formula before) and the PyTorch export (state_dicts both ways), in
`cnndsl check`'s table and in a rendered diagram."""

import shutil

import numpy as np
import pytest
from gradcheck import assert_model_gradients, numgrad
from test_export import inputs, run_onnx, run_pytorch

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx

SHAPES = {"flat": (6,), "1d": (5, 6), "2d": (4, 3, 7), "3d": (3, 2, 4, 6)}
OVER = ("channels", "all")


def layer_norm(over, x, w, eps=1e-5):
    """LayerNorm's forward on x (N, *spatial, C) with weights w, and its backward of dy
    ((dx, {weight, bias gradients}))."""
    op = OPS["LayerNorm"]
    p = op.Params(eps=eps, over=over)
    ctx = Ctx()
    y, saved = op.forward(p, None, w, [x], ctx)

    def backward(dy):
        (dx,), grads = op.backward(p, None, w, saved, dy, ctx)
        return dx, grads

    return y, backward


def random_weights(over, in_shape, rng):
    shapes = OPS["LayerNorm"].param_shapes(OPS["LayerNorm"].Params(over=over), in_shape)
    return {name: rng.normal(size=shape) for name, shape in shapes.items()}


def torch_layer_norm(over, x, w, eps=1e-5):
    """PyTorch: F.layer_norm over C of the channels-last tensor (over=channels), or over
    (C, *spatial) of the channels-first one (over=all). Returns (input leaf, weight leaves,
    output channels-last)."""
    torch = pytest.importorskip("torch")
    leaves = {name: torch.from_numpy(a).requires_grad_(True) for name, a in w.items()}
    shape = tuple(w["weight"].shape)
    if over == "channels":
        t = torch.from_numpy(x).requires_grad_(True)
        y = torch.nn.functional.layer_norm(t, shape, leaves["weight"], leaves["bias"], eps)
        return t, leaves, y
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    y = torch.nn.functional.layer_norm(t, shape, leaves["weight"], leaves["bias"], eps)
    return t, leaves, y.movedim(1, -1)


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("over", OVER)
def test_forward_and_every_gradient_match_pytorch(rank, over):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(SHAPES[rank]))
    x = rng.normal(1.0, 3.0, size=(2, *SHAPES[rank]))
    w = random_weights(over, SHAPES[rank], rng)
    y, backward = layer_norm(over, x, w, eps=1e-3)
    t, leaves, expected = torch_layer_norm(over, x, w, eps=1e-3)
    np.testing.assert_allclose(y, expected.detach().numpy(), atol=1e-12)
    dy = rng.normal(size=y.shape)
    expected.backward(torch.from_numpy(dy))
    dx, grads = backward(dy)
    x_grad = t.grad.numpy() if over == "channels" else t.grad.movedim(1, -1).numpy()
    np.testing.assert_allclose(dx, x_grad, atol=1e-12)
    assert set(grads) == {"weight", "bias"}
    for name, leaf in leaves.items():
        assert grads[name].shape == w[name].shape
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), atol=1e-12, err_msg=name)


def test_parameter_layouts_are_pytorchs():
    op = OPS["LayerNorm"]
    assert op.param_shapes(op.Params(), (4, 3, 7)) == {"weight": (7,), "bias": (7,)}
    assert op.param_shapes(op.Params(over="all"), (4, 3, 7)) == {"weight": (7, 4, 3),
                                                                  "bias": (7, 4, 3)}
    assert op.param_shapes(op.Params(over="all"), (6,)) == {"weight": (6,), "bias": (6,)}
    init = op.init(op.Params(over="all"), (4, 3, 7), np.random.default_rng(0))
    assert init["weight"].shape == (7, 4, 3) and (init["weight"] == 1).all()
    assert init["bias"].dtype == np.float32 and (init["bias"] == 0).all()


def test_the_two_readings_differ_on_a_map_and_agree_on_a_flat_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 3, 4))
    ones = {"weight": np.ones(4), "bias": np.zeros(4)}
    per_position, _ = layer_norm("channels", x, ones)
    np.testing.assert_allclose(per_position.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(per_position.var(axis=-1), 1, rtol=1e-3)  # eps
    whole, _ = layer_norm("all", x, {"weight": np.ones((4, 3, 3)), "bias": np.zeros((4, 3, 3))})
    np.testing.assert_allclose(whole.mean(axis=(1, 2, 3)), 0, atol=1e-12)
    assert not np.allclose(whole.mean(axis=-1), 0)
    flat = rng.normal(size=(3, 6))
    ones = {"weight": np.ones(6), "bias": np.zeros(6)}
    np.testing.assert_array_equal(layer_norm("channels", flat, ones)[0],
                                  layer_norm("all", flat, ones)[0])


@pytest.mark.parametrize("over", OVER)
def test_float32_stays_float32(over):
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, size=(2, 4, 4, 6)).astype(np.float32)
    w = {k: v.astype(np.float32) for k, v in random_weights(over, (4, 4, 6), rng).items()}
    y, backward = layer_norm(over, x, w)
    dx, grads = backward(np.ones_like(y))
    assert {a.dtype for a in (y, dx, *grads.values())} == {np.dtype(np.float32)}
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    np.testing.assert_allclose(y, layer_norm(over, x.astype(np.float64), w64)[0], atol=1e-5)


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("over", OVER)
def test_gradcheck_central_differences(rank, over):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *SHAPES[rank]))
    w = random_weights(over, SHAPES[rank], rng)
    y, backward = layer_norm(over, x, w)
    r = rng.normal(size=y.shape)
    dx, grads = backward(r)
    np.testing.assert_allclose(dx, numgrad(lambda v: layer_norm(over, v, w)[0], x.copy(), r),
                               atol=1e-7)
    for name in ("weight", "bias"):
        def f(value, name=name):
            return layer_norm(over, x, {**w, name: value})[0]

        np.testing.assert_allclose(grads[name], numgrad(f, w[name].copy(), r), atol=1e-7,
                                   err_msg=name)


def test_need_dx_false_still_gives_parameter_gradients():
    op = OPS["LayerNorm"]
    p = op.Params()
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(2, 3, 4)), random_weights("channels", (3, 4), rng)
    _, saved = op.forward(p, None, w, [x], Ctx())
    dy = rng.normal(size=x.shape)
    (dx,), grads = op.backward(p, None, w, saved, dy, Ctx(need_dx=False))
    assert dx is None
    np.testing.assert_array_equal(grads["bias"], dy.sum(axis=(0, 1)))


@pytest.mark.parametrize("over", OVER)
def test_network_gradcheck(over):
    """In a network, float64: Conv -> LayerNorm -> FC, every parameter's and the input's
    gradient against central differences of the model's output."""
    model = Model(cnndsl.check_text(f"input 4x3x2\nConv(5, 3, pad=same) -> "
                                    f"LayerNorm(over={over}) -> FC(3)"),
                  seed=0, dtype=np.float64)
    rng = np.random.default_rng(2)
    for array in model.parameters().values():  # not ones and zeros
        array[...] = rng.normal(size=array.shape)
    x = rng.normal(size=(2, 4, 3, 2))
    r = rng.normal(size=(2, 3))
    assert_model_gradients(model, x, r)


def test_batches_cut_across_threads_give_the_whole_batchs_gradients(monkeypatch):
    """LRN and LayerNorm work per example: a batch cut into shards (one per thread; the
    model adds the shards' parameter gradients) gives the whole batch's loss and
    gradients, float64."""
    from cnndsl import parallel

    monkeypatch.setattr(parallel, "thread_count", lambda: 2)
    monkeypatch.setattr(cnndsl.model, "SMALL_NET_MACS", 0)  # cut even this small network
    text = ("input 6x6x3\nConv(6, 3) -> LRN(3, alpha=0.5) -> LayerNorm -> ReLU -> "
            "LayerNorm(over=all) -> FC(4) -> LayerNorm -> FC(3) -> Softmax")
    cut, whole = (Model(cnndsl.check_text(text), seed=1, dtype=np.float64) for _ in "ab")
    whole.data_parallel = False
    rng = np.random.default_rng(0)
    for model in (cut, whole):
        for name, array in model.parameters().items():
            array[...] = np.random.default_rng(len(name)).normal(1, 0.5, array.shape)
    x, labels = rng.normal(size=(64, 6, 6, 3)), rng.integers(0, 3, size=64)
    loss, probabilities, grads = cut.loss_and_grads(x, labels)
    assert len(cut._runners) == 2 and cut._runners[1].ctx.shard is not None  # it did cut
    expected_loss, expected_probabilities, expected = whole.loss_and_grads(x, labels)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-12)
    for name in expected:
        np.testing.assert_allclose(grads[name], expected[name], atol=1e-12, err_msg=name)


EXPORTED = {"2d": ("6x5x4", "Conv(6, 3) -> LayerNorm -> LayerNorm(over=all) -> FC(4)"),
            "1d": ("12x4", "LayerNorm(eps=0.01) -> Conv(6, 3) -> LayerNorm(over=all)"),
            "3d": ("5x6x4x4", "LayerNorm(over=all) -> Conv(6, 3) -> LayerNorm"),
            "flat": ("3x4x2", "Flatten -> FC(7) -> LayerNorm -> FC(3) -> LayerNorm(over=all)")}


def exported_model(case):
    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    rng = np.random.default_rng(3)
    for name, array in model.parameters().items():  # LayerNorm's are ones and zeros else
        if name.startswith("layernorm"):
            array[...] = rng.normal(1.0 if name.endswith("weight") else 0.0, 0.5, array.shape)
    return model


@pytest.mark.parametrize("opset", [17, 13])
@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_export_equals_forward(case, opset, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cnndsl.export import onnx as onnx_export

    model = exported_model(case)
    onnx_export.to_onnx(model, tmp_path / "m.onnx", opset=opset)
    for batch in (1, 3):
        x = inputs(model, batch, seed=batch) * 2 + 1
        expected = model.forward(x, train=False)
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), expected, atol=1e-4)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ("LayerNormalization" in ops) == (opset >= 17)
    assert ("MatMul" in ops) == (opset < 17)


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_pytorch_export_equals_forward_and_state_dicts_map(case, tmp_path):
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import load_pytorch_state, module_source, to_pytorch

    model = exported_model(case)
    to_pytorch(model, tmp_path / "m.py")
    for batch in (1, 3):
        x = inputs(model, batch, seed=batch) * 2 + 1
        expected = model.forward(x, train=False)
        got, net = run_pytorch(tmp_path / "m.py", x)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert "nn.LayerNorm(" in module_source(model)
    state = net.state_dict()
    for name, array in model.parameters().items():  # same names, shapes and values
        assert state[name].numpy().tobytes() == array.tobytes(), name
    # and back: weights changed in PyTorch come into a fresh cnndsl model bit for bit
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(0.5).add_(0.25)
    fresh = cnndsl.compile(f"network M\ninput {EXPORTED[case][0]}\n{EXPORTED[case][1]}",
                           seed=9)
    load_pytorch_state(fresh, net.state_dict())
    x = inputs(model, 2, seed=5)
    with torch.no_grad():
        np.testing.assert_allclose(fresh.forward(x), net(torch.from_numpy(x)).numpy(),
                                   atol=1e-4)


def test_check_row_bare_note_and_errors(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x4\nConv(6, 3) -> LayerNorm -> "
                      "LayerNorm(eps=0.001, over=all) -> FC(3)\n")
    assert main(["check", str(source)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("layernorm")}
    assert rows["layernorm1"].split()[1:3] == ["LayerNorm", "8x8x6"]
    assert "LayerNorm(eps=0.001, over=all)" in rows["layernorm2"]
    assert rows["layernorm1"].split()[4] == "12"  # weight and bias (6,)
    assert rows["layernorm2"].split()[-2] == f"{2 * 6 * 8 * 8}"  # (6, 8, 8) each
    assert "bare LayerNorm (first: layernorm1) means LayerNorm(eps=1e-05, over=channels)" \
        in out
    for bad, message in (("LayerNorm(eps=0)", "eps must be a number in (0.0, 1.0), got 0"),
                         ("LayerNorm(over=3)", "over must be channels or all, got 3"),
                         ("LayerNorm(over=true)", "over must be channels or all, got true")):
        source.write_text(f"input 8x8x4\n{bad}\n")
        assert main(["check", str(source)]) == 1
        err = capsys.readouterr().err
        assert f"{source}:2:11: error:" in err and message in err, err


def test_one_channel_is_an_error_with_a_hint():
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 8x8x1\nLayerNorm")
    assert "normalising over 1 channel gives the bias whatever the input" in \
        caught.value.message
    assert "LayerNorm(over=all)" in caught.value.hint
    cnndsl.check_text("input 8x8x1\nLayerNorm(over=all)")  # fine: 64 values
    with pytest.raises(CnnDslError, match="single value"):
        cnndsl.check_text("input 1\nLayerNorm(over=all)")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 16x16x3\nConv(8, 3) -> LayerNorm -> ReLU -> "
                      "MaxPool(2) -> Conv(8, 3) -> LayerNorm(over=all) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">LayerNorm<" in svg and ">layernorm1<" in svg and ">LayerNorm over=all<" in svg
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
