"""Maxout(pieces) (cnndsl/ops/activations.py): output channel j is the max over input channels
[j*pieces, (j+1)*pieces), channels-last, on flat, 1-D, 2-D and 3-D inputs. Checked against
PyTorch (torch.amax over a view of the channels), by float64 central differences, through
the ONNX and PyTorch exports, in `cnndsl check`'s table and in a rendered diagram."""

import shutil

import numpy as np
import pytest
from gradcheck import numgrad
from test_export import assert_exports_equal_forward

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import ShapeError
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx

SHAPES = {"flat": (6,), "1d": (5, 6), "2d": (4, 3, 6), "3d": (3, 2, 4, 6)}


def maxout(pieces, x, backend="numba"):
    """Maxout's forward on x (N, *spatial, C), and its backward of dy."""
    op = OPS["Maxout"]
    p = op.Params(pieces=pieces)
    ctx = Ctx(backend=backend)
    y, saved = op.forward(p, None, {}, [x], ctx)
    return y, lambda dy: op.backward(p, None, {}, saved, dy, ctx)[0][0]


def torch_maxout(x, pieces):
    """PyTorch's reading, restated: channels-first, channel j = amax over [j*p, (j+1)*p)."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    y = t.unflatten(1, (t.shape[1] // pieces, pieces)).amax(dim=2)
    return t, y


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("pieces", [2, 3])
def test_forward_and_input_gradient_match_pytorch(rank, pieces):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *SHAPES[rank]))
    y, backward = maxout(pieces, x)
    assert y.shape == (2, *SHAPES[rank][:-1], 6 // pieces)
    t, expected = torch_maxout(x, pieces)
    np.testing.assert_allclose(y, expected.movedim(1, -1).detach().numpy(), rtol=0, atol=0)
    dy = rng.normal(size=y.shape)
    expected.backward(torch.from_numpy(dy).movedim(-1, 1))
    np.testing.assert_allclose(backward(dy), t.grad.movedim(1, -1).numpy(), atol=1e-12)


def test_groups_are_consecutive_channels():
    x = np.array([[1.0, 5.0, 2.0, 3.0, 0.0, 4.0]])  # groups of 3: (1, 5, 2), (3, 0, 4)
    y, backward = maxout(3, x)
    assert y.tolist() == [[5.0, 4.0]]
    assert backward(np.array([[10.0, 20.0]])).tolist() == [[0, 10.0, 0, 0, 0, 20.0]]
    y, _ = maxout(2, x)  # groups of 2: (1, 5), (2, 3), (0, 4)
    assert y.tolist() == [[5.0, 3.0, 4.0]]


def test_ties_send_the_gradient_to_the_first():
    _, backward = maxout(2, np.array([[7.0, 7.0, -1.0, -1.0]]))
    assert backward(np.array([[1.0, 2.0]])).tolist() == [[1.0, 0.0, 2.0, 0.0]]


@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_gradcheck_central_differences(rank):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *SHAPES[rank]))
    y, backward = maxout(3, x)
    weights = rng.normal(size=y.shape)
    numeric = numgrad(lambda v: maxout(3, v)[0], x.copy(), weights)
    np.testing.assert_allclose(backward(weights), numeric, atol=1e-6)


@pytest.mark.parametrize("rank", sorted(SHAPES))
def test_network_gradients_match_pytorch(rank):
    """In a network (Maxout between weighted layers): the model's gradients, float64,
    against the torch reference graph."""
    torch = pytest.importorskip("torch")
    from torch_reference import to_numpy_channels_last, torch_forward

    dims = "x".join(map(str, SHAPES[rank]))
    text = f"input {dims}\nMaxout(2) -> FC(4) -> Maxout(2)"
    if rank != "flat":
        text = f"input {dims}\nConv(4, 3) -> Maxout(2) -> Maxout(2) -> FC(3)"
    model = Model(cnndsl.check_text(text), seed=0, dtype=np.float64)
    x = np.random.default_rng(2).normal(size=(3, *SHAPES[rank]))
    y = model.forward(x, train=True)
    r = np.random.default_rng(3).normal(size=y.shape)
    gx, grads = model.backward(r)
    out, x_t, leaves = torch_forward(model, x)
    np.testing.assert_allclose(y, to_numpy_channels_last(out), atol=1e-10)
    out.backward(torch.from_numpy(r))
    np.testing.assert_allclose(gx, x_t.grad.movedim(1, -1).numpy(), atol=1e-10)
    for name, leaf in leaves.items():
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), atol=1e-10)


EXPORTED = {"2d": ("6x5x4", "Conv(6, 3) -> Maxout(3) -> Flatten -> FC(4) -> Maxout(2)"),
            "1d": ("12x4", "Maxout(2) -> Conv(6, 3) -> Maxout(3)"),
            "3d": ("5x6x4x4", "Maxout(2) -> Conv(6, 3) -> Maxout(3)")}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from cnndsl.export.pytorch import module_source

    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    assert_exports_equal_forward(model, tmp_path)
    assert ".amax(dim=2)" in module_source(model)


def test_check_row_and_indivisible_channels(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x4\nConv(6, 3) -> Maxout(2) -> FC(3)\n")
    assert main(["check", str(source)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("maxout1"))
    assert row.split()[1:3] == ["Maxout(2)", "8x8x3"]
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text("input 8x8x6\nMaxout(4)")
    assert "pieces=4 does not divide the input channels (6)" in caught.value.message
    bad = tmp_path / "bad.cnn"
    bad.write_text("input 5x5\nMaxout(2)\n")
    assert main(["check", str(bad)]) == 1
    assert f"{bad}:2:1: error:" in capsys.readouterr().err


def test_maxout_needs_its_pieces():
    with pytest.raises(cnndsl.errors.CnnDslError, match="pieces"):
        cnndsl.check_text("input 8x8x6\nMaxout")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x4\nConv(6, 3) -> Maxout(2) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">Maxout 2<" in svg and ">maxout1<" in svg and "8×8×3" in svg  # its output edge
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
