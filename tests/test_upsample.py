"""Upsample(factor, mode=nearest|bilinear) (cnndsl/ops/resample.py): a whole factor per spatial
axis, channels-last, on 1-D, 2-D and 3-D inputs. Checked against PyTorch
(F.interpolate, align_corners=False), by hand, by float64 central differences, through the
ONNX (Resize, run by ONNX Runtime) and PyTorch exports, in `cnndsl check`'s table (rows,
receptive fields, errors) and in a rendered diagram."""

import shutil
from fractions import Fraction

import numpy as np
import pytest
from gradcheck import assert_model_gradients, numgrad
from test_export import assert_exports_equal_forward

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx
from cnndsl.ops.resample import UPSAMPLE_MODES, linear_matrix

SIZES = {"1d": (5,), "2d": (4, 3), "3d": (3, 2, 4)}
TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(factor, mode, x, backend="numba"):
    """Upsample's forward on x (N, *spatial, C), and its backward of dy."""
    op = OPS["Upsample"]
    p = op.Params(factor=factor, mode=mode)
    ctx = Ctx(backend=backend)
    y, saved = op.forward(p, None, {}, [x], ctx)
    return y, lambda dy: op.backward(p, None, {}, saved, dy, ctx)[0][0]


def torch_upsample(x, factors, mode):
    """PyTorch's reading: F.interpolate channels-first, by scale_factor."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    rank = x.ndim - 2
    options = {"mode": "nearest"} if mode == "nearest" else {
        "mode": TORCH_LINEAR[rank], "align_corners": False}
    y = torch.nn.functional.interpolate(t, scale_factor=tuple(map(float, factors)), **options)
    return t, y


def factors_for(rank, factor):
    return factor if isinstance(factor, tuple) else (factor,) * rank


@pytest.mark.parametrize("rank", sorted(SIZES))
@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize("factor", [1, 2, 3, "per_axis"])
def test_forward_and_input_gradient_match_pytorch(rank, mode, factor):
    torch = pytest.importorskip("torch")
    sizes = SIZES[rank]
    factor = (2, 3, 1)[:len(sizes)] if factor == "per_axis" else factor
    factors = factors_for(len(sizes), factor)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *sizes, 3))
    y, backward = upsample(factor, mode, x)
    assert y.shape == (2, *(n * f for n, f in zip(sizes, factors)), 3)
    t, expected = torch_upsample(x, factors, mode)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), atol=1e-12)
    dy = rng.normal(size=y.shape)
    expected.backward(torch.from_numpy(dy).movedim(-1, 1))
    np.testing.assert_allclose(backward(dy), t.grad.movedim(1, -1).numpy(), atol=1e-12)


def test_by_hand_in_one_dimension():
    x = np.array([[[1.0], [3.0]]])  # N=1, L=2, C=1
    y, backward = upsample(2, "nearest", x)
    assert y[0, :, 0].tolist() == [1, 1, 3, 3]
    assert backward(np.array([[[1.0], [2.0], [4.0], [8.0]]]))[0, :, 0].tolist() == [3, 12]
    # half-pixel centres: outputs at 0.25, 0.75, 1.25, 1.75 in input units less 0.5,
    # i.e. sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    y, backward = upsample(2, "bilinear", x)
    assert y[0, :, 0].tolist() == [1.0, 1.5, 2.5, 3.0]
    assert backward(np.ones((1, 4, 1)))[0, :, 0].tolist() == [2.0, 2.0]
    assert linear_matrix(2, 2).tolist() == [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]


def test_channels_stay_apart_and_float32_stays_float32():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    for mode in UPSAMPLE_MODES:
        y, backward = upsample((2, 1), mode, x)
        assert y.dtype == np.float32 and y.flags.c_contiguous
        assert backward(np.ones_like(y)).dtype == np.float32
        np.testing.assert_array_equal(y[..., 1] - y[..., 0], np.ones_like(y[..., 0]))


@pytest.mark.parametrize("rank", sorted(SIZES))
@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
def test_gradcheck_central_differences(rank, mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *SIZES[rank], 2))
    factor = (3, 2, 2)[:len(SIZES[rank])]
    y, backward = upsample(factor, mode, x)
    weights = rng.normal(size=y.shape)
    numeric = numgrad(lambda v: upsample(factor, mode, v)[0], x.copy(), weights)
    np.testing.assert_allclose(backward(weights), numeric, atol=1e-6)


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
def test_the_model_runs_it_between_weighted_layers(mode):
    """In a network, float64: the input gradient and every parameter's by central
    differences (the first Conv's flow through Upsample's backward)."""
    model = Model(cnndsl.check_text(
        f"input 5x4x2\nConv(3, 3) -> Upsample(2x3, mode={mode}) -> Conv(2, 3) -> FC(3)"),
        seed=0, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(2, 5, 4, 2))
    r = np.random.default_rng(3).normal(size=(2, 3))
    assert_model_gradients(model, x, r, atol=1e-6)  # input and every parameter


EXPORTED = {
    "1d_nearest": ("7x3", "Upsample(3) -> Conv(4, 3)"),
    "1d_linear": ("7x3", "Upsample(2, mode=bilinear) -> Conv(4, 3)"),
    "2d_nearest": ("5x4x2", "Conv(3, 3) -> Upsample(2x3)"),
    "2d_bilinear": ("5x4x2", "Conv(3, 3) -> Upsample((3, 2), mode=bilinear) -> FC(4)"),
    "3d_nearest": ("3x2x4x2", "Upsample((1, 2, 3)) -> Conv(2, 3)"),
    "3d_trilinear": ("3x2x4x2", "Upsample(2, mode=bilinear) -> Conv(2, 3)"),
    # PyTorch's mode='nearest' gets factor 41 wrong (floor of i * float(1/41)): the export
    # uses 'nearest-exact', the same copies for whole factors
    "1d_nearest_41": ("4x2", "Upsample(41) -> Conv(2, 3)"),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    import onnx

    from cnndsl.export.pytorch import module_source

    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    assert_exports_equal_forward(model, tmp_path)
    resize = next(n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "Resize")
    attributes = {a.name: a.s.decode() for a in resize.attribute}
    if "nearest" in case:
        assert attributes == {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                              "nearest_mode": "floor"}
        assert "mode='nearest-exact')" in module_source(model)
    else:
        assert attributes == {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
        linear = TORCH_LINEAR[len(model.input_shape) - 1]
        assert f"mode='{linear}', align_corners=False)" in module_source(model)


def table_row(out: str, layer: str) -> list[str]:
    import re

    line = next(line for line in out.splitlines() if line.startswith(layer + " "))
    return re.split(r"\s{2,}", line.strip())


def test_check_rows_and_the_bare_defaults(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 6x5x4\nUpsample -> Upsample(2x3, mode=bilinear) -> "
                      "FC(3)\n")
    assert main(["check", str(source)]) == 0
    out = capsys.readouterr()
    assert table_row(out.out, "upsample1")[1:3] == ["Upsample(x2, nearest)", "12x10x4"]
    assert table_row(out.out, "upsample2")[1:3] == ["Upsample(x2x3, bilinear)", "24x30x4"]
    assert "bare Upsample (first: upsample1) means Upsample(factor=2, mode=nearest)" in \
        out.out + out.err


@pytest.mark.parametrize("text,message", [
    ("Upsample(2, mode=valid)", "mode must be nearest or bilinear, got valid"),
    ("Upsample(2, mode=2)", "mode must be nearest or bilinear, got 2"),
    ("Upsample(2, mode=true)", "mode must be nearest or bilinear, got true"),
    ("Upsample(0)", "factor must be at least 1, got 0"),
])
def test_bad_arguments_are_located_errors(text, message, tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text(f"input 5x5x2\n{text}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    column = text.index("mode=") + 1 if "mode=" in text else 10
    assert f"{bad}:2:{column}: error: Upsample: {message}" in err


def test_an_unknown_mode_word_lists_the_choices():
    """An unbound word given to mode is refused with the choices, at the word."""
    with pytest.raises(CnnDslError) as caught:
        cnndsl.check_text("input 5x5x2\nUpsample(2, mode=bicubic)")
    assert "<string>:2:18: error: Upsample: mode must be nearest or bilinear, got bicubic" \
        in str(caught.value)
    assert "hint: write mode=nearest" in str(caught.value)
    with pytest.raises(CnnDslError) as caught:  # a near miss: the closest choice
        cnndsl.check_text("input 5x5x2\nUpsample(2, mode=bilinar)")
    assert "hint: did you mean 'bilinear'?" in str(caught.value)
    # elsewhere an unbound name stays one
    with pytest.raises(CnnDslError, match="unbound name 'bicubic'"):
        cnndsl.check_text("input 5x5x2\nUpsample(bicubic)")


def test_a_binding_shadows_a_mode_word():
    """`let bilinear = 2` binds: mode=bilinear is then 2, which mode refuses."""
    with pytest.raises(CnnDslError, match="mode must be nearest or bilinear, got 2"):
        cnndsl.check_text("input 5x5x2\nlet bilinear = 2\nUpsample(2, mode=bilinear)")


def test_shape_errors():
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 12\nUpsample(2)")
    assert "needs a spatial input" in caught.value.message
    assert caught.value.hint == "Upsample cannot follow FC, Flatten or a global pool"
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 4x4x2\nUpsample(2x2x2)")
    assert "factor 2x2x2 has 3 axes but the input has 2 spatial axes" in caught.value.message


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
def test_window_extent_is_what_each_output_reads(mode):
    op = OPS["Upsample"]
    for n, factor in [(1, 3), (5, 1), (5, 2), (4, 3), (2, 4)]:
        window = op.window(op.Params(factor=factor, mode=mode), [(n, 1)])
        reads = np.count_nonzero(linear_matrix(n, factor), axis=1).max()
        assert window.extent == ((1,) if mode == "nearest" else (reads,))
        assert window.stride == (Fraction(1, factor),) and window.padding == ((0, 0),)


def central_extent(model, layer):
    """Per spatial axis, how many input pixels the gradient of `layer`'s central unit
    reaches (positive weights and inputs, so nothing cancels); and whether it stays off
    the border (else the field would be cut)."""
    rng = np.random.default_rng(0)
    for array in model.parameters().values():
        array[...] = rng.uniform(0.1, 1.0, size=array.shape)
    x = rng.uniform(0.1, 1.0, size=(1, *model.input_shape))
    shape = model.graph.nodes[layer]["shape"]
    gy = np.zeros((1, *shape))
    gy[(0, *(s // 2 for s in shape[:-1]), 0)] = 1.0
    model.forward(x)
    dx, _ = model.backward(gy)
    touched = np.nonzero(np.abs(dx[0]).sum(axis=-1))
    inside = all(0 < t.min() and t.max() < n - 1 for t, n in zip(touched, x.shape[1:-1]))
    return tuple(int(t.max() - t.min() + 1) for t in touched), inside


@pytest.mark.parametrize("mode,fields", [("nearest", (4, 6)), ("bilinear", (6, 8))])
def test_receptive_fields_and_jumps(mode, fields):
    # conv 3 -> r 3; pool 2 -> r 4, j 2 (AvgPool: MaxPool's gradient skips inputs); upsample: nearest reads 1 input (r 4), linear 2
    # (r 4 + 1 * 2 = 6), and the jump falls back to 1; conv 3 -> r + 2 * 1
    text = (f"input 24x24x1\nConv(1, 3) -> AvgPool(2) -> Upsample(2, mode={mode}) -> "
            "Conv(1, 3)")
    graph = cnndsl.check_text(text)
    assert graph.nodes["upsample1"]["receptive_field"] == (fields[0],) * 2
    assert graph.nodes["upsample1"]["jump"] == (1, 1)
    assert graph.nodes["conv2"]["receptive_field"] == (fields[1],) * 2
    extent, inside = central_extent(Model(graph, dtype=np.float64), "conv2")
    assert inside and extent == graph.nodes["conv2"]["receptive_field"]


def test_check_rf_prints_the_fractional_jump(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("input 8x6x1\nUpsample(2x4) -> Conv(1, 5)\n")
    assert main(["check", "--rf", str(source)]) == 0
    out = capsys.readouterr().out
    # layer, op, shape, RF, padding, jump: 1/2 and 1/4 input pixels between outputs
    assert table_row(out, "upsample1")[3:6] == ["1x1", "0", "1/2x1/4"]
    # five outputs 1/2 (1/4) apart see 1 + 4/2 = 3 (1 + 4/4 = 2) inputs
    assert table_row(out, "conv1")[3] == "3x2"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x4\nConv(6, 3) -> Upsample(2, mode=bilinear) -> "
                      "Upsample(2x3) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">Upsample x2 bilinear<" in svg and ">upsample1<" in svg and "16×16×6" in svg
    assert ">Upsample x2×3 nearest<" in svg and "32×48×6" in svg
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
