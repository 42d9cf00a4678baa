"""Softmax and softmax-cross-entropy kernels: Numba == NumPy reference, gradchecks, PyTorch."""

import numpy as np
import pytest
from gradcheck import numgrad

from cnndsl.kernels import loss as nb
from cnndsl.kernels.reference import loss as ref

IMPLS = [pytest.param(nb, id="numba"), pytest.param(ref, id="reference")]
DTYPES = [np.float32, np.float64]




@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(1, 1), (7, 10), (64, 3), (33, 129)])
def test_softmax_and_cross_entropy_match_reference(n, k, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, k)) * 5).astype(dtype)
    dy = rng.standard_normal((n, k)).astype(dtype)
    labels = rng.integers(0, k, n)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    y = nb.softmax_forward(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref.softmax_forward(x), rtol=tol, atol=tol)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=tol)
    np.testing.assert_allclose(nb.softmax_backward(y, dy), ref.softmax_backward(y, dy),
                               rtol=tol, atol=tol)
    (loss, dx), (lr, dxr) = nb.softmax_cross_entropy(x, labels), ref.softmax_cross_entropy(x, labels)
    assert isinstance(loss, float) and dx.dtype == dtype
    assert loss == pytest.approx(lr, rel=tol, abs=tol)
    np.testing.assert_allclose(dx, dxr, rtol=tol, atol=tol)


def test_stable_for_huge_logits():
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4 + 1]])
    for dtype in DTYPES:
        xd = x.astype(dtype)
        with np.errstate(over="raise", invalid="raise"):
            y = nb.softmax_forward(xd)
            loss, dx = nb.softmax_cross_entropy(xd, np.array([2, 2]))
        assert np.isfinite(y).all() and y[0].tolist() == [1, 0, 0]
        np.testing.assert_allclose(y[1], np.exp([-1, -1, 0]) / (2 * np.exp(-1) + 1), rtol=1e-6)
        # row 0: -log softmax[2] = 2000; row 1: log(2e^-1 + 1)
        assert loss == pytest.approx((2000 + np.log(2 * np.exp(-1) + 1)) / 2, rel=1e-6)
        assert np.isfinite(dx).all()


def test_labels_are_checked_and_any_int_dtype_works():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError):
        nb.softmax_cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError):
        nb.softmax_cross_entropy(x, np.array([0, 1]))
    loss, _ = nb.softmax_cross_entropy(x, np.array([0, 3, 1], np.int32))
    assert loss == pytest.approx(np.log(4))


def test_out_may_alias_the_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    lr, dxr = ref.softmax_cross_entropy(x, labels)
    buf = x.copy()
    loss, dx = nb.softmax_cross_entropy(buf, labels, out=buf)
    assert dx is buf and loss == pytest.approx(lr, rel=1e-6)
    np.testing.assert_allclose(dx, dxr, rtol=1e-5, atol=1e-7)
    buf = x.copy()
    assert nb.softmax_forward(buf, out=buf) is buf
    np.testing.assert_allclose(buf, ref.softmax_forward(x), rtol=1e-6)


# ---------------------------------------------------------------- gradient checks (float64)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_softmax(impl):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 7)) * 3
    w = rng.standard_normal(x.shape)
    y = impl.softmax_forward(x)
    np.testing.assert_allclose(impl.softmax_backward(y, w), numgrad(impl.softmax_forward, x, w),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_cross_entropy(impl):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    _, dx = impl.softmax_cross_entropy(x, labels)
    num = numgrad(lambda t: np.array(impl.softmax_cross_entropy(t, labels)[0]), x, np.ones(()))
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- nojit: small and fast


@pytest.mark.nojit
def test_small_hand_values():
    x = np.array([[0.0, np.log(3.0)], [np.log(2.0), np.log(2.0)]])
    for impl in (nb, ref):
        np.testing.assert_allclose(impl.softmax_forward(x), [[0.25, 0.75], [0.5, 0.5]])
        loss, dx = impl.softmax_cross_entropy(x, np.array([1, 0]))
        assert loss == pytest.approx((np.log(4 / 3) + np.log(2)) / 2)
        np.testing.assert_allclose(dx, [[0.125, -0.125], [-0.25, 0.25]])


@pytest.mark.nojit
def test_small_gradcheck_softmax_cross_entropy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4))
    labels = np.array([3, 0, 1])
    _, dx = nb.softmax_cross_entropy(x, labels)
    num = numgrad(lambda t: np.array(nb.softmax_cross_entropy(t, labels)[0]), x, np.ones(()))
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-9)
    w = rng.standard_normal(x.shape)
    np.testing.assert_allclose(nb.softmax_backward(nb.softmax_forward(x), w),
                               numgrad(nb.softmax_forward, x, w), rtol=1e-6, atol=1e-9)


@pytest.mark.nojit
def test_small_match_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(nb.softmax_forward(x), ref.softmax_forward(x), rtol=1e-6)
    labels = np.array([0, 1, 2, 1])
    np.testing.assert_allclose(nb.softmax_cross_entropy(x, labels)[1],
                               ref.softmax_cross_entropy(x, labels)[1], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- PyTorch


def test_softmax_and_cross_entropy_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((64, 10)) * 4).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    labels = rng.integers(0, 10, 64)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.softmax(xt, dim=1)
    yt.backward(torch.from_numpy(dy))
    y = nb.softmax_forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(nb.softmax_backward(y, dy), xt.grad.numpy(), rtol=1e-4, atol=1e-7)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    lt = F.cross_entropy(xt, torch.from_numpy(labels))
    lt.backward()
    loss, dx = nb.softmax_cross_entropy(x, labels)
    assert loss == pytest.approx(lt.item(), rel=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-7)
