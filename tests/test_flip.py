"""`flip=true` on Conv and DepthwiseConv (issue 14): true convolution, y = cross-correlation of
x with the weight flipped on every kernel axis, as the lecture decks define convolution
before they say CNNs use cross-correlation. The weight is stored (and trained, exported,
loaded) unflipped; its gradient comes back through the same flip.

Checked against the definition written out with loops (and numpy.convolve in 1-D), against
PyTorch (torch.flip then F.conv) in 1-D, 2-D and 3-D with every gradient, by float64
central differences, through the ONNX and PyTorch exports (the stored weight unflipped in
both), and in `cnndsl check` and the errors of layers that take no flip."""

import itertools

import numpy as np
import pytest
from test_export import inputs, run_onnx, run_pytorch
from test_model import numeric_gradcheck

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.model import Model

SHAPES = {1: (9, 4), 2: (7, 6, 4), 3: (5, 6, 4, 4)}
LAYERS = {  # stride, dilation, groups and (before, after) padding with the flip
    "Conv": "Conv(6, 3, stride=2, pad=same, dilation=1, groups=2, flip=true)",
    "Conv_dilated": "Conv(3, 2, pad=full, dilation=2, flip=true)",
    "DepthwiseConv": "DepthwiseConv(3, stride=2, multiplier=2, flip=true)",
}


def model_of(text: str, seed: int = 0) -> Model:
    return Model(cnndsl.check_text(text), seed=seed, dtype=np.float64)


def dims(rank: int) -> str:
    return "x".join(map(str, SHAPES[rank]))


def test_1d_flip_is_numpy_convolve_and_no_flip_is_correlate():
    x = np.random.default_rng(0).normal(size=(1, 9, 1))
    for flip, reference in ((True, np.convolve), (False, np.correlate)):
        model = model_of(f"input 9x1\nConv(1, 4, pad=valid, bias=false, flip={str(flip).lower()})")
        w = model.parameters()["conv1.weight"]  # (1, 1, 4)
        expected = reference(x[0, :, 0], w[0, 0], mode="valid")
        np.testing.assert_allclose(model.forward(x)[0, :, 0], expected, atol=1e-12)


def true_convolution_2d(x, w):
    """The definition, by loops over input positions: y[i, j] = sum over (m, n) of
    x[m, n] * w[i - m + K - 1, j - n + L - 1] where that index lies in the kernel ('valid'
    output: i, j count from the first full overlap). x: H×W×C, w: F×C×K×L -> y: H'×W'×F."""
    h, wd, _ = x.shape
    f, _, k, l_ = w.shape
    y = np.zeros((h - k + 1, wd - l_ + 1, f))
    for i, j, m, n in itertools.product(range(h - k + 1), range(wd - l_ + 1), range(h),
                                        range(wd)):
        a, b = i - m + k - 1, j - n + l_ - 1
        if 0 <= a < k and 0 <= b < l_:
            y[i, j] += w[:, :, a, b] @ x[m, n]
    return y


def test_2d_flip_is_the_decks_convolution():
    model = model_of("input 6x5x2\nConv(3, 3x2, pad=valid, bias=false, flip=true)")
    x = np.random.default_rng(1).normal(size=(1, 6, 5, 2))
    expected = true_convolution_2d(x[0], model.parameters()["conv1.weight"])
    np.testing.assert_allclose(model.forward(x)[0], expected, atol=1e-12)


def test_flip_equals_no_flip_with_the_weight_flipped():
    flipped = model_of("input 7x6x4\nConv(3, 3x2, stride=2, flip=true)")
    plain = model_of("input 7x6x4\nConv(3, 3x2, stride=2)")
    for name, array in flipped.parameters().items():
        plain.parameters()[name][...] = array[:, :, ::-1, ::-1] if array.ndim == 4 else array
    x = np.random.default_rng(2).normal(size=(2, 7, 6, 4))
    np.testing.assert_allclose(flipped.forward(x), plain.forward(x), atol=1e-12)
    # a flip-symmetric weight convolves and correlates alike
    w = flipped.parameters()["conv1.weight"]
    w[...] = w + w[:, :, ::-1, ::-1]
    before = flipped.forward(x)
    flipped.parameters()["conv1.weight"][...] = w[:, :, ::-1, ::-1]
    np.testing.assert_allclose(flipped.forward(x), before, atol=1e-12)


def torch_reference(kind, rank, leaves, x_t):
    """PyTorch: F.conv with torch.flip of the (leaf) weight, padding as cnndsl resolves
    the layer's text (same: 0 before, 1 after for stride 2 on odd sizes, by F.pad)."""
    import torch
    import torch.nn.functional as F

    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    axes = list(range(2, 2 + rank))
    weight = torch.flip(leaves["weight"], axes)
    if kind == "Conv_dilated":  # full: d * (k - 1) = 2 on each side
        return conv(x_t, weight, leaves["bias"], padding=2, dilation=2)
    pads = []
    for n in reversed(x_t.shape[2:]):  # 'same' with kernel 3, stride 2, per axis
        total = max(2 * (-(-n // 2) - 1) + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    padded = F.pad(x_t, pads)
    groups = 2 if kind == "Conv" else x_t.shape[1]
    return conv(padded, weight, leaves["bias"], stride=2, groups=groups)


CASES = [(kind, rank) for kind in LAYERS for rank in (1, 2, 3)]


@pytest.mark.parametrize("kind,rank", CASES, ids=[f"{k}-{r}d" for k, r in CASES])
def test_forward_and_every_gradient_match_pytorch(kind, rank):
    torch = pytest.importorskip("torch")
    model = model_of(f"input {dims(rank)}\n{LAYERS[kind]}", seed=rank)
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(2, *SHAPES[rank]))
    y = model.forward(x, train=True)
    r = rng.normal(size=y.shape)
    dx, grads = model.backward(r)
    layer = model.output_name
    leaves = {name.split(".", 1)[1]: torch.from_numpy(array.copy()).requires_grad_(True)
              for name, array in model.parameters().items()}
    x_t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    expected = torch_reference(kind, rank, leaves, x_t)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), atol=1e-12)
    expected.backward(torch.from_numpy(r).movedim(-1, 1))
    np.testing.assert_allclose(dx, x_t.grad.movedim(1, -1).numpy(), atol=1e-12)
    for name, leaf in leaves.items():  # the gradient of the weight as stored
        np.testing.assert_allclose(grads[f"{layer}.{name}"], leaf.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradcheck_central_differences(rank):
    """Flipped Conv -> ReLU (fused in the run plan) -> flipped DepthwiseConv, float64."""
    text = (f"input {dims(rank)}\nConv(4, 3, pad=same, flip=true) -> ReLU -> "
            "DepthwiseConv(2, stride=2, flip=true) -> FC(3)")
    model = model_of(text, seed=5)
    x = np.random.default_rng(6).normal(size=(2, *SHAPES[rank]))
    for train in (True, False):
        numeric_gradcheck(model, x, train, coordinates=5)


def test_training_steps_move_the_stored_weight_by_its_own_gradient():
    """A step of plain SGD on the stored weight lowers the loss: the gradient is that of
    the weight as stored, not of its flip."""
    model = cnndsl.compile("input 8x8x1\nConv(4, 3x2, flip=true) -> ReLU -> "
                           "GlobalAvgPool -> FC(3) -> Softmax", seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, size=16)
    loss, _, grads = model.loss_and_grads(x, labels)
    weight = model.parameters()["conv1.weight"]
    weight -= 0.5 * grads["conv1.weight"]
    assert model.loss_and_grads(x, labels)[0] < loss


# ---- exports ------------------------------------------------------------------------------
EXPORTED = {
    "2d": ("7x6x4", ("Conv(4, 3x2, stride=2, pad=((0, 1), (1, 0)), groups=2, flip=true) -> "
                    "ReLU -> DepthwiseConv(3, pad=same, multiplier=2, flip=true)")),
    "1d": ("11x2", ("Conv(3, 4, dilation=2, pad=full, flip=true) -> "
                   "DepthwiseConv(3, stride=2, bias=false, flip=true)")),
    "3d": ("5x4x6x2", ("Conv(3, 3x2x3, pad=same, bias=false, flip=true) -> "
                      "DepthwiseConv(2, flip=true)")),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward_and_keep_the_weight(case, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from onnx import numpy_helper

    from cnndsl.export.onnx import to_onnx
    from cnndsl.export.pytorch import to_pytorch

    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network F\ninput {shape}\n{body}", seed=1)
    to_onnx(model, tmp_path / "f.onnx")
    to_pytorch(model, tmp_path / "f.py")
    for batch in (1, 3):
        x = inputs(model, batch, seed=batch)
        expected = model.forward(x, train=False)
        np.testing.assert_allclose(run_onnx(tmp_path / "f.onnx", x), expected, atol=1e-4)
        got, net = run_pytorch(tmp_path / "f.py", x)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    # both keep the weight as cnndsl stores it, unflipped, bit for bit
    state = net.state_dict()
    initializers = {i.name: numpy_helper.to_array(i)
                    for i in onnx.load(str(tmp_path / "f.onnx")).graph.initializer}
    for name, array in model.parameters().items():
        np.testing.assert_array_equal(state[name].numpy(), array)
        np.testing.assert_array_equal(initializers[name], array)


def test_the_exports_flip_in_the_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx
    from cnndsl.export.pytorch import module_source

    model = cnndsl.compile("network F\ninput 7x6x4\nConv(4, 3, flip=true) -> Conv(2, 1)",
                           seed=0)
    to_onnx(model, tmp_path / "f.onnx")
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    slices = [n for n in graph.node if n.op_type == "Slice"]
    assert [n.input[0] for n in slices] == ["conv1.weight"]  # conv2 is not flipped
    source = module_source(model)
    assert ("F.conv2d(x, self.conv1.weight.flip([2, 3]), self.conv1.bias, "
            "self.conv1.stride, self.conv1.padding, self.conv1.dilation, "
            "self.conv1.groups)") in source
    assert "self.conv2(x)" in source


# ---- what users see -----------------------------------------------------------------------
def test_check_row_shows_flip(tmp_path, capsys):
    source = tmp_path / "f.cnn"
    source.write_text("network F\ninput 8x8x3\nConv(4, 3, flip=true) -> "
                      "DepthwiseConv(3, flip=true) -> Conv(2, 1)\n")
    assert main(["check", str(source)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.split()}
    assert "Conv(4, 3, flip=true)" in rows["conv1"]
    assert "DepthwiseConv(3, flip=true)" in rows["depthwiseconv1"]
    assert "flip" not in rows["conv2"]


@pytest.mark.parametrize("call", ["SeparableConv(4, 3, flip=true)", "ConvT(4, 3, flip=true)",
                                  "LocalConv(4, 3, flip=true)"])
def test_layers_without_flip_refuse_it_at_the_argument(call):
    with pytest.raises(CnnDslError) as caught:
        cnndsl.check_text(f"input 8x8x3\n{call}", filename="f.cnn")
    kind = call.split("(")[0]
    column = call.index("flip") + 1
    assert str(caught.value).startswith(f"f.cnn:2:{column}: error: {kind}: has no argument "
                                        "'flip'")
    assert "it takes" in caught.value.hint


def test_flip_must_be_a_flag():
    with pytest.raises(CnnDslError, match="flip must be true or false, got 1"):
        cnndsl.check_text("input 8x8x3\nConv(4, 3, flip=1)")


def test_weights_written_before_flip_existed_still_load():
    """A weights file stores each layer's arguments; one written before Conv had `flip`
    lacks it, which means the default (false), so it still matches — while a stored
    flip=true is a difference, named."""
    from cnndsl import architecture

    here = architecture.describe(cnndsl.check_text("input 6x6x1\nConv(2, 3) -> FC(3)"))
    old = [dict(layer, arguments={k: v for k, v in layer["arguments"].items() if k != "flip"})
           for layer in here]
    assert any("flip" in layer["arguments"] for layer in here)
    assert architecture.first_difference(old, here, "W.npz") is None
    flipped = architecture.describe(
        cnndsl.check_text("input 6x6x1\nConv(2, 3, flip=true) -> FC(3)"))
    assert "flip=true in W.npz but flip=false here" in \
        architecture.first_difference(flipped, here, "W.npz")
