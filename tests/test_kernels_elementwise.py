"""Elementwise kernels: Numba == NumPy reference, gradchecks, PyTorch, dropout."""

import numpy as np
import pytest
from gradcheck import numgrad

from cnndsl.kernels import elementwise as nb
from cnndsl.kernels.reference import elementwise as ref

IMPLS = [pytest.param(nb, id="numba"), pytest.param(ref, id="reference")]
DTYPES = [np.float32, np.float64]




def away_from_zero(rng, shape, margin=0.05):
    """Random normal values with |x| >= margin (kinks at 0 stay outside the difference step)."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.copysign(margin, x) + x, x)


# (name, forward args after x, backward takes the forward's output y (True) or x (False))
ACTIVATIONS = [("relu", (), True), ("leaky_relu", (0.1,), False),
               ("sigmoid", (), True), ("tanh", (), True)]


def fwd_bwd(impl, name, args, uses_y, x, dy):
    y = getattr(impl, f"{name}_forward")(x, *args)
    dx = getattr(impl, f"{name}_backward")(y if uses_y else x, dy, *args)
    return y, dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,args,uses_y", ACTIVATIONS)
def test_activations_match_reference(name, args, uses_y, dtype):
    rng = np.random.default_rng(0)
    # a multiple-chunk size that is not a multiple of the chunk, values up to ±60 (sigmoid tails)
    x = (rng.standard_normal((3, 5, 7, 11, 13)) * 20).astype(dtype)
    x.reshape(-1)[:4] = [0, -0.0, 60, -60]
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, dx = fwd_bwd(nb, name, args, uses_y, x, dy)
    yr, dxr = fwd_bwd(ref, name, args, uses_y, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dxr, rtol=tol, atol=tol)


def test_sigmoid_is_stable_for_large_inputs():
    x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0])
    for dtype in DTYPES:
        with np.errstate(over="raise"):
            y = nb.sigmoid_forward(x.astype(dtype))
        assert np.all(np.isfinite(y)) and y[0] == 0 and y[-1] == 1 and y[3] == 0.5
        assert 0 < y[2] < 1e-12 and 1 - 1e-12 <= y[4] <= 1


def test_relu_propagates_nan():
    y = nb.relu_forward(np.array([np.nan, -1.0, 2.0]))
    assert np.isnan(y[0]) and y[1:].tolist() == [0.0, 2.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_add_and_bias_relu_match_reference(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 19)).astype(dtype)
    b = rng.standard_normal(19).astype(dtype)
    for name in ("bias_add", "bias_relu_forward"):
        y = getattr(nb, name)(x, b)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, getattr(ref, name)(x, b), rtol=1e-6)
    x4 = rng.standard_normal((2, 3, 4, 19)).astype(dtype)      # any ...×C is viewed as M×C
    np.testing.assert_allclose(nb.bias_relu_forward(x4, b), ref.bias_relu_forward(x4, b),
                               rtol=1e-6)
    with pytest.raises(ValueError):
        nb.bias_add(x, b[:5])


def test_in_place_and_out_buffers():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 6, 3)).astype(np.float32)
    expect = ref.relu_forward(x)
    y = x.copy()
    assert nb.relu_forward(y, out=y) is y
    np.testing.assert_array_equal(y, expect)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = dy.copy()
    assert nb.relu_backward(y, dx, out=dx) is dx
    np.testing.assert_array_equal(dx, ref.relu_backward(y, dy))
    x2 = x.reshape(-1, 3).copy()
    b = np.array([1.0, -1.0, 0.5], np.float32)
    expect = ref.bias_add(x2, b)
    assert nb.bias_add(x2, b, out=x2) is x2
    np.testing.assert_allclose(x2, expect)
    y = x.copy()
    assert nb.sigmoid_forward(y, out=y) is y                         # in place keeps the signs
    np.testing.assert_allclose(y, ref.sigmoid_forward(x), rtol=1e-6)
    for impl in (nb, ref):
        out = np.full(x.shape, np.nan, np.float32)
        assert impl.tanh_forward(x, out=out) is out
        np.testing.assert_allclose(out, np.tanh(x), rtol=1e-6)
    with pytest.raises(ValueError):
        nb.tanh_forward(x, out=np.empty(x.shape))                     # wrong dtype


def test_non_contiguous_input():
    x = np.random.default_rng(3).standard_normal((6, 8))[:, ::2]
    np.testing.assert_array_equal(nb.relu_forward(x), ref.relu_forward(x))


# ---------------------------------------------------------------- gradient checks (float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,args,uses_y", ACTIVATIONS)
def test_gradcheck_activations(impl, name, args, uses_y):
    rng = np.random.default_rng(4)
    x = away_from_zero(rng, (3, 4, 5)) * 2
    w = rng.standard_normal(x.shape)
    _, dx = fwd_bwd(impl, name, args, uses_y, x, w)
    num = numgrad(lambda t: getattr(impl, f"{name}_forward")(t, *args), x, w)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_dropout(impl):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 7))
    _, mask = impl.dropout_forward(x, 0.3, np.random.default_rng(6))
    w = rng.standard_normal(x.shape)
    # with the generator re-seeded every call, the mask is fixed and y is linear in x
    num = numgrad(lambda t: impl.dropout_forward(t, 0.3, np.random.default_rng(6))[0], x, w)
    np.testing.assert_allclose(impl.dropout_backward(w, mask), num, atol=1e-8)


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_reproducible_and_matches_reference(dtype):
    x = np.random.default_rng(7).standard_normal((8, 9, 10)).astype(dtype)
    y1, m1 = nb.dropout_forward(x, 0.25, np.random.default_rng(42))
    y2, m2 = nb.dropout_forward(x, 0.25, np.random.default_rng(42))
    yr, mr = ref.dropout_forward(x, 0.25, np.random.default_rng(42))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, mr)
    np.testing.assert_array_equal(y1, yr)
    assert m1.dtype == dtype and set(np.unique(m1).tolist()) == {0.0, float(dtype(1 / 0.75))}
    _, m3 = nb.dropout_forward(x, 0.25, np.random.default_rng(43))
    assert not np.array_equal(m1, m3)


def test_dropout_mask_mean_is_one_and_rate_is_p():
    x = np.ones((200, 500), np.float32)
    for p in (0.1, 0.5, 0.8):
        y, mask = nb.dropout_forward(x, p, np.random.default_rng(8))
        assert abs(mask.mean() - 1) < 0.02
        assert abs((mask == 0).mean() - p) < 0.01
        np.testing.assert_array_equal(y, mask)
        np.testing.assert_array_equal(nb.dropout_backward(x, mask), mask)


def test_dropout_edge_rates():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    y, mask = nb.dropout_forward(x, 0.0, np.random.default_rng(9))
    np.testing.assert_array_equal(y, x)                  # p = 0: identity
    y, mask = nb.dropout_forward(x, 1.0, np.random.default_rng(9))
    assert not y.any() and not mask.any()                # p = 1: everything dropped
    with pytest.raises(ValueError):
        nb.dropout_forward(x, 1.5, np.random.default_rng(9))


# ---------------------------------------------------------------- nojit: small and fast


@pytest.mark.nojit
def test_small_activations_hand_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    dy = np.ones_like(x)
    for impl in (nb, ref):
        assert impl.relu_forward(x).tolist() == [0, 0, 0, 0.5, 2]
        assert impl.relu_backward(impl.relu_forward(x), dy).tolist() == [0, 0, 0, 1, 1]
        assert impl.leaky_relu_forward(x, 0.1).tolist() == [-0.2, -0.05, 0, 0.5, 2]
        assert impl.leaky_relu_backward(x, dy, 0.1).tolist() == [0.1, 0.1, 0.1, 1, 1]
        np.testing.assert_allclose(impl.sigmoid_forward(x), 1 / (1 + np.exp(-x)), rtol=1e-15)
        np.testing.assert_allclose(impl.tanh_forward(x), np.tanh(x), rtol=1e-15)
        assert impl.bias_relu_forward(x.reshape(5, 1), np.array([1.0])).ravel().tolist() == \
            [0, 0.5, 1, 1.5, 3]


@pytest.mark.nojit
def test_small_gradcheck_sigmoid_and_leaky_relu():
    rng = np.random.default_rng(10)
    x = away_from_zero(rng, (2, 5))
    w = rng.standard_normal(x.shape)
    y = nb.sigmoid_forward(x)
    np.testing.assert_allclose(nb.sigmoid_backward(y, w), numgrad(nb.sigmoid_forward, x, w),
                               rtol=1e-6)
    np.testing.assert_allclose(nb.leaky_relu_backward(x, w, 0.2),
                               numgrad(lambda t: nb.leaky_relu_forward(t, 0.2), x, w), rtol=1e-6)


@pytest.mark.nojit
def test_small_dropout_matches_reference():
    x = np.arange(12.0).reshape(3, 4)
    y, m = nb.dropout_forward(x, 0.5, np.random.default_rng(11))
    yr, mr = ref.dropout_forward(x, 0.5, np.random.default_rng(11))
    np.testing.assert_array_equal(m, mr)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(nb.dropout_backward(x, m), x * m)


# ---------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("name,args,uses_y", ACTIVATIONS)
def test_activations_match_torch(name, args, uses_y):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tfn = {"relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, *args),
           "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((4, 5, 6, 7)) * 4).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tfn(xt)
    yt.backward(torch.from_numpy(dy))
    y = getattr(nb, f"{name}_forward")(x, *args)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-7)
    # backward from torch's own y: near |y| = 1, 1 - y² amplifies a last-bit difference in y
    dx = getattr(nb, f"{name}_backward")(yt.detach().numpy() if uses_y else x, dy, *args)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-7)
