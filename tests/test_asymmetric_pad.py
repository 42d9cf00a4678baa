"""Explicit (before, after) padding per axis (issue 14): `pad=((0, 1), (2, 1))`, numbers and
pairs mixed (`pad=(1, (0, 2))`), `pad=((0, 1),)` in 1-D, for Conv, DepthwiseConv,
SeparableConv, LocalConv (which now takes `pad`) and the windowed pools.

Checked against PyTorch (F.pad with the pairs as written, then the layer unpadded; -inf for
max pooling) in 1-D, 2-D and 3-D, forward and every gradient; by float64 central
differences; through the ONNX and PyTorch exports; in `cnndsl check` (its row and the
--rf padding column), in a rendered diagram, and in the errors for forms that are wrong or
ambiguous."""

import shutil

import numpy as np
import pytest
from test_export import assert_exports_equal_forward
from test_model import numeric_gradcheck

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.model import Model

SHAPES = {1: (9, 2), 2: (6, 7, 2), 3: (5, 4, 6, 2)}
#: (before, after) per axis, as written in the DSL: convs may pad more than a pool
CONV_PADS = {1: ((2, 0),), 2: ((0, 1), (2, 1)), 3: ((1, 0), (0, 2), (1, 1))}
POOL_PADS = {1: ((0, 1),), 2: ((1, 0), (0, 1)), 3: ((0, 1), (1, 1), (1, 0))}
LAYERS = {  # the layer with {pad} for the pairs; the pads it takes
    "Conv": ("Conv(3, 3, stride=2, pad={pad})", CONV_PADS),
    "DepthwiseConv": ("DepthwiseConv(3, pad={pad}, multiplier=2)", CONV_PADS),
    "SeparableConv": ("SeparableConv(3, 2, pad={pad})", CONV_PADS),
    "LocalConv": ("LocalConv(2, 3, stride=2, pad={pad})", CONV_PADS),
    "MaxPool": ("MaxPool(3, 2, pad={pad})", POOL_PADS),
    "AvgPool": ("AvgPool(3, 2, pad={pad})", POOL_PADS),
    "L2Pool": ("L2Pool(2, 1, pad={pad})", POOL_PADS),
}


def spelled(pairs) -> str:
    """The DSL spelling of per-axis pairs: ((0, 1), (2, 1)); ((0, 1),) in 1-D."""
    inner = ", ".join(f"({b}, {a})" for b, a in pairs)
    return f"({inner},)" if len(pairs) == 1 else f"({inner})"


def layer_text(kind: str, rank: int) -> str:
    call, pads = LAYERS[kind]
    return call.format(pad=spelled(pads[rank]))


def dims(rank: int) -> str:
    return "x".join(map(str, SHAPES[rank]))


def torch_reference(kind, rank, pairs, weights, x_t):
    """The layer in PyTorch: F.pad with `pairs` as written (F.pad's list: last axis
    first), then the layer without padding. x_t: N×C×spatial, weights: torch leaves."""
    import torch
    import torch.nn.functional as F

    pads = [side for before, after in reversed(pairs) for side in (before, after)]
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    if kind == "MaxPool":
        padded = F.pad(x_t, pads, value=float("-inf"))
        return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1](padded, 3, 2)
    padded = F.pad(x_t, pads)
    channels = x_t.shape[1]
    if kind == "Conv":
        return conv(padded, weights["weight"], weights["bias"], stride=2)
    if kind == "DepthwiseConv":
        return conv(padded, weights["weight"], weights["bias"], groups=channels)
    if kind == "SeparableConv":
        mid = conv(padded, weights["depthwise"], None, groups=channels)
        return conv(mid, weights["pointwise"], weights["bias"])
    if kind == "AvgPool":
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1](padded, 3, 2)
    if kind == "L2Pool":  # sqrt of the sum of squares over each 2-wide window, stride 1
        squares = F.pad(x_t * x_t, pads)
        mean = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1](squares, 2, 1)
        return torch.sqrt(mean * 2**rank)
    assert kind == "LocalConv"
    return torch_local(padded, weights["weight"], weights["bias"], kernel=3, stride=2)


def torch_local(x_t, weight, bias, kernel, stride):
    """A locally connected layer by explicit loops over output positions (weight
    (*out, F, C, *kernel), bias (F, *out)), on the already padded input."""
    import itertools

    import torch

    rank = x_t.dim() - 2
    out = weight.shape[:rank]
    y = torch.zeros(x_t.shape[0], weight.shape[rank], *out, dtype=x_t.dtype)
    for position in itertools.product(*(range(o) for o in out)):
        window = tuple(slice(o * stride, o * stride + kernel) for o in position)
        patch = x_t[(slice(None), slice(None), *window)]  # N×C×kernel
        y[(slice(None), slice(None), *position)] = torch.einsum(
            "nc...,fc...->nf", patch, weight[position])
    return y + bias


CASES = [(kind, rank) for kind in LAYERS for rank in (1, 2, 3)]


@pytest.mark.parametrize("kind,rank", CASES, ids=[f"{k}-{r}d" for k, r in CASES])
def test_forward_and_every_gradient_match_pytorch(kind, rank):
    torch = pytest.importorskip("torch")
    text = f"input {dims(rank)}\n{layer_text(kind, rank)}"
    model = Model(cnndsl.check_text(text), seed=0, dtype=np.float64)
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(2, *SHAPES[rank]))
    if kind == "MaxPool":  # all negative: a zero in the padding would win
        x -= 10.0
    if kind == "L2Pool":  # away from 0, where sqrt's derivative is unbounded
        x = np.abs(x) + 0.5
    y = model.forward(x, train=True)
    r = rng.normal(size=y.shape)
    dx, grads = model.backward(r)
    layer = model.output_name
    leaves = {name.split(".", 1)[1]: torch.from_numpy(array.copy()).requires_grad_(True)
              for name, array in model.parameters().items()}
    x_t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    pairs = LAYERS[kind][1][rank]
    expected = torch_reference(kind, rank, pairs, leaves, x_t)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), atol=1e-12)
    expected.backward(torch.from_numpy(r).movedim(-1, 1))
    np.testing.assert_allclose(dx, x_t.grad.movedim(1, -1).numpy(), atol=1e-12)
    assert sorted(grads) == sorted(f"{layer}.{n}" for n in leaves)
    for name, leaf in leaves.items():
        np.testing.assert_allclose(grads[f"{layer}.{name}"], leaf.grad.numpy(), atol=1e-12)


def test_the_output_size_counts_both_sides():
    graph = cnndsl.check_text("input 8x8x3\nConv(4, 3, pad=((0, 1), (2, 2))) -> "
                              "LocalConv(2, 3, pad=(1, (0, 2))) -> MaxPool(2, pad=((1, 0), (0, 1)))")
    shapes = [graph.nodes[n]["shape"] for n in ("conv1", "localconv1", "maxpool1")]
    # 8+0+1-3+1 = 7, 8+2+2-3+1 = 10; then 7+2-3+1 = 7, 10+2-3+1 = 10; then 8/2, 11//2
    assert shapes == [(7, 10, 4), (7, 10, 2), (4, 5, 2)]


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradcheck_central_differences(kind, rank):
    """The whole model's input and parameter gradients, float64, train and eval."""
    text = f"input {dims(rank)}\n{layer_text(kind, rank)} -> FC(2)"
    model = Model(cnndsl.check_text(text), seed=1, dtype=np.float64)
    x = np.random.default_rng(4).normal(size=(2, *SHAPES[rank]))
    for train in (True, False):
        numeric_gradcheck(model, x, train, coordinates=4)


def test_mixed_numbers_and_pairs_mean_both_sides_for_a_number():
    mixed = cnndsl.check_text("input 6x7x2\nConv(3, 3, pad=(1, (0, 2)))")
    pairs = cnndsl.check_text("input 6x7x2\nConv(3, 3, pad=((1, 1), (0, 2)))")
    assert mixed.nodes["conv1"]["padding"] == pairs.nodes["conv1"]["padding"] == (
        (1, 1), (0, 2))
    a = Model(mixed, seed=2, dtype=np.float64)
    b = Model(pairs, seed=2, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(2, 6, 7, 2))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_symmetric_pairs_equal_the_number_they_spell():
    """((1, 1), (1, 1)) is pad=1: the same output and the same exported module arguments."""
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype(np.float32)
    for call in ("Conv(4, 3, pad={})", "MaxPool(3, 2, pad={})"):
        a = cnndsl.compile("input 7x7x3\n" + call.format("1"), seed=0)
        b = cnndsl.compile("input 7x7x3\n" + call.format("((1, 1), (1, 1))"), seed=0)
        np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_local_conv_takes_pad_like_conv():
    graph = cnndsl.check_text("input 6x6x2\nLocalConv(3, 3) -> LocalConv(2, 3, pad=same) -> "
                              "LocalConv(2, 2, stride=2, pad=((0, 1), (1, 0)))")
    assert [graph.nodes[n]["shape"] for n in ("localconv1", "localconv2", "localconv3")] == [
        (4, 4, 3), (4, 4, 2), (2, 2, 2)]
    assert graph.nodes["localconv2"]["padding"] == ((1, 1), (1, 1))
    # one weight per output position of the padded input
    assert graph.nodes["localconv3"]["param_shapes"]["weight"] == (2, 2, 2, 2, 2, 2)


# ---- exports ------------------------------------------------------------------------------
EXPORTED = {
    "conv_2d": ("7x6x3", ("Conv(4, 3, pad=((0, 1), (2, 1))) -> ReLU -> Conv(2, 2, stride=2, "
                         "pad=(1, (0, 1)))")),
    "pools_2d": ("7x6x3", ("MaxPool(3, 2, pad=((1, 0), (0, 1))) -> AvgPool(2, 1, "
                          "pad=((0, 1), (1, 0))) -> L2Pool(3, 1, pad=((1, 1), (0, 1)))")),
    "depthwise_separable_local": ("7x6x2", ("DepthwiseConv(3, pad=((2, 0), (0, 1))) -> "
                                           "SeparableConv(3, 3, pad=((0, 2), (1, 0))) -> "
                                           "LocalConv(2, 2, pad=((1, 0), (0, 1)))")),
    "all_1d": ("11x2", ("Conv(3, 3, pad=((0, 2),)) -> MaxPool(3, 2, pad=((1, 0),)) -> "
                       "LocalConv(2, 2, pad=((0, 1),))")),
    "all_3d": ("5x4x6x2", ("Conv(2, 3, pad=((0, 1), 1, (2, 0))) -> "
                          "AvgPool(2, pad=((1, 0), (0, 1), (1, 0))) -> "
                          "LocalConv(2, 2, pad=((0, 1), (1, 0), (0, 0)))")),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")

    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network P\ninput {shape}\n{body}", seed=1)
    assert_exports_equal_forward(model, tmp_path, shift=-2.0)  # mostly negative: -inf max padding


def test_exports_write_begins_and_ends(tmp_path):
    onnx = pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx
    from cnndsl.export.pytorch import module_source

    model = cnndsl.compile("network P\ninput 7x6x3\nConv(4, 3, pad=((0, 1), (2, 1))) -> "
                           "MaxPool(3, 2, pad=((1, 0), (0, 1))) -> "
                           "LocalConv(2, 2, pad=((1, 0), (0, 1)))", seed=0)
    to_onnx(model, tmp_path / "p.onnx")
    proto = onnx.load(str(tmp_path / "p.onnx"))
    pads = {node.op_type: list(next(a for a in node.attribute if a.name == "pads").ints)
            for node in proto.graph.node if node.op_type in ("Conv", "MaxPool")}
    assert pads["MaxPool"] == [1, 0, 0, 1]  # begins (H, W), then ends (H, W)
    conv_pads = [list(next(a for a in n.attribute if a.name == "pads").ints)
                 for n in proto.graph.node if n.op_type == "Conv"]
    assert conv_pads == [[0, 2, 1, 1], [1, 0, 0, 1]]  # the Conv, LocalConv's patches
    source = module_source(model)
    assert "self.conv1(F.pad(x, [2, 1, 0, 1]))" in source  # F.pad: last axis first
    assert "self.maxpool1(F.pad(x, [0, 1, 1, 0], value=float('-inf')))" in source
    assert "self.localconv1(F.pad(x, [0, 1, 1, 0]))" in source


# ---- errors -------------------------------------------------------------------------------
def error_of(text: str) -> CnnDslError:
    with pytest.raises(CnnDslError) as caught:
        cnndsl.check_text(text, filename="p.cnn")
    return caught.value


def test_a_flat_pair_on_a_1d_input_shows_the_nested_spelling():
    error = error_of("input 9x2\nConv(3, 3, pad=(0, 1))")
    assert isinstance(error, ShapeError)
    assert "pad 0x1 has 2 axes but the input has 1 spatial axis" in error.message
    assert "pad=((0, 1),)" in error.hint
    assert str(error).startswith("p.cnn:2:1: error: Conv 'conv1'")


@pytest.mark.parametrize("pad,rank", [("((0, 1),)", 2), ("((0, 1), (2, 2))", 3),
                                      ("((0, 1), (2, 2), (1, 1))", 1)])
def test_pairs_for_the_wrong_number_of_axes(pad, rank):
    error = error_of(f"input {dims(rank)}\nConv(3, 3, pad={pad})")
    assert "but the input has" in error.message
    example = spelled([(0, 1)] * rank)
    assert f"one (before, after) pair per spatial axis, e.g. pad={example}" in error.hint


@pytest.mark.parametrize("pad,words", [
    ("((0, 1, 2), (1, 1))", "pad entry (0, 1, 2) has 3 numbers; a pair is (before, after)"),
    ("((0, -1), (1, 1))", "pad (before, after) must be at least 0, got -1"),
    ("((0, 1.5), (1, 1))", "pad (before, after) must be a whole number, got 1.5"),
])
def test_malformed_pairs_are_located_at_the_argument(pad, words):
    error = error_of(f"input 6x7x2\nConv(3, 3, pad={pad})")
    assert words in error.message
    assert str(error).startswith("p.cnn:2:12: error: Conv:")  # at `pad=`


def test_a_pair_of_a_flag_is_refused_where_it_is_written():
    error = error_of("input 6x7x2\nConv(3, 3, pad=((true, 1), (1, 1)))")
    assert str(error).startswith("p.cnn:2:18: error: a tuple entry needs a number, got true")


def test_convt_refuses_pairs_and_says_why():
    error = error_of("input 4x4x3\nConvT(4, 3, stride=2, pad=((0, 1), (1, 1)))")
    assert "pad takes no (before, after) pairs here" in error.message
    assert "crops its output, the same on both sides" in error.hint
    assert str(error).startswith("p.cnn:2:23: error: ConvT:")  # at `pad=`


@pytest.mark.parametrize("pool", ["MaxPool", "AvgPool", "L2Pool"])
def test_pool_pairs_obey_size_over_two_on_each_side(pool):
    """Issue 17's rule, per side: a 3-wide window may pad 0+1 or 1+0, never 0+2."""
    cnndsl.check_text(f"input 7x7x2\n{pool}(3, 2, pad=((0, 1), (1, 0)))")
    error = error_of(f"input 7x7x2\n{pool}(3, 2, pad=((0, 2), (1, 1)))")
    assert "pad=((0,2),(1,1)) pads 0+2 on a 3-wide window" in error.message
    assert "hint: pad at most size // 2 per side" in str(error)


# ---- what users see -----------------------------------------------------------------------
def test_check_rows_and_the_rf_padding_column(tmp_path, capsys):
    source = tmp_path / "p.cnn"
    source.write_text("network P\ninput 8x8x3\nConv(4, 3, pad=((0, 1), (2, 1))) -> "
                      "MaxPool(2, pad=(1, (0, 1))) -> LocalConv(2, 2, pad=same)\n")
    assert main(["check", "--rf", str(source)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("conv1", "maxpool1", "localconv1")}
    assert "Conv(4, 3, pad=((0,1),(2,1)))" in rows["conv1"]
    assert "MaxPool(2, pad=(1,(0,1)))" in rows["maxpool1"]
    assert "LocalConv(2, 2, pad=same)" in rows["localconv1"]
    # the padding column: before+after where the sides differ, per axis
    assert " 0+1x2+1 " in rows["conv1"]
    assert " 1x0+1 " in rows["maxpool1"]
    assert " 0+1 " in rows["localconv1"]  # 'same' with an even window: one zero after


def test_fmt_keeps_the_pair_spellings():
    from cnndsl.fmt import format_text

    text = ("network P\ninput 9x2\nConv(3, 3, pad=((0,1),))\n"
            "  -> LocalConv(2, 2, pad=( 1 , (0,1) ))\n")
    formatted = format_text(text)
    assert "pad=((0, 1),)" in formatted and "pad=(1, (0, 1))" in formatted
    assert format_text(formatted) == formatted


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_shows_the_pairs(tmp_path):
    source = tmp_path / "p.cnn"
    source.write_text("network P\ninput 28x28x1\nConv(8, 2, pad=((0, 1), (0, 1))) -> ReLU -> "
                      "MaxPool(2) -> LocalConv(4, 3, pad=((1, 0), (2, 1))) -> FC(10)\n")
    svg = tmp_path / "p.svg"
    assert main(["render", str(source), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert ">Conv 8 2×2 pad=((0,1),(0,1))<" in text
    assert ">LocalConv 4 3×3 pad=((1,0),(2,1))<" in text
    png = tmp_path / "p.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_pairs_with_the_same_total_give_the_same_size():
    """Only before + after counts for the output size."""
    for before, after in ((0, 2), (1, 1), (2, 0)):
        graph = cnndsl.check_text(f"input 9x2\nConv(1, 3, pad=(({before}, {after}),))")
        assert graph.nodes["conv1"]["shape"] == (9, 1)
