"""AdaptiveAvgPool(size) (cnndsl/ops/resample.py): PyTorch's adaptive average pooling to a
given output size, channels-last, on 1-D, 2-D and 3-D inputs, including sizes that do not
divide the input and sizes larger than it. Checked against PyTorch
(adaptive_avg_pool1d/2d/3d) and a loop over the bins, by float64 central differences,
through the ONNX (MatMul by averaging matrices, or AveragePool; run by ONNX Runtime) and
PyTorch exports, in `cnndsl check`'s table (rows, receptive fields, errors) and in a
rendered diagram."""

import itertools
import shutil

import numpy as np
import pytest
from gradcheck import assert_model_gradients, numgrad
from test_export import assert_exports_equal_forward
from test_upsample import central_extent, table_row

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx
from cnndsl.ops.resample import adaptive_bins

# (input spatial sizes, output size): divisible, 7 -> 3 and 5 -> 3 (overlapping bins),
# 2 -> 5 and 3 -> 4 (more cells than inputs), 1 (a global pool that keeps its axes)
CASES = {
    "1d_7_to_3": ((7,), 3), "1d_5_to_3": ((5,), 3), "1d_2_to_5": ((2,), 5),
    "1d_6_to_3": ((6,), 3),
    "2d_7x5_to_3": ((7, 5), 3), "2d_6x3_to_3x4": ((6, 3), (3, 4)), "2d_4x4_to_1": ((4, 4), 1),
    "3d_5x7x3_to_3x3x4": ((5, 7, 3), (3, 3, 4)), "3d_4x4x2_to_2": ((4, 4, 2), 2),
}


def pool(size, x):
    """AdaptiveAvgPool's forward on x (N, *spatial, C), and its backward of dy."""
    op = OPS["AdaptiveAvgPool"]
    p = op.Params(size=size)
    ctx = Ctx()
    y, saved = op.forward(p, None, {}, [x], ctx)
    return y, lambda dy: op.backward(p, None, {}, saved, dy, ctx)[0][0]


def loop_pool(size, x):
    """The definition, written as loops: every output cell averages its box of bins."""
    sizes = x.shape[1:-1]
    outs = size if isinstance(size, tuple) else (size,) * len(sizes)
    bins = [adaptive_bins(n, out) for n, out in zip(sizes, outs)]
    y = np.zeros((x.shape[0], *outs, x.shape[-1]))
    for cell in itertools.product(*(range(out) for out in outs)):
        box = tuple(slice(*axis_bins[i]) for axis_bins, i in zip(bins, cell))
        y[(slice(None), *cell)] = x[(slice(None), *box)].mean(axis=tuple(range(1, len(cell) + 1)))
    return y


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_input_gradient_match_pytorch(case):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    sizes, size = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *sizes, 3))
    y, backward = pool(size, x)
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    torch_pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
    expected = torch_pool[len(sizes) - 1](t, size)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(y, loop_pool(size, x), atol=1e-12)
    dy = rng.normal(size=y.shape)
    expected.backward(torch.from_numpy(dy).movedim(-1, 1))
    np.testing.assert_allclose(backward(dy), t.grad.movedim(1, -1).numpy(), atol=1e-12)


def test_bins_by_hand():
    assert adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]  # overlapping by one
    assert adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert adaptive_bins(2, 5) == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]
    assert adaptive_bins(6, 3) == [(0, 2), (2, 4), (4, 6)]  # AvgPool(2)
    y, backward = pool(3, np.arange(7.0).reshape(1, 7, 1))
    assert y[0, :, 0].tolist() == [1.0, 3.0, 5.0]
    # input 2 and 4 sit in two bins of 3: they get a third from each
    assert backward(np.ones((1, 3, 1)))[0, :, 0].tolist() == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3])


@pytest.mark.parametrize("case", ["1d_5_to_3", "1d_2_to_5", "2d_7x5_to_3",
                                  "3d_5x7x3_to_3x3x4"])
def test_gradcheck_central_differences(case):
    sizes, size = CASES[case]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *sizes, 2))
    y, backward = pool(size, x)
    weights = rng.normal(size=y.shape)
    numeric = numgrad(lambda v: pool(size, v)[0], x.copy(), weights)
    np.testing.assert_allclose(backward(weights), numeric, atol=1e-6)


def test_the_model_runs_it_between_weighted_layers():
    model = Model(cnndsl.check_text("input 9x7x2\nConv(3, 3) -> AdaptiveAvgPool(4x3) -> "
                                    "Conv(2, 3) -> FC(3)"), seed=0, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(2, 9, 7, 2))
    r = np.random.default_rng(3).normal(size=(2, 3))
    assert_model_gradients(model, x, r, atol=1e-6)  # input and every parameter


# (input, body, whether every size divides: AveragePool, else MatMuls)
EXPORTED = {
    "1d_uneven": ("7x3", "AdaptiveAvgPool(3) -> Conv(4, 3)", False),
    "1d_more_cells": ("3x2", "AdaptiveAvgPool(5) -> Conv(2, 3)", False),
    "2d_uneven": ("7x5x2", "Conv(3, 3) -> AdaptiveAvgPool(3x4) -> FC(4)", False),
    "2d_even": ("6x4x2", "Conv(3, 3) -> AdaptiveAvgPool(3x2)", True),
    "3d_uneven": ("5x7x3x2", "Conv(2, 3) -> AdaptiveAvgPool((3, 3, 4))", False),
    "3d_even": ("4x4x2x2", "AdaptiveAvgPool(2) -> Conv(2, 1)", True),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    import onnx

    from cnndsl.export.pytorch import module_source

    shape, body, even = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    assert_exports_equal_forward(model, tmp_path)
    kinds = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    rank = len(model.input_shape) - 1
    assert kinds.count("MatMul") == (0 if even else rank)
    assert ("AveragePool" in kinds) == even
    assert f"nn.AdaptiveAvgPool{rank}d(" in module_source(model)


def test_check_rows(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 7x5x4\nAdaptiveAvgPool(3) -> AdaptiveAvgPool(2x6) -> "
                      "FC(3)\n")
    assert main(["check", str(source)]) == 0
    out = capsys.readouterr().out
    assert table_row(out, "adaptiveavgpool1")[1:3] == ["AdaptiveAvgPool(3)", "3x3x4"]
    assert table_row(out, "adaptiveavgpool2")[1:3] == ["AdaptiveAvgPool(2x6)", "2x6x4"]


def test_argument_and_shape_errors(tmp_path, capsys):
    with pytest.raises(CnnDslError, match="needs the argument 'size'"):
        cnndsl.check_text("input 8x8x2\nAdaptiveAvgPool")
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 8x8x2\nFlatten -> AdaptiveAvgPool(2)")
    assert "needs a spatial input" in caught.value.message
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 8x8x2\nAdaptiveAvgPool(2x2x2)")
    assert "size 2x2x2 has 3 axes but the input has 2 spatial axes" in caught.value.message
    bad = tmp_path / "bad.cnn"
    bad.write_text("input 5x5x2\nAdaptiveAvgPool(0)\n")
    assert main(["check", str(bad)]) == 1
    assert f"{bad}:2:17: error: AdaptiveAvgPool: size must be at least 1, got 0" in \
        capsys.readouterr().err


def window(sizes, size):
    p = OPS["AdaptiveAvgPool"].Params(size=size)
    w = OPS["AdaptiveAvgPool"].window(p, [(*sizes, 1)])
    return w.extent, w.stride


def test_window_is_avgpool_where_sizes_divide_and_an_upper_bound_elsewhere():
    assert window((21, 8), (7, 2)) == ((3, 4), (3, 4))  # AvgPool(3) and AvgPool(4)
    assert window((3,), 6) == ((1,), (0.5,))  # nearest upsampling by 2
    assert window((7,), 3) == ((3,), (2,))  # [0, 3) [2, 5) [4, 7)
    assert window((5,), 3) == ((3,), (2,))  # [0, 2) [1, 4) [3, 5): steps of 1 and 2
    for n, out in itertools.product(range(1, 25), range(1, 25)):
        (extent,), (stride,) = window((n,), out)
        bins = adaptive_bins(n, out)
        assert extent == max(end - start for start, end in bins)  # the closed form
        if out > 1 and out % n:  # else the stride is n / out
            assert stride == max(b[0] - a[0] for a, b in itertools.pairwise(bins))
        if out % n == 0:  # nearest upsampling: Upsample's window (a fractional stride)
            upsample = OPS["Upsample"]
            expected = upsample.window(upsample.Params(factor=out // n), [(n, 1)])
            assert (extent, stride) == (expected.extent[0], expected.stride[0])
            continue
        for k in range(1, out + 1):  # any k neighbouring cells read at most the bound
            spans = [bins[i + k - 1][1] - bins[i][0] for i in range(out - k + 1)]
            assert max(spans) <= extent + (k - 1) * stride
            if n % out == 0:
                assert max(spans) == extent + (k - 1) * stride


def test_a_huge_output_checks_without_listing_its_bins():
    # 6 * 10^9 elements is under the 2^40 limit: the window is found in closed form
    graph = cnndsl.check_text("input 7x3\nAdaptiveAvgPool(2000000000)")
    assert graph.nodes["adaptiveavgpool1"]["receptive_field"] == (2,)  # bins of 1 or 2


@pytest.mark.parametrize("text,field", [
    # conv 3 (r 3); 21 -> 7 is AvgPool(3): r 3 + 2 = 5, j 3; conv 3: 5 + 2 * 3 = 11
    ("input 21x21x1\nConv(1, 3) -> AdaptiveAvgPool(7) -> Conv(1, 3)", 11),
    # 16 -> 5: bins of 4 starting 0 3 6 9 12: r 3 + 3 = 6, j 3; conv 3: 6 + 2 * 3
    ("input 16x16x1\nConv(1, 3) -> AdaptiveAvgPool(5) -> Conv(1, 3)", 12),
])
def test_receptive_fields(text, field):
    graph = cnndsl.check_text(text)
    assert graph.nodes["conv2"]["receptive_field"] == (field, field)
    extent, inside = central_extent(Model(graph, dtype=np.float64), "conv2")
    assert inside and extent == (field, field)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 9x9x4\nConv(6, 3) -> AdaptiveAvgPool(4) -> "
                      "AdaptiveAvgPool(2x3) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">AdaptiveAvgPool 4×4<" in svg and ">adaptiveavgpool1<" in svg and "4×4×6" in svg
    assert ">AdaptiveAvgPool 2×3<" in svg and "2×3×6" in svg
    assert '#d9ead3' in svg  # the pooling family's green
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
