"""LRN(size=5, alpha=1e-4, beta=0.75, k=1) (cnndsl/ops/localnorm.py): local response
normalisation across channels, channels-last, on flat, 1-D, 2-D and 3-D inputs. Checked
against PyTorch (F.local_response_norm) and a loop written from Caffe's formula, by float64
central differences, through the ONNX export (its LRN operator for odd sizes, the formula
for even ones) and the PyTorch export, in `cnndsl check`'s table and in a rendered
diagram."""

import shutil

import numpy as np
import pytest
from gradcheck import assert_model_gradients, numgrad
from test_export import assert_exports_equal_forward

import cnndsl
from cnndsl.cli import main
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx

SHAPES = {"flat": (6,), "1d": (5, 6), "2d": (4, 3, 7), "3d": (3, 2, 4, 6)}
#: alpha large enough that the window sum matters as much as k (AlexNet's 1e-4 would make
#: a wrong window invisible at these magnitudes)
STRONG = {"alpha": 0.8, "beta": 0.6, "k": 1.5}


def lrn(x, **arguments):
    """LRN's forward on x (N, *spatial, C), and its backward of dy."""
    op = OPS["LRN"]
    p = op.Params(**arguments)
    ctx = Ctx()
    y, saved = op.forward(p, None, {}, [x], ctx)
    return y, lambda dy: op.backward(p, None, {}, saved, dy, ctx)[0][0]


def torch_lrn(x, size, alpha, beta, k):
    """PyTorch on the channels-first copy of x (a flat input gets a length-1 axis, which
    F.local_response_norm needs); returns (input leaf, output channels-first)."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    spread = t if t.dim() > 2 else t.unsqueeze(-1)
    y = torch.nn.functional.local_response_norm(spread, size, alpha, beta, k)
    return t, y.reshape(t.shape)


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_forward_and_input_gradient_match_pytorch(rank, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, *SHAPES[rank]))
    y, backward = lrn(x, size=size, **STRONG)
    t, expected = torch_lrn(x, size, **STRONG)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), atol=1e-12)
    dy = rng.normal(size=y.shape)
    expected.backward(torch.from_numpy(dy).movedim(-1, 1))
    np.testing.assert_allclose(backward(dy), t.grad.movedim(1, -1).numpy(), atol=1e-12)


def test_bare_lrn_is_alexnet_and_googlenet_caffe_values():
    """bvlc_alexnet / bvlc_googlenet: local_size 5, alpha 1e-4, beta 0.75, k 1."""
    p = OPS["LRN"].Params()
    assert (p.size, p.alpha, p.beta, p.k) == (5, 1e-4, 0.75, 1.0)
    x = np.random.default_rng(0).normal(0, 30, size=(1, 3, 3, 8))  # large, so alpha shows
    _, expected = torch_lrn(x, 5, 1e-4, 0.75, 1.0)
    np.testing.assert_allclose(lrn(x)[0], expected.movedim(1, -1).detach().numpy(),
                               rtol=1e-12)
    assert not np.allclose(lrn(x)[0], x / 2 ** 0.75)  # not the paper's k=2
    assert np.allclose(lrn(x, k=2.0)[0], torch_lrn(x, 5, 1e-4, 0.75, 2.0)[1].movedim(
        1, -1).detach().numpy())


def caffe_loops(x, size, alpha, beta, k):
    """Caffe's across-channels LRN for one position, element by element: the window of
    channel c is [c - size//2, c + (size-1)//2], clipped to the channels."""
    y = np.empty_like(x)
    channels = x.shape[-1]
    for index in np.ndindex(x.shape[:-1]):
        for c in range(channels):
            total = 0.0
            for j in range(c - size // 2, c + (size - 1) // 2 + 1):
                if 0 <= j < channels:
                    total += x[index + (j,)] ** 2
            y[index + (c,)] = x[index + (c,)] / (k + alpha / size * total) ** beta
    return y


@pytest.mark.parametrize("size", [3, 4])
def test_forward_matches_the_formula_written_as_loops(size):
    x = np.random.default_rng(5).normal(size=(2, 3, 7))
    np.testing.assert_allclose(lrn(x, size=size, **STRONG)[0],
                               caffe_loops(x, size, **STRONG), rtol=1e-12)


def test_float32_stays_float32():
    x = np.random.default_rng(6).normal(size=(2, 4, 4, 6)).astype(np.float32)
    y, backward = lrn(x, size=3, **STRONG)
    assert y.dtype == np.float32 and backward(np.ones_like(y)).dtype == np.float32
    np.testing.assert_allclose(y, lrn(x.astype(np.float64), size=3, **STRONG)[0], rtol=1e-6)


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("size", [2, 5])
def test_gradcheck_central_differences(rank, size):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *SHAPES[rank]))
    y, backward = lrn(x, size=size, **STRONG)
    weights = rng.normal(size=y.shape)
    numeric = numgrad(lambda v: lrn(v, size=size, **STRONG)[0], x.copy(), weights)
    np.testing.assert_allclose(backward(weights), numeric, atol=1e-7)


@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_network_gradcheck(rank):
    """In a network, float64: Conv (or FC) -> LRN -> FC, every parameter's and the input's
    gradient against central differences of the model's loss."""
    dims = "x".join(map(str, SHAPES[rank]))
    first = "FC(6)" if rank == "flat" else "Conv(6, 1)"
    model = Model(cnndsl.check_text(f"input {dims}\n{first} -> LRN(3, alpha=0.9) -> FC(3)"),
                  seed=0, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(2, *SHAPES[rank]))
    r = np.random.default_rng(3).normal(size=(2, 3))
    assert_model_gradients(model, x, r)


#: (input, chain, ONNX operators expected: LRN for an odd size, AveragePool for an even one)
EXPORTED = {"2d": ("6x5x4", "Conv(6, 3) -> LRN -> Flatten -> FC(4)", {"LRN"}),
            "2d_even": ("5x5x7", "LRN(4, alpha=0.9, beta=0.6, k=1.5) -> Conv(3, 3)",
                        {"AveragePool"}),
            "1d": ("12x4", "LRN(3, alpha=0.9, k=2) -> Conv(6, 3) -> LRN(2, alpha=0.5)",
                   {"LRN", "AveragePool"}),
            "3d": ("5x6x4x4", "LRN(5, alpha=0.7) -> Conv(6, 3) -> LRN(6, alpha=0.7)",
                   {"LRN", "AveragePool"}),
            "flat": ("3x4x2", "Flatten -> FC(7) -> LRN(3, alpha=0.9) -> FC(3) -> LRN(2, k=2)",
                     {"LRN", "AveragePool"})}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from cnndsl.export.pytorch import module_source

    shape, body, operators = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    assert_exports_equal_forward(model, tmp_path, scale=3.0)  # the window sum matters
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ops & {"LRN", "AveragePool"} == operators
    assert "nn.LocalResponseNorm(" in module_source(model)


def test_check_row_bare_note_and_errors(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x4\nConv(6, 3) -> LRN -> LRN(3, k=2) -> FC(3)\n")
    assert main(["check", str(source)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("lrn")]
    assert [row[:3] for row in rows] == [["lrn1", "LRN", "8x8x6"],
                                         ["lrn2", "LRN(3,", "k=2)"]]
    assert "bare LRN (first: lrn1) means LRN(size=5, alpha=0.0001, beta=0.75, k=1.0)" in out
    for bad, message in (("LRN(0)", "size must be at least 1"),
                         ("LRN(k=0)", "k must be a number in (0.0"),
                         ("LRN(alpha=-1)", "alpha must be a number in [0.0"),
                         ("LRN(3, 0.1, 0.75, 1, 2)", "takes at most 4 argument(s)")):
        source.write_text(f"input 8x8x4\n{bad}\n")
        assert main(["check", str(source)]) == 1
        err = capsys.readouterr().err
        assert f"{source}:2:" in err and message in err, err


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 16x16x3\nConv(8, 3) -> ReLU -> LRN -> MaxPool(2) -> "
                      "Conv(8, 3) -> LRN(k=2) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">LRN<" in svg and ">lrn1<" in svg and ">LRN k=2<" in svg
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
