"""TiledConv(filters, kernel, tiles, stride, pad, bias) (cnndsl/ops/tiled.py): output
position i uses kernel set i mod tiles on each axis. PyTorch has no tiled convolution, so the
forward and every gradient are checked against an explicit loop reference (padding by bounds
checks, one output position and kernel tap at a time), by float64 central differences, and
by the two identities: tiles=1 is Conv (cnndsl's and torch's) and tiles = the output size
is LocalConv. Then the ONNX and PyTorch exports, `cnndsl check`'s row and errors, and a
rendered diagram."""

import itertools
import math
import shutil

import numpy as np
import pytest
from gradcheck import numgrad
from test_export import assert_exports_equal_forward, inputs, run_pytorch

import cnndsl
from cnndsl.cli import main
from cnndsl.errors import CnnDslError, ShapeError
from cnndsl.model import Model
from cnndsl.ops import OPS, Ctx

#: (input (spatial..., C), kernel, tiles, stride, pad): 1-D, 2-D and 3-D, with uneven
#: tiles (not dividing the output), strides and every form of padding
CASES = {
    "1d": ((9, 2), 3, 2, 1, "valid"),
    "1d_same_stride": ((10, 3), 4, 3, 2, "same"),
    "2d": ((7, 6, 2), 3, 2, 1, "valid"),
    "2d_mixed": ((8, 7, 3), (3, 2), (3, 2), (2, 1), "same"),
    "2d_pad": ((5, 5, 2), 3, (1, 4), 1, 1),
    "2d_full": ((4, 3, 1), 2, 2, 1, "full"),
    "3d": ((5, 4, 6, 2), (2, 3, 2), (2, 1, 3), 1, "valid"),
    "3d_same": ((4, 5, 3, 2), 3, (1, 2, 2), (1, 2, 1), "same"),
}
FILTERS = 3


def make(case, bias=True, filters=FILTERS, tiles=None):
    """(op, params, geometry, out shape, param shapes) of a case."""
    shape, kernel, case_tiles, stride, pad = CASES[case]
    op = OPS["TiledConv"]
    p = op.Params(filters=filters, kernel=kernel, tiles=case_tiles if tiles is None else tiles,
                  stride=stride, pad=pad, bias=bias)
    return op, p, op.geometry(p, [shape]), op.shape(p, shape), op.param_shapes(p, shape)


def run(case, x, w, dy=None, bias=True, tiles=None):
    """TiledConv's forward on x (N, *spatial, C) with weights w; with dy, also its
    backward: (y, dx, grads)."""
    op, p, g, _, _ = make(case, bias=bias, tiles=tiles)
    ctx = Ctx(backend="reference")
    y, saved = op.forward(p, g, w, [x], ctx)
    if dy is None:
        return y
    dxs, grads = op.backward(p, g, w, saved, dy, ctx)
    return y, dxs[0], grads


def loop_reference(x, weight, bias, tiles, stride, before, out):
    """Written differently from the op: one output position and one kernel tap at a time,
    zero padding by bounds checks. x (N, *S, C), weight (*tiles, F, C, *k), bias (F,) or
    None; before: zeros before each axis. Returns y and a function dy -> (dx, dw, db)."""
    rank = x.ndim - 2
    kernel = weight.shape[rank + 2:]
    sizes = x.shape[1:-1]

    def taps(position):
        """(kernel set, tap k, input position i) for every tap inside the input."""
        kernel_set = tuple(o % t for o, t in zip(position, tiles))
        for k in itertools.product(*map(range, kernel)):
            i = tuple(o * s + kk - b for o, s, kk, b in zip(position, stride, k, before))
            if all(0 <= ii < n for ii, n in zip(i, sizes)):
                yield kernel_set, k, i

    y = np.zeros((x.shape[0], *out, weight.shape[rank]))
    for position in itertools.product(*map(range, out)):
        for kernel_set, k, i in taps(position):
            # (N, C) @ (C, F): this tap's weights of this position's kernel set
            y[(slice(None), *position)] += x[(slice(None), *i)] @ weight[(*kernel_set, ...,
                                                                          *k)].T
        if bias is not None:
            y[(slice(None), *position)] += bias

    def backward(dy):
        dx, dw = np.zeros_like(x), np.zeros_like(weight)
        for position in itertools.product(*map(range, out)):
            d = dy[(slice(None), *position)]  # (N, F)
            for kernel_set, k, i in taps(position):
                dx[(slice(None), *i)] += d @ weight[(*kernel_set, ..., *k)]
                dw[(*kernel_set, ..., *k)] += d.T @ x[(slice(None), *i)]
        return dx, dw, dy.reshape(-1, dy.shape[-1]).sum(axis=0)

    return y, backward


def weights_for(case, seed, bias=True, tiles=None):
    rng = np.random.default_rng(seed)
    _, _, _, _, shapes = make(case, bias=bias, tiles=tiles)
    return {name: rng.normal(size=shape) for name, shape in shapes.items()}


def geometry_args(case, tiles=None):
    _, _, g, out, shapes = make(case, tiles=tiles)
    rank = len(out) - 1
    return (tuple(shapes["weight"][:rank]), g["stride"][3 - rank:],
            g["pad_before"][3 - rank:], out[:-1])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_the_loop_reference(case, bias):
    rng = np.random.default_rng(0)
    shape = CASES[case][0]
    x = rng.normal(size=(2, *shape))
    w = weights_for(case, 1, bias)
    tiles, stride, before, out = geometry_args(case)
    expected, reference_backward = loop_reference(x, w["weight"], w.get("bias"), tiles, stride,
                                                  before, out)
    dy = rng.normal(size=expected.shape)
    y, dx, grads = run(case, x, w, dy, bias)
    np.testing.assert_allclose(y, expected, atol=1e-12)
    dx_ref, dw_ref, db_ref = reference_backward(dy)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], dw_ref, atol=1e-12)
    if bias:
        np.testing.assert_allclose(grads["bias"], db_ref, atol=1e-12)
    else:
        assert set(grads) == {"weight"}


def test_the_kernel_sets_rotate_across_positions():
    """1-D, 1x1 kernel, 2 sets: even positions are scaled by set 0, odd ones by set 1."""
    op = OPS["TiledConv"]
    p = op.Params(filters=1, kernel=1, tiles=2)
    g = op.geometry(p, [(5, 1)])
    w = {"weight": np.array([10.0, 100.0]).reshape(2, 1, 1, 1), "bias": np.array([0.5])}
    y, _ = op.forward(p, g, w, [np.arange(1.0, 6.0).reshape(1, 5, 1)], Ctx())
    assert y.ravel().tolist() == [10.5, 200.5, 30.5, 400.5, 50.5]


@pytest.mark.parametrize("case", ["1d_same_stride", "2d_mixed", "2d_pad", "3d_same"])
def test_gradcheck_central_differences(case):
    """Input, weight and bias gradients against float64 central differences."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, *CASES[case][0]))
    w = weights_for(case, 3)
    y = run(case, x, w)
    r = rng.normal(size=y.shape)
    _, dx, grads = run(case, x, w, r)
    np.testing.assert_allclose(dx, numgrad(lambda v: run(case, v, w), x.copy(), r), atol=1e-6)
    for name in ("weight", "bias"):
        def with_param(v, name=name):
            return run(case, x, {**w, name: v})
        numeric = numgrad(with_param, w[name].copy(), r)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-6)


def test_no_input_gradient_when_nobody_needs_it():
    op, p, g, _, _ = make("2d")
    x = np.random.default_rng(0).normal(size=(2, *CASES["2d"][0]))
    w = weights_for("2d", 1)
    y, saved = op.forward(p, g, w, [x], Ctx())
    ctx = Ctx(need_dx=False)
    dxs, grads = op.backward(p, g, w, saved, np.ones_like(y), ctx)
    assert dxs == [None] and set(grads) == {"weight", "bias"}


# ---- the two identities ------------------------------------------------------------------
def conv_with(case, x, weight, bias, dy):
    """cnndsl's Conv (numba kernels) with the case's kernel, stride and pad."""
    shape, kernel, _, stride, pad = CASES[case]
    op = OPS["Conv"]
    p = op.Params(filters=FILTERS, kernel=kernel, stride=stride, pad=pad, bias=True)
    g = op.geometry(p, [shape])
    w = {"weight": weight, "bias": bias}
    ctx = Ctx()
    y, saved = op.forward(p, g, w, [x], ctx)
    dxs, grads = op.backward(p, g, w, saved, dy, ctx)
    return y, dxs[0], grads


def torch_conv(case, x, weight, bias, dy):
    """torch's conv{1,2,3}d, padding as resolved by cnndsl (F.pad: last axis first)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    _, _, g, _, _ = make(case)
    rank = x.ndim - 2
    pads = []
    for before, after in zip(reversed(g["pad_before"][3 - rank:]),
                             reversed(g["pad_after"][3 - rank:])):
        pads += [before, after]
    t = torch.from_numpy(x).movedim(-1, 1).requires_grad_(True)
    w_t = torch.from_numpy(weight).requires_grad_(True)
    b_t = torch.from_numpy(bias).requires_grad_(True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    y = conv(F.pad(t, pads), w_t, b_t, stride=g["stride"][3 - rank:])
    y.backward(torch.from_numpy(dy).movedim(-1, 1))
    return (y.movedim(1, -1).detach().numpy(), t.grad.movedim(1, -1).numpy(),
            {"weight": w_t.grad.numpy(), "bias": b_t.grad.numpy()})


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_tile_is_conv(case):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, *CASES[case][0]))
    rank = x.ndim - 2
    w = weights_for(case, 5, tiles=1)
    assert w["weight"].shape[:rank] == (1,) * rank
    conv_weight = w["weight"].reshape(w["weight"].shape[rank:])  # (F, C, *k)
    y = run(case, x, w, tiles=1)
    dy = rng.normal(size=y.shape)
    tiled = run(case, x, w, dy, tiles=1)
    for expected in (conv_with(case, x, conv_weight, w["bias"], dy),
                     torch_conv(case, x, conv_weight, w["bias"], dy)):
        np.testing.assert_allclose(tiled[0], expected[0], atol=1e-10)
        np.testing.assert_allclose(tiled[1], expected[1], atol=1e-10)
        np.testing.assert_allclose(tiled[2]["weight"].reshape(conv_weight.shape),
                                   expected[2]["weight"], atol=1e-10)
        np.testing.assert_allclose(tiled[2]["bias"], expected[2]["bias"], atol=1e-10)


@pytest.mark.parametrize("case", ["1d", "2d", "3d"])
def test_tiles_as_large_as_the_output_is_local_conv(case):
    """Same weight layout (*out, F, C, *k); LocalConv's bias (F, *out) holds the shared bias
    at every position, and its bias gradient summed over positions is TiledConv's."""
    shape, kernel, _, stride, pad = CASES[case]
    assert pad == "valid"  # LocalConv pads nothing
    out = make(case)[3][:-1]
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, *shape))
    w = weights_for(case, 7, tiles=out)
    y = run(case, x, w, tiles=out)
    dy = rng.normal(size=y.shape)
    _, dx, grads = run(case, x, w, dy, tiles=out)

    op = OPS["LocalConv"]
    p = op.Params(filters=FILTERS, kernel=kernel, stride=stride)
    g = op.geometry(p, [shape])
    local_w = {"weight": w["weight"],
               "bias": np.broadcast_to(w["bias"].reshape(-1, *[1] * len(out)),
                                       (FILTERS, *out)).copy()}
    assert {k: v.shape for k, v in local_w.items()} == op.param_shapes(p, shape)
    ctx = Ctx()
    local_y, saved = op.forward(p, g, local_w, [x], ctx)
    local_dxs, local_grads = op.backward(p, g, local_w, saved, dy, ctx)
    np.testing.assert_allclose(y, local_y, atol=1e-10)
    np.testing.assert_allclose(dx, local_dxs[0], atol=1e-10)
    np.testing.assert_allclose(grads["weight"], local_grads["weight"], atol=1e-10)
    np.testing.assert_allclose(grads["bias"],
                               local_grads["bias"].reshape(FILTERS, -1).sum(axis=1), atol=1e-10)


# ---- in a network ------------------------------------------------------------------------
NETWORKS = {"1d": ("12x2", "TiledConv(4, 3, 3, stride=2, pad=same) -> ReLU -> FC(3)"),
            "2d": ("7x6x3", "TiledConv(4, 3x2, (2, 3)) -> ReLU -> TiledConv(2, 2, 2) -> FC(3)"),
            "3d": ("4x5x4x2", "TiledConv(3, 2, (1, 2, 3), pad=same, bias=false) -> FC(2)")}


@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_model_gradients_by_central_differences(case):
    """The whole model in float64: input and every parameter's gradient."""
    shape, body = NETWORKS[case]
    model = Model(cnndsl.check_text(f"input {shape}\n{body}"), seed=0, dtype=np.float64)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, *model.input_shape))
    r = rng.normal(size=model.forward(x).shape)
    model.forward(x, train=True)
    gx, grads = model.backward(r)
    np.testing.assert_allclose(gx, numgrad(lambda v: model.forward(v), x.copy(), r), atol=1e-6)
    for name, array in model.parameters().items():
        def with_param(v, array=array):
            array[...] = v
            return model.forward(x)
        original = array.copy()
        numeric = numgrad(with_param, original.copy(), r)
        array[...] = original
        np.testing.assert_allclose(grads[name], numeric, atol=1e-6, err_msg=name)


def test_init_is_a_conv_of_the_same_kernel():
    """U(±1/sqrt(C·prod(k))) for weight and bias, as PyTorch initialises that Conv."""
    model = cnndsl.compile("input 12x12x5\nTiledConv(64, 3, 4)", seed=0)
    weight, bias = model.parameters()["tiledconv1.weight"], model.parameters()["tiledconv1.bias"]
    assert weight.shape == (4, 4, 64, 5, 3, 3) and bias.shape == (64,)
    bound = 1 / math.sqrt(5 * 9)
    for array in (weight, bias):
        assert array.dtype == np.float32 and np.abs(array).max() <= bound
    assert np.abs(weight).max() > 0.95 * bound  # uniform over the whole range


def test_params_and_macs():
    """Parameters: tiles times a Conv's weights, one bias per filter; MACs as the Conv
    with the same kernel (one kernel set per output position)."""
    tiled = cnndsl.check_text("input 10x10x3\nTiledConv(8, 3, (2, 4), stride=2, pad=same)")
    conv = cnndsl.check_text("input 10x10x3\nConv(8, 3, stride=2, pad=same)")
    t, c = tiled.nodes["tiledconv1"], conv.nodes["conv1"]
    assert t["shape"] == c["shape"] == (5, 5, 8)
    assert t["params_count"] == 2 * 4 * 8 * 3 * 9 + 8
    assert t["macs"] == c["macs"] == 25 * (8 * 3 * 9 + 8)
    assert t["receptive_field"] == c["receptive_field"]


# ---- exports -----------------------------------------------------------------------------
EXPORTED = {
    "1d_same": ("11x2", "TiledConv(4, 4, 3, stride=2, pad=same) -> ReLU -> TiledConv(2, 2, 1)"),
    "2d": ("7x6x3", "TiledConv(4, 3x2, (2, 3)) -> ReLU -> FC(5)"),
    "2d_local": ("6x6x2", "TiledConv(3, 3, 4, bias=false) -> TiledConv(2, 1, 2, pad=1)"),
    "3d": ("5x4x6x2", "TiledConv(3, (2, 3, 2), (2, 1, 3), pad=full) -> ReLU"),
}


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_onnx_and_pytorch_exports_equal_forward(case, tmp_path):
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import load_pytorch_state

    shape, body = EXPORTED[case]
    model = cnndsl.compile(f"network M\ninput {shape}\n{body}", seed=1)
    for name, array in model.parameters().items():  # biases far from 0 show a misplaced one
        if name.endswith(".bias"):
            array[...] = np.random.default_rng(0).uniform(-0.5, 0.5, array.shape)
    assert_exports_equal_forward(model, tmp_path)
    # the state_dict holds the weights in cnndsl's layout and comes back bit for bit
    _, net = run_pytorch(tmp_path / "m.py", inputs(model, 1))
    assert set(net.state_dict()) == set(model.parameters())
    with torch.no_grad():
        for tensor in net.parameters():
            tensor.mul_(2)
    load_pytorch_state(model, net.state_dict())
    x = inputs(model, 2, seed=5)
    with torch.no_grad():
        again = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), again, atol=1e-4)


def test_onnx_graph_costs_one_conv_whatever_the_tiles(tmp_path):
    """One window-gathering Conv and one Einsum, not one Conv per kernel set."""
    onnx = pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx

    model = cnndsl.compile("network M\ninput 6x6x2\nTiledConv(3, 3, 4)", seed=1)
    to_onnx(model, tmp_path / "m.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("Conv") == 1 and ops.count("Einsum") == 1 and "Gather" in ops


# ---- check, errors, diagram --------------------------------------------------------------
def test_check_row(tmp_path, capsys):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x3\nTiledConv(4, 3, 2, pad=same) -> FC(3)\n")
    assert main(["check", str(source)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("tiledconv1"))
    assert "TiledConv(4, 3, tiles=2, pad=same)" in row
    assert "8x8x4" in row and f"{2 * 2 * 4 * 3 * 9 + 4:,}" in row


@pytest.mark.parametrize("program,message,hint", [
    ("input 8x8x3\nTiledConv(4, 3, 7)",
     "tiles 7x7 exceed the output 6x6 (7 > 6 on spatial axis 1)",
     ("use tiles of at most 6x6 (6x6 shares nothing, as LocalConv does), or pad=same for a "
      "larger output")),
    ("input 8x9x3\nTiledConv(4, 3, (2, 8))",
     "tiles 2x8 exceed the output 6x7 (8 > 7 on spatial axis 2)",
     "or pad=same for a larger output"),
    ("input 8x9x3\nTiledConv(4, 3, (2, 6), stride=2, pad=same)",
     "tiles 2x6 exceed the output 4x5 (6 > 5 on spatial axis 2)",
     "use tiles of at most 4x5 (4x5 shares nothing, as LocalConv does)"),  # already same
    ("input 8x8x3\nTiledConv(4, 3, (2, 2, 2))",
     "tiles 2x2x2 has 3 axes but the input has 2 spatial axes", "give one number"),
])
def test_tiles_that_do_not_fit_the_output(program, message, hint):
    with pytest.raises(ShapeError) as caught:
        cnndsl.check_text(program)
    assert message in caught.value.message and hint in caught.value.hint
    assert caught.value.hint.endswith(hint) or "axes" in message
    assert caught.value.span.line == 2


@pytest.mark.parametrize("program,message", [
    ("input 8x8x3\nTiledConv(4, 3, 0)", "tiles must be at least 1, got 0"),
    ("input 8x8x3\nTiledConv(4, 3)", "needs the argument 'tiles'"),
    ("input 8x8x3\nTiledConv(4, 3, 2, dilation=2)", "has no argument 'dilation'"),
    ("input 10\nTiledConv(4, 3, 2)", "flat tensor"),
])
def test_bad_arguments_are_located_errors(program, message, tmp_path, capsys):
    with pytest.raises(CnnDslError, match=message):
        cnndsl.check_text(program)
    source = tmp_path / "bad.cnn"
    source.write_text(program + "\n")
    assert main(["check", str(source)]) == 1
    assert f"{source}:2:" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' is not installed")
def test_a_diagram_renders(tmp_path):
    source = tmp_path / "m.cnn"
    source.write_text("network M\ninput 8x8x3\nTiledConv(6, 3, 2) -> ReLU -> "
                      "TiledConv(4, 3, (2, 3), stride=2, pad=same) -> FC(3)\n")
    out = tmp_path / "m.svg"
    assert main(["render", str(source), "-o", str(out)]) == 0
    svg = out.read_text()
    assert ">TiledConv 6 3×3 tiles=2×2<" in svg and ">tiledconv1<" in svg
    assert ">TiledConv 4 3×3/2 tiles=2×3 pad=same<" in svg and "> 3×3×4 <" in svg
    assert ">M — 2,065 parameters<" in svg  # 4·(6·3·9) + 6, 6·(4·6·9) + 4, 36·3 + 3
    png = tmp_path / "m.png"
    assert main(["render", str(source), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
