"""BatchNorm kernels: Numba == NumPy reference, gradchecks, PyTorch (incl. running statistics)."""

import numpy as np
import pytest
from gradcheck import numgrad

from cnndsl.kernels import norm as nb
from cnndsl.kernels.reference import norm as ref

IMPLS = [pytest.param(nb, id="numba"), pytest.param(ref, id="reference")]
DTYPES = [np.float32, np.float64]
EPS = 1e-5




def params(rng, c, dtype):
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rmean = rng.standard_normal(c).astype(dtype)
    rvar = (0.5 + rng.random(c)).astype(dtype)
    return gamma, beta, rmean, rvar


def close(a, b, tol):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", [(1, 3), (5, 1), (37, 8), (1000, 17), (4096, 64)])
def test_batchnorm_matches_reference(m, c, dtype):
    rng = np.random.default_rng(0)
    x = (3 + 2 * rng.standard_normal((m, c))).astype(dtype)
    dy = rng.standard_normal((m, c)).astype(dtype)
    gamma, beta, rmean, rvar = params(rng, c, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-11

    out, expect = nb.batchnorm_train_forward(x, gamma, beta, EPS), \
        ref.batchnorm_train_forward(x, gamma, beta, EPS)
    for a, b in zip(out, expect):
        assert a.dtype == dtype
        close(a, b, tol)
    _, mean, _, inv_std = out
    for a, b in zip(nb.batchnorm_backward(x, dy, gamma, mean, inv_std),
                    ref.batchnorm_backward(x, dy, gamma, mean, inv_std)):
        assert a.dtype == dtype
        close(a, b, 10 * tol)
    close(nb.batchnorm_eval_forward(x, gamma, beta, rmean, rvar, EPS),
          ref.batchnorm_eval_forward(x, gamma, beta, rmean, rvar, EPS), tol)
    for a, b in zip(nb.batchnorm_eval_backward(x, dy, gamma, rmean, rvar, EPS),
                    ref.batchnorm_eval_backward(x, dy, gamma, rmean, rvar, EPS)):
        close(a, b, tol)


def test_variance_is_accurate_for_a_large_mean():
    # one pass over shifted data: no E[x²] - E[x]² cancellation for data far from 0
    rng = np.random.default_rng(1)
    x = 1e4 + rng.standard_normal((5000, 4))
    _, mean, var, _ = nb.batchnorm_train_forward(x, np.ones(4), np.zeros(4), EPS)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-9)
    y, *_ = nb.batchnorm_train_forward(x.astype(np.float32), np.ones(4, np.float32),
                                       np.zeros(4, np.float32), EPS)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=2e-3)
    np.testing.assert_allclose(y.std(axis=0), 1, rtol=2e-3)


def test_out_buffers_and_bad_shapes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    g, b, _, _ = params(rng, 6, np.float32)
    expect = ref.batchnorm_train_forward(x, g, b, EPS)[0]
    for impl in (nb, ref):
        buf = np.full(x.shape, np.nan, np.float32)
        assert impl.batchnorm_train_forward(x, g, b, EPS, out=buf)[0] is buf
        close(buf, expect, 1e-5)
    buf = x.copy()                                            # in place
    nb.batchnorm_train_forward(buf, g, b, EPS, out=buf)
    close(buf, expect, 1e-5)
    with pytest.raises(ValueError):
        nb.batchnorm_train_forward(x, g[:5], b, EPS)
    with pytest.raises(ValueError):
        nb.batchnorm_train_forward(x.reshape(-1), g, b, EPS)


# ---------------------------------------------------------------- gradient checks (float64)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_train(impl):
    rng = np.random.default_rng(3)
    x = 2 + rng.standard_normal((7, 3))
    gamma, beta, _, _ = params(rng, 3, np.float64)
    w = rng.standard_normal(x.shape)
    _, mean, _, inv_std = impl.batchnorm_train_forward(x, gamma, beta, EPS)
    dx, dgamma, dbeta = impl.batchnorm_backward(x, w, gamma, mean, inv_std)
    f = impl.batchnorm_train_forward
    np.testing.assert_allclose(dx, numgrad(lambda t: f(t, gamma, beta, EPS)[0], x, w),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numgrad(lambda t: f(x, t, beta, EPS)[0], gamma, w),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbeta, numgrad(lambda t: f(x, gamma, t, EPS)[0], beta, w),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_eval(impl):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 4))
    gamma, beta, rmean, rvar = params(rng, 4, np.float64)
    w = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = impl.batchnorm_eval_backward(x, w, gamma, rmean, rvar, EPS)
    f = impl.batchnorm_eval_forward
    np.testing.assert_allclose(dx, numgrad(lambda t: f(t, gamma, beta, rmean, rvar, EPS), x, w),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        dgamma, numgrad(lambda t: f(x, t, beta, rmean, rvar, EPS), gamma, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        dbeta, numgrad(lambda t: f(x, gamma, t, rmean, rvar, EPS), beta, w), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- nojit: small and fast


@pytest.mark.nojit
def test_small_hand_values():
    x = np.array([[1.0, 10.0], [3.0, 10.0]])                 # column 1 is constant
    for impl in (nb, ref):
        y, mean, var, _ = impl.batchnorm_train_forward(x, np.array([2.0, 1.0]),
                                                       np.array([0.5, 7.0]), 1e-12)
        assert mean.tolist() == [2.0, 10.0] and var.tolist() == [1.0, 0.0]
        np.testing.assert_allclose(y, [[-1.5, 7.0], [2.5, 7.0]], rtol=1e-9)
        y = impl.batchnorm_eval_forward(x, np.array([1.0, 2.0]), np.array([0.0, 1.0]),
                                        np.array([1.0, 9.0]), np.array([4.0, 1.0]), 0.0)
        np.testing.assert_allclose(y, [[0.0, 3.0], [1.0, 3.0]])


@pytest.mark.nojit
def test_small_gradcheck_train():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2))
    gamma, beta, _, _ = params(rng, 2, np.float64)
    w = rng.standard_normal(x.shape)
    _, mean, _, inv_std = nb.batchnorm_train_forward(x, gamma, beta, EPS)
    dx, _, _ = nb.batchnorm_backward(x, w, gamma, mean, inv_std)
    num = numgrad(lambda t: nb.batchnorm_train_forward(t, gamma, beta, EPS)[0], x, w)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)


@pytest.mark.nojit
def test_small_match_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 3)).astype(np.float32)
    dy = rng.standard_normal((9, 3)).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, 3, np.float32)
    for a, b in zip(nb.batchnorm_train_forward(x, gamma, beta, EPS),
                    ref.batchnorm_train_forward(x, gamma, beta, EPS)):
        close(a, b, 1e-5)
    for a, b in zip(nb.batchnorm_eval_backward(x, dy, gamma, rmean, rvar, EPS),
                    ref.batchnorm_eval_backward(x, dy, gamma, rmean, rvar, EPS)):
        close(a, b, 1e-5)


# ---------------------------------------------------------------- PyTorch


def test_train_mode_matches_torch_incl_running_stats():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    n, h, w, c, momentum = 8, 5, 6, 7, 0.1
    x = (1.5 + 2 * rng.standard_normal((n, h, w, c))).astype(np.float32)     # N×H×W×C
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, c, np.float32)

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    gt = torch.from_numpy(gamma.copy()).requires_grad_(True)
    bt = torch.from_numpy(beta.copy()).requires_grad_(True)
    rmt, rvt = torch.from_numpy(rmean.copy()), torch.from_numpy(rvar.copy())
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=momentum, eps=EPS)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))

    x2, dy2 = x.reshape(-1, c), dy.reshape(-1, c)              # channels-last: M×C is a view
    y2, mean, var, inv_std = nb.batchnorm_train_forward(x2, gamma, beta, EPS)
    m = x2.shape[0]
    # the caller's update rule: biased var for normalising, unbiased for the running average
    new_rmean = (1 - momentum) * rmean + momentum * mean
    new_rvar = (1 - momentum) * rvar + momentum * var * m / (m - 1)
    dx2, dgamma, dbeta = nb.batchnorm_backward(x2, dy2, gamma, mean, inv_std)

    def tol(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))

    tol(y2.reshape(x.shape), yt.detach().numpy().transpose(0, 2, 3, 1))
    tol(new_rmean, rmt.numpy())
    tol(new_rvar, rvt.numpy())
    tol(dx2.reshape(x.shape), xt.grad.numpy().transpose(0, 2, 3, 1))
    tol(dgamma, gt.grad.numpy())
    tol(dbeta, bt.grad.numpy())


def test_eval_mode_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    n, d, h, w, c = 2, 3, 4, 5, 6                               # 3-D: N×D×H×W×C
    x = rng.standard_normal((n, d, h, w, c)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta, rmean, rvar = params(rng, c, np.float32)

    xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()).requires_grad_(True)
    gt = torch.from_numpy(gamma.copy()).requires_grad_(True)
    bt = torch.from_numpy(beta.copy()).requires_grad_(True)
    rmt, rvt = torch.from_numpy(rmean.copy()), torch.from_numpy(rvar.copy())
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=False, eps=EPS)
    yt.backward(torch.from_numpy(dy.transpose(0, 4, 1, 2, 3).copy()))

    x2, dy2 = x.reshape(-1, c), dy.reshape(-1, c)
    y2 = nb.batchnorm_eval_forward(x2, gamma, beta, rmean, rvar, EPS)
    dx2, dgamma, dbeta = nb.batchnorm_eval_backward(x2, dy2, gamma, rmean, rvar, EPS)

    def tol(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))

    tol(y2.reshape(x.shape), yt.detach().numpy().transpose(0, 2, 3, 4, 1))
    tol(dx2.reshape(x.shape), xt.grad.numpy().transpose(0, 2, 3, 4, 1))
    tol(dgamma, gt.grad.numpy())
    tol(dbeta, bt.grad.numpy())
    assert np.array_equal(rmt.numpy(), rmean) and np.array_equal(rvt.numpy(), rvar)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", [(1, 3), (37, 8), (1000, 17)])
def test_sums_for_a_batch_cut_into_shards(m, c, dtype):
    """The pieces of a BatchNorm whose batch is cut into shards (cnndsl.parallel): sums per
    shard, added, give the whole batch's statistics and gradients; Numba == NumPy twin."""
    rng = np.random.default_rng(2)
    x = (3 + 2 * rng.standard_normal((m, c))).astype(dtype)
    dy = rng.standard_normal((m, c)).astype(dtype)
    gamma = params(rng, c, dtype)[0]
    tol = 1e-5 if dtype == np.float32 else 1e-11
    shift = rng.standard_normal(c)
    for a, b in zip(nb.batchnorm_sums(x, shift), ref.batchnorm_sums(x, shift)):
        assert a.dtype == np.float64
        close(a, b, tol)
    cut = max(1, m // 3)
    parts = [x[:cut], x[cut:]] if m > 1 else [x]
    total = sum(nb.batchnorm_sums(part, np.zeros(c))[0] for part in parts)
    close(total / m, x.astype(np.float64).mean(axis=0), tol)
    _, mean, _, inv_std = nb.batchnorm_train_forward(x, gamma, np.zeros(c, dtype), EPS)
    for a, b in zip(nb.batchnorm_grad_sums(x, dy, mean), ref.batchnorm_grad_sums(x, dy, mean)):
        close(a, b, 10 * tol)
    sum_dy, sum_dyxc = nb.batchnorm_grad_sums(x, dy, mean)
    whole = nb.batchnorm_backward(x, dy, gamma, mean, inv_std)[0]
    for impl in (nb, ref):
        dx = impl.batchnorm_dx(x, dy, gamma, mean, inv_std, sum_dy, sum_dyxc, m)
        assert dx.dtype == dtype
        close(dx, whole, 10 * tol)
    # a shard's rows of dx, from the whole batch's sums, are the whole dx's rows
    close(nb.batchnorm_dx(x[:cut], dy[:cut], gamma, mean, inv_std, sum_dy, sum_dyxc, m),
          whole[:cut], 10 * tol)
