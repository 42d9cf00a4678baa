"""Pooling kernels: Numba == NumPy reference, gradchecks, PyTorch, the lecture's worked examples."""

import numpy as np
import pytest
from gradcheck import numgrad

from cnndsl.kernels import as5d, from5d
from cnndsl.kernels import pool as nb
from cnndsl.kernels.reference import pool as ref

IMPLS = [pytest.param(nb, id="numba"), pytest.param(ref, id="reference")]




def case(rank, seed):
    """A random pooling geometry of `rank` spatial axes (leading axes 1): odd sizes, window 1-3,
    stride 1-3, independent before/after padding up to window // 2 (so windows touch data)."""
    rng = np.random.default_rng(seed)
    k = [1, 1, 1]
    s = [1, 1, 1]
    p0 = [0, 0, 0]
    p1 = [0, 0, 0]
    size = [1, 1, 1]
    for ax in range(3 - rank, 3):
        k[ax] = int(rng.integers(1, 4))
        s[ax] = int(rng.integers(1, 4))
        p0[ax] = int(rng.integers(0, k[ax] // 2 + 1))
        p1[ax] = int(rng.integers(0, k[ax] // 2 + 1))
        size[ax] = int(rng.integers(k[ax], k[ax] + 6))
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    return (n, *size, c), tuple(k), tuple(s), tuple(p0), tuple(p1)


GEOMS = [(rank, seed) for rank in (1, 2, 3) for seed in range(8)]


def close(a, b, rtol):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank,seed", GEOMS)
def test_windowed_pools_match_reference(rank, seed, dtype):
    shape, k, s, p0, p1 = case(rank, seed)
    rng = np.random.default_rng(100 + seed)
    x = rng.standard_normal(shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12

    y, am = nb.maxpool_forward(x, k, s, p0, p1)
    yr, amr = ref.maxpool_forward(x, k, s, p0, p1)
    assert y.dtype == dtype and am.dtype == np.int32 and y.shape == yr.shape
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(am, amr)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(nb.maxpool_backward(dy, am, x.shape), ref.maxpool_backward(dy, amr, x.shape), tol)

    for name in ("avgpool", "l2pool"):
        y = getattr(nb, f"{name}_forward")(x, k, s, p0, p1)
        yr = getattr(ref, f"{name}_forward")(x, k, s, p0, p1)
        assert y.dtype == dtype
        close(y, yr, tol)
    close(nb.avgpool_backward(dy, x.shape, k, s, p0, p1),
          ref.avgpool_backward(dy, x.shape, k, s, p0, p1), tol)
    y = nb.l2pool_forward(x, k, s, p0, p1)
    close(nb.l2pool_backward(x, y, dy, k, s, p0, p1),
          ref.l2pool_backward(x, y, dy, k, s, p0, p1), tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_pools_match_reference(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 5, 3, 7)).astype(dtype)
    dy = rng.standard_normal((3, 7)).astype(dtype)
    close(nb.global_avgpool_forward(x), ref.global_avgpool_forward(x), 1e-6)
    close(nb.global_avgpool_backward(dy, x.shape), ref.global_avgpool_backward(dy, x.shape), 1e-6)
    (y, am), (yr, amr) = nb.global_maxpool_forward(x), ref.global_maxpool_forward(x)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(am, amr)
    np.testing.assert_array_equal(nb.global_maxpool_backward(dy, am, x.shape),
                                  ref.global_maxpool_backward(dy, amr, x.shape))


def test_ties_go_to_the_first_in_window_order():
    # few distinct values: many ties, overlapping windows, padding on both sides
    x = np.random.default_rng(2).integers(0, 3, (2, 3, 6, 7, 3)).astype(np.float32)
    args = (3, 3, 3), (1, 2, 2), (1, 1, 0), (1, 0, 1)
    (y, am), (yr, amr) = nb.maxpool_forward(x, *args), ref.maxpool_forward(x, *args)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(am, amr)
    (g, gam), (gr, gamr) = nb.global_maxpool_forward(x), ref.global_maxpool_forward(x)
    np.testing.assert_array_equal(g, gr)
    np.testing.assert_array_equal(gam, gamr)


def test_padding_never_wins_and_nan_propagates():
    x = -np.arange(1.0, 5.0).reshape(1, 1, 2, 2, 1)            # all negative
    y, am = nb.maxpool_forward(x, (1, 2, 2), (1, 1, 1), (0, 1, 1), (0, 1, 1))
    assert y[0, 0, :, :, 0].tolist() == [[-1, -1, -2], [-1, -1, -2], [-3, -3, -4]]
    assert am[0, 0, :, :, 0].tolist() == [[0, 0, 1], [0, 0, 1], [2, 2, 3]]
    x = np.array([1.0, np.nan, 3.0, 2.0]).reshape(1, 1, 1, 4, 1)
    for impl in (nb, ref):
        y, am = impl.maxpool_forward(x, (1, 1, 2), (1, 1, 1), (0, 0, 0), (0, 0, 0))
        assert np.isnan(y[0, 0, 0, :2, 0]).all() and y[0, 0, 0, 2, 0] == 3
        assert am.reshape(-1).tolist() == [1, 1, 2]


def test_out_buffers_are_filled_and_returned():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 5, 5, 3)).astype(np.float32)
    g = (1, 2, 2), (1, 2, 2), (0, 1, 1), (0, 0, 0)
    for impl in (nb, ref):
        y = np.full((2, 1, 3, 3, 3), np.nan, np.float32)
        am = np.full(y.shape, 7, np.int32)
        y2, am2 = impl.maxpool_forward(x, *g, out=(y, am))
        assert y2 is y and am2 is am
        np.testing.assert_array_equal(y, ref.maxpool_forward(x, *g)[0])
        dx = np.full(x.shape, np.nan, np.float32)
        assert impl.maxpool_backward(y, am, x.shape, out=dx) is dx
        np.testing.assert_array_equal(dx, ref.maxpool_backward(y, am, x.shape))
        dx[:] = np.nan
        assert impl.avgpool_backward(y, x.shape, *g, out=dx) is dx
        close(dx, ref.avgpool_backward(y, x.shape, *g), 1e-6)
    with pytest.raises(ValueError):
        nb.avgpool_forward(x, *g, out=np.empty((2, 1, 3, 3, 3)))          # float64 for float32


def test_bad_geometry_raises():
    x = np.zeros((1, 1, 2, 2, 1))
    with pytest.raises(ValueError):
        nb.maxpool_forward(x, (1, 3, 3), (1, 1, 1), (0, 0, 0), (0, 0, 0))
    with pytest.raises(ValueError):
        nb.avgpool_forward(x[0], (1, 1, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0))


# ---------------------------------------------------------------- gradient checks (float64)

GRAD_GEOM = (2, 1, 5, 4, 2), (1, 3, 2), (1, 2, 1), (0, 1, 1), (0, 1, 0)   # overlap, pads


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_maxpool(impl):
    shape, *g = GRAD_GEOM
    rng = np.random.default_rng(4)
    x = (rng.permutation(int(np.prod(shape))) * 0.01).reshape(shape)    # no ties
    y, am = impl.maxpool_forward(x, *g)
    w = rng.standard_normal(y.shape)
    num = numgrad(lambda t: impl.maxpool_forward(t, *g)[0], x, w)
    np.testing.assert_allclose(impl.maxpool_backward(w, am, x.shape), num, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_avgpool_and_l2pool(impl):
    shape, *g = GRAD_GEOM
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(impl.avgpool_forward(x, *g).shape)
    num = numgrad(lambda t: impl.avgpool_forward(t, *g), x, w)
    np.testing.assert_allclose(impl.avgpool_backward(w, x.shape, *g), num, atol=1e-7)
    y = impl.l2pool_forward(x, *g)
    num = numgrad(lambda t: impl.l2pool_forward(t, *g), x, w)
    np.testing.assert_allclose(impl.l2pool_backward(x, y, w, *g), num, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_global_pools(impl):
    rng = np.random.default_rng(6)
    x = (rng.permutation(2 * 2 * 3 * 3 * 2) * 0.01).reshape(2, 2, 3, 3, 2)
    w = rng.standard_normal((2, 2))
    num = numgrad(impl.global_avgpool_forward, x, w)
    np.testing.assert_allclose(impl.global_avgpool_backward(w, x.shape), num, atol=1e-7)
    _, am = impl.global_maxpool_forward(x)
    num = numgrad(lambda t: impl.global_maxpool_forward(t)[0], x, w)
    np.testing.assert_allclose(impl.global_maxpool_backward(w, am, x.shape), num, atol=1e-7)


def test_l2pool_gradient_is_zero_for_an_all_zero_window():
    x = np.zeros((1, 1, 2, 4, 1))
    x[0, 0, :, 2:, 0] = [[3.0, 4.0], [0.0, 0.0]]
    g = (1, 2, 2), (1, 2, 2), (0, 0, 0), (0, 0, 0)
    for impl in (nb, ref):
        y = impl.l2pool_forward(x, *g)
        assert y.reshape(-1).tolist() == [0.0, 5.0]
        dx = impl.l2pool_backward(x, y, np.ones_like(y), *g)
        np.testing.assert_allclose(dx.reshape(2, 4), [[0, 0, 0.6, 0.8], [0, 0, 0, 0]])


# ---------------------------------------------------------------- nojit: small and fast


@pytest.mark.nojit
def test_lecture_2x2_max_pooling():
    # 4×4 image, 2×2 windows, stride 2: each output is the largest of its quarter
    img = np.array([[1, 1, 2, 4],
                    [5, 6, 7, 8],
                    [3, 2, 1, 0],
                    [1, 2, 3, 4]], dtype=np.float32)
    x = img.reshape(1, 1, 4, 4, 1)
    for impl in (nb, ref):
        y, am = impl.maxpool_forward(x, (1, 2, 2), (1, 2, 2), (0, 0, 0), (0, 0, 0))
        assert y[0, 0, :, :, 0].tolist() == [[6, 8], [3, 4]]
        assert am[0, 0, :, :, 0].tolist() == [[5, 7], [8, 15]]      # flat index h·W + w
        dx = impl.maxpool_backward(np.ones_like(y), am, x.shape)
        assert dx[0, 0, :, :, 0].tolist() == [[0, 0, 0, 0], [0, 1, 0, 1],
                                              [1, 0, 0, 0], [0, 0, 0, 1]]


@pytest.mark.nojit
def test_lecture_3x3_max_pooling():
    img = np.array([[1, 3, 2, 9, 0],
                    [4, 6, 5, 1, 2],
                    [7, 0, 8, 3, 1],
                    [2, 5, 1, 4, 6],
                    [0, 3, 7, 2, 5]], dtype=np.float64)
    x = img.reshape(1, 1, 5, 5, 1)
    for impl in (nb, ref):
        # stride 1: nine overlapping windows; the 8 in the centre wins all but two
        y, am = impl.maxpool_forward(x, (1, 3, 3), (1, 1, 1), (0, 0, 0), (0, 0, 0))
        assert y[0, 0, :, :, 0].tolist() == [[8, 9, 9], [8, 8, 8], [8, 8, 8]]
        dx = impl.maxpool_backward(np.ones_like(y), am, x.shape)[0, 0, :, :, 0]
        assert dx[2, 2] == 7 and dx[0, 3] == 2 and dx.sum() == 9
        # stride 2 on 5×5: windows at rows/cols 0 and 2
        y, _ = impl.maxpool_forward(x, (1, 3, 3), (1, 2, 2), (0, 0, 0), (0, 0, 0))
        assert y[0, 0, :, :, 0].tolist() == [[8, 9], [8, 8]]
        # 3×3, stride 1, pad 1 ("same"): each output is the max of its 3×3 neighbourhood
        y, _ = impl.maxpool_forward(x, (1, 3, 3), (1, 1, 1), (0, 1, 1), (0, 1, 1))
        assert y[0, 0, 0, :, 0].tolist() == [6, 6, 9, 9, 9]
        assert y[0, 0, 4, :, 0].tolist() == [5, 7, 7, 7, 6]


@pytest.mark.nojit
def test_small_pools_match_reference():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 1, 3, 4, 2))
    g = (1, 2, 3), (1, 1, 2), (0, 1, 1), (0, 0, 1)
    dy = rng.standard_normal(ref.avgpool_forward(x, *g).shape)
    close(nb.avgpool_forward(x, *g), ref.avgpool_forward(x, *g), 1e-12)
    close(nb.avgpool_backward(dy, x.shape, *g), ref.avgpool_backward(dy, x.shape, *g), 1e-12)
    y = nb.l2pool_forward(x, *g)
    close(y, ref.l2pool_forward(x, *g), 1e-12)
    close(nb.l2pool_backward(x, y, dy, *g), ref.l2pool_backward(x, y, dy, *g), 1e-12)
    close(nb.global_avgpool_forward(x), ref.global_avgpool_forward(x), 1e-12)
    np.testing.assert_array_equal(nb.global_maxpool_forward(x)[1],
                                  ref.global_maxpool_forward(x)[1])


@pytest.mark.nojit
def test_small_gradcheck_maxpool_and_avgpool():
    rng = np.random.default_rng(8)
    x = (rng.permutation(3 * 3 * 2) * 0.1).reshape(1, 1, 3, 3, 2) - 1.0
    g = (1, 2, 2), (1, 1, 1), (0, 1, 0), (0, 0, 1)
    y, am = nb.maxpool_forward(x, *g)
    w = rng.standard_normal(y.shape)
    num = numgrad(lambda t: nb.maxpool_forward(t, *g)[0], x, w)
    np.testing.assert_allclose(nb.maxpool_backward(w, am, x.shape), num, atol=1e-7)
    num = numgrad(lambda t: nb.avgpool_forward(t, *g), x, w)
    np.testing.assert_allclose(nb.avgpool_backward(w, x.shape, *g), num, atol=1e-7)


# ---------------------------------------------------------------- PyTorch


def to_torch(torch, x, rank):
    """N×D×H×W×C -> a torch N×C×(spatial) tensor that requires grad."""
    t = np.ascontiguousarray(np.moveaxis(from5d(x, rank), -1, 1))
    return torch.from_numpy(t).requires_grad_(True)


def from_torch(t, rank):
    return as5d(np.ascontiguousarray(np.moveaxis(t.detach().numpy(), 1, -1)))


TORCH_CASES = [  # rank, spatial size, kernel, stride, symmetric pad
    (1, (11,), 3, 2, 1), (1, (8,), 2, 2, 0),
    (2, (9, 8), 3, 2, 1), (2, (7, 10), (2, 3), (1, 2), (1, 1)), (2, (12, 12), 2, 2, 0),
    (3, (5, 6, 7), 3, 2, 1), (3, (4, 5, 6), (2, 3, 2), (2, 1, 2), (0, 1, 1)),
]


def _triple(v, rank, fill=1):
    v = (v,) * rank if isinstance(v, int) else tuple(v)
    return (fill,) * (3 - rank) + v


def _torch_close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("rank,size,k,s,p", TORCH_CASES)
def test_max_and_avg_pool_match_torch(rank, size, k, s, p):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    x = as5d(rng.standard_normal((3, *size, 4)).astype(np.float32))
    kk, ss, pp = _triple(k, rank), _triple(s, rank), _triple(p, rank, 0)
    tmax = getattr(F, f"max_pool{rank}d")
    tavg = getattr(F, f"avg_pool{rank}d")

    xt = to_torch(torch, x, rank)
    yt, it = tmax(xt, k, s, p, return_indices=True)
    y, am = nb.maxpool_forward(x, kk, ss, pp, pp)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(to_torch(torch, dy, rank))
    np.testing.assert_array_equal(y, from_torch(yt, rank))
    np.testing.assert_array_equal(am, from_torch(it, rank))
    _torch_close(nb.maxpool_backward(dy, am, x.shape), from_torch(xt.grad, rank))

    xt = to_torch(torch, x, rank)
    yt = tavg(xt, k, s, p)                                   # count_include_pad=True
    yt.backward(to_torch(torch, dy, rank))
    _torch_close(nb.avgpool_forward(x, kk, ss, pp, pp), from_torch(yt, rank))
    _torch_close(nb.avgpool_backward(dy, x.shape, kk, ss, pp, pp), from_torch(xt.grad, rank))


@pytest.mark.parametrize("rank,size,k,s", [(1, (11,), 3, 2), (2, (9, 8), 3, 2),
                                           (2, (8, 7), (2, 3), (2, 1)), (3, (4, 5, 6), 2, 2)])
def test_l2pool_matches_torch_lppool(rank, size, k, s):
    torch = pytest.importorskip("torch")
    lp = getattr(torch.nn.functional, f"lp_pool{rank}d", None)
    if lp is None:
        pytest.skip(f"this torch has no lp_pool{rank}d")
    rng = np.random.default_rng(10)
    x = as5d(rng.standard_normal((2, *size, 3)).astype(np.float32))
    g = _triple(k, rank), _triple(s, rank), (0, 0, 0), (0, 0, 0)
    xt = to_torch(torch, x, rank)
    yt = lp(xt, 2, k, s)
    y = nb.l2pool_forward(x, *g)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(to_torch(torch, dy, rank))
    _torch_close(y, from_torch(yt, rank))
    _torch_close(nb.l2pool_backward(x, y, dy, *g), from_torch(xt.grad, rank))


@pytest.mark.parametrize("rank,size", [(1, (9,)), (2, (5, 6)), (3, (3, 4, 5))])
def test_global_pools_match_torch_adaptive_pools(rank, size):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    x = as5d(rng.standard_normal((3, *size, 5)).astype(np.float32))
    dy = rng.standard_normal((3, 5)).astype(np.float32)
    dyt = torch.from_numpy(dy).reshape(3, 5, *([1] * rank))

    xt = to_torch(torch, x, rank)
    yt = getattr(F, f"adaptive_avg_pool{rank}d")(xt, 1)
    yt.backward(dyt)
    _torch_close(nb.global_avgpool_forward(x), yt.detach().numpy().reshape(3, 5))
    _torch_close(nb.global_avgpool_backward(dy, x.shape), from_torch(xt.grad, rank))

    xt = to_torch(torch, x, rank)
    yt, it = getattr(F, f"adaptive_max_pool{rank}d")(xt, 1, return_indices=True)
    yt.backward(dyt)
    y, am = nb.global_maxpool_forward(x)
    np.testing.assert_array_equal(y, yt.detach().numpy().reshape(3, 5))
    np.testing.assert_array_equal(am, it.numpy().reshape(3, 5))
    _torch_close(nb.global_maxpool_backward(dy, am, x.shape), from_torch(xt.grad, rank))
