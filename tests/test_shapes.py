"""Shape rules of docs/language.md: padding modes, strides, dilation, 1-D/2-D/3-D, and
parameter counts equal to PyTorch's (checked against torch itself when it is installed)."""

import math

import pytest

from cnndsl import check_text
from cnndsl.errors import ShapeError
from cnndsl.ops import OPS, user_op_names


def out_shape(input_, layer, **bindings):
    graph = check_text(f"input {input_}\n{layer}", bindings)
    return graph.nodes[graph.graph["output"]]["shape"]


def params_of(input_, layer):
    graph = check_text(f"input {input_}\n{layer}")
    return graph.nodes[graph.graph["output"]]["params_count"]


# ---- the worked examples of the notes --------------------------------------------
def test_5x5_image_with_3x3_kernel():
    assert out_shape("5x5x1", "Conv(1, 3x3, pad=valid)") == (3, 3, 1)
    assert out_shape("5x5x1", "Conv(1, 3x3, pad=same)") == (5, 5, 1)
    assert out_shape("5x5x1", "Conv(1, 3x3, pad=full)") == (7, 7, 1)
    assert out_shape("5x5x1", "Conv(1, 3x3, pad=1)") == (5, 5, 1)


def test_max_pooling_2x2_and_3x3():
    assert out_shape("4x4x1", "MaxPool(2)") == (2, 2, 1)
    assert out_shape("5x5x1", "MaxPool(2)") == (2, 2, 1)  # floor mode
    assert out_shape("5x5x1", "MaxPool(3, 1)") == (3, 3, 1)
    assert out_shape("6x6x1", "MaxPool(3)") == (2, 2, 1)
    assert out_shape("7x7x1", "MaxPool(3, 2)") == (3, 3, 1)


def test_1d_kernel_of_three_valid_and_same():
    # the notes' 1-D kernel [3, 2, 2] on a signal of length 7
    assert out_shape("7x1", "Conv(1, 3, pad=valid)") == (5, 1)
    assert out_shape("7x1", "Conv(1, 3, pad=same)") == (7, 1)


# ---- padding rules -------------------------------------------------------------------
@pytest.mark.parametrize("size, kernel, stride, dilation, expected", [
    (224, 7, 2, 1, 112), (7, 3, 2, 1, 4), (8, 3, 2, 1, 4), (5, 4, 1, 1, 5),
    (10, 3, 3, 2, 4), (1, 5, 1, 1, 1),
])
def test_same_padding_gives_ceil_of_in_over_stride(size, kernel, stride, dilation, expected):
    layer = f"Conv(2, {kernel}, stride={stride}, dilation={dilation})"
    assert out_shape(f"{size}x1", layer) == (expected, 2)
    assert expected == math.ceil(size / stride)


@pytest.mark.parametrize("size, kernel, stride, dilation, pad, expected", [
    (10, 3, 1, 2, "valid", 6), (10, 3, 2, 1, "valid", 4), (10, 3, 1, 1, "full", 12),
    (10, 3, 1, 3, "full", 16), (10, 4, 3, 1, 2, 4), (28, 5, 1, 1, 0, 24),
])
def test_explicit_padding(size, kernel, stride, dilation, pad, expected):
    layer = f"Conv(2, {kernel}, stride={stride}, dilation={dilation}, pad={pad})"
    assert out_shape(f"{size}x1", layer) == (expected, 2)
    if isinstance(pad, int):
        assert expected == (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def test_padding_and_kernels_per_axis():
    assert out_shape("10x20x3", "Conv(4, (3, 5), stride=(1, 2), pad=(0, 2))") == (8, 10, 4)


def test_rank_picks_dimensionality():
    assert out_shape("100x1", "Conv(8, 5, pad=valid)") == (96, 8)
    assert out_shape("28x28x1", "Conv(8, 5, pad=valid)") == (24, 24, 8)
    assert out_shape("16x16x16x1", "Conv(8, 5, pad=valid)") == (12, 12, 12, 8)
    assert params_of("16x16x16x2", "Conv(8, 5)") == 8 * 2 * 125 + 8


def test_every_layer_kind_has_a_shape():
    cases = {
        "Conv": ("Conv(6, 3, stride=2)", (4, 4, 6)),
        "ConvT": ("ConvT(6, 3, stride=2, pad=1, output_pad=1)", (16, 16, 6)),
        "DepthwiseConv": ("DepthwiseConv(3, multiplier=2)", (8, 8, 8)),
        "SeparableConv": ("SeparableConv(5, 3, stride=2)", (4, 4, 5)),
        "LocalConv": ("LocalConv(5, 3)", (6, 6, 5)),
        "MaxPool": ("MaxPool(2)", (4, 4, 4)), "AvgPool": ("AvgPool(3, 1, pad=1)", (8, 8, 4)),
        "L2Pool": ("L2Pool(2)", (4, 4, 4)), "GlobalAvgPool": ("GlobalAvgPool", (4,)),
        "GlobalMaxPool": ("GlobalMaxPool", (4,)), "Flatten": ("Flatten", (256,)),
        "FC": ("FC(7)", (7,)), "ReLU": ("ReLU", (8, 8, 4)),
        "LeakyReLU": ("LeakyReLU(0.2)", (8, 8, 4)), "Sigmoid": ("Sigmoid", (8, 8, 4)),
        "Tanh": ("Tanh", (8, 8, 4)), "Softmax": ("Softmax", (8, 8, 4)),
        "Maxout": ("Maxout(2)", (8, 8, 2)),
        "BatchNorm": ("BatchNorm", (8, 8, 4)), "Dropout": ("Dropout(0.1)", (8, 8, 4)),
        "Identity": ("Identity", (8, 8, 4)),
    }
    assert set(cases) <= {OPS[name].name for name in user_op_names()}
    for layer, expected in cases.values():
        assert out_shape("8x8x4", layer) == expected, layer


@pytest.mark.parametrize("name", sorted({OPS[key].name for key in user_op_names()}))
def test_every_layer_kinds_examples_check(name):
    """Each kind's own examples (Op.examples) check, and the layer is in the graph."""
    assert OPS[name].examples, f"{name} has no examples"
    for shape, chain in OPS[name].examples:
        graph = check_text(f"input {shape}\n{chain}")
        assert name in {node["op"] for _, node in graph.nodes(data=True)}, chain


def test_fc_flattens_a_spatial_input():
    graph = check_text("input 7x7x64\nFC(10)")
    assert graph.nodes["fc1"]["param_shapes"] == {"weight": (10, 3136), "bias": (10,)}


def test_concat_and_sum():
    assert out_shape("8x8x4", "{ Conv(2) | Conv(3, 5) | Identity }") == (8, 8, 9)
    assert out_shape("8x8x4", "{ Identity + Conv(4, 5) + DepthwiseConv }") == (8, 8, 4)


@pytest.mark.parametrize("layer, words", [
    ("Conv(2, 5, pad=valid)", ["kernel 5x5", "padded input 3x3", "input 3x3x1"]),
    ("MaxPool(4)", ["window 4x4", "padded input 3x3"]),
    ("FC(3) -> Conv(2)", ["flat tensor of 3 features"]),
    ("Conv(4, groups=3)", ["groups=3", "input channels (1)"]),
    ("Conv(2, (3, 3, 3))", ["kernel 3x3x3 has 3 axes", "2 spatial axes"]),
    ("MaxPool(2, pad=2)", ["pads 2 per side on a 2-wide window", "at most 1 (size // 2)"]),
    ("{ Identity + Conv(2) }", ["branch 1 gives 3x3x1", "branch 2 gives 3x3x2"]),
    ("{ Identity | MaxPool(2) }", ["same spatial size", "branch 2 gives 1x1x1"]),
])
def test_shape_errors_name_layer_input_and_need(layer, words):
    with pytest.raises(ShapeError) as caught:
        check_text(f"input 3x3x1\n{layer}")
    for word in words:
        assert word in caught.value.message


# ---- parameter counts and shapes equal PyTorch's -------------------------------------
TORCH_CASES = [
    ("20x3", "Conv(8, 5, stride=2, pad=2, dilation=1)", "Conv1d(3, 8, 5, 2, 2)"),
    ("20x20x4", "Conv(8, 3, stride=2, pad=1, groups=2)", "Conv2d(4, 8, 3, 2, 1, groups=2)"),
    ("20x20x4", "Conv(8, 3, dilation=2, pad=valid, bias=false)",
     "Conv2d(4, 8, 3, dilation=2, bias=False)"),
    ("9x10x11x2", "Conv(3, (3, 1, 2), pad=(1, 0, 1))", "Conv3d(2, 3, (3, 1, 2), padding=(1, 0, 1))"),
    ("7x7x4", "ConvT(6, 3, stride=2, pad=1, output_pad=1)",
     "ConvTranspose2d(4, 6, 3, 2, 1, output_padding=1)"),
    ("12x3", "ConvT(5, 4, stride=3)", "ConvTranspose1d(3, 5, 4, 3)"),
    ("9x9x4", "DepthwiseConv(3, stride=2, pad=1, multiplier=3)", "Conv2d(4, 12, 3, 2, 1, groups=4)"),
    ("9x9x4", "MaxPool(3, 2, pad=1)", "MaxPool2d(3, 2, 1)"),
    ("9x9x4", "AvgPool(2)", "AvgPool2d(2)"),
    ("9x9x9x4", "MaxPool(2)", "MaxPool3d(2)"),
    ("9x9x4", "FC(10)", "Sequential(nn.Flatten(), nn.Linear(324, 10))"),
    ("9x9x4", "BatchNorm", "BatchNorm2d(4)"),
]


@pytest.mark.parametrize("input_, layer, module", TORCH_CASES)
def test_matches_pytorch(input_, layer, module):
    torch = pytest.importorskip("torch")
    from torch import nn  # noqa: F401  (used by eval)

    graph = check_text(f"input {input_}\n{layer}")
    node = graph.nodes[graph.graph["output"]]
    torch_module = eval(f"nn.{module}")
    dims = [int(d) for d in input_.split("x")]
    x = torch.zeros(1, dims[-1], *dims[:-1])
    y = torch_module.eval()(x)
    torch_shape = (*y.shape[2:], y.shape[1]) if y.dim() > 2 else tuple(y.shape[1:])
    assert node["shape"] == torch_shape
    assert node["params_count"] == sum(p.numel() for p in torch_module.parameters())
    shapes = {name: tuple(p.shape) for name, p in torch_module.named_parameters()}
    if not module.startswith("Sequential"):
        assert node["param_shapes"] == shapes


def test_separable_conv_counts_as_keras():
    # Keras SeparableConv2D(16, 3) on 8 channels: 8*9 depthwise + 8*16 pointwise + 16 bias
    assert params_of("10x10x8", "SeparableConv(16, 3)") == 8 * 9 + 8 * 16 + 16


def test_local_conv_has_one_weight_per_position():
    graph = check_text("input 6x6x2\nLocalConv(3, 3)")
    node = graph.nodes["localconv1"]
    assert node["shape"] == (4, 4, 3)
    assert node["param_shapes"] == {"weight": (4, 4, 3, 2, 3, 3), "bias": (3, 4, 4)}


# ---- property-based: the rules hold for any size, kernel, stride, dilation, padding ----
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 40), kernel=st.integers(1, 7), stride=st.integers(1, 4),
       dilation=st.integers(1, 3), pad=st.one_of(st.integers(0, 4),
                                                  st.sampled_from(["same", "valid", "full"])))
def test_conv_output_rule(size, kernel, stride, dilation, pad):
    extent = dilation * (kernel - 1) + 1
    if pad == "same":
        expected = math.ceil(size / stride)
    else:
        p = {"valid": 0, "full": dilation * (kernel - 1)}.get(pad, pad)
        expected = (size + 2 * p - extent) // stride + 1 if size + 2 * p >= extent else None
    layer = f"Conv(1, {kernel}, stride={stride}, dilation={dilation}, pad={pad})"
    if expected is None:
        with pytest.raises(ShapeError):
            out_shape(f"{size}x1", layer)
    else:
        assert out_shape(f"{size}x1", layer) == (expected, 1)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 30), kernel=st.integers(1, 6), stride=st.integers(1, 3),
       dilation=st.integers(1, 3), pad=st.integers(0, 3))
def test_conv_output_equals_pytorch(size, kernel, stride, dilation, pad):
    torch = pytest.importorskip("torch")
    if size + 2 * pad < dilation * (kernel - 1) + 1:
        return
    conv = torch.nn.Conv1d(1, 1, kernel, stride, pad, dilation)
    length = conv(torch.zeros(1, 1, size)).shape[-1]
    layer = f"Conv(1, {kernel}, stride={stride}, dilation={dilation}, pad={pad})"
    assert out_shape(f"{size}x1", layer) == (length, 1)
