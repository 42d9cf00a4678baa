"""The planar conv path (cnndsl/kernels/conv/planar_path.py, planar.py, pool_epilogue.py):
which inference convs take it, its conv and its fused max pool against the NumPy twin on
every tile, and `conv_forward(pool=...)` on the paths that cannot fuse."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import example_graphs

from cnndsl.kernels import pool as pool_kernels
from cnndsl.kernels.conv import common, conv_forward, gen_planar, planar_path
from cnndsl.kernels.reference import conv as reference
from cnndsl.kernels.reference import pool as reference_pool


def test_planar_py_is_what_the_generator_writes():
    assert gen_planar.TARGET.read_text() == gen_planar.source(), \
        "run: python -m cnndsl.kernels.conv.gen_planar"


def _geometry(h, width, k, before, after):
    out = tuple(s + a + b - kk + 1 for s, a, b, kk in zip((h, width), before, after, k))
    args = ((1, 1, 1), (1, 1, 1), (0, *before), (0, *after), 1)
    return args, common.geometry((1, *k), (1, 1, 1), (1, 1, 1), (0, *before), (1, *out)), out


def _close(a, b, what):
    scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=1.0))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=what)


def _pool(kernel, stride, before=(0, 0), after=(0, 0)):
    return (1, *kernel), (1, *stride), (0, *before), (0, *after)


CONVS = [  # n, h, width, c, f, window, pad before, pad after
    (3, 28, 28, 1, 10, (5, 5), (0, 0), (0, 0)),    # net A's first conv
    (2, 12, 12, 10, 20, (5, 5), (0, 0), (0, 0)),   # its second
    (2, 9, 11, 3, 32, (3, 3), (1, 1), (1, 1)),     # same padding, 32 filters, 3 channels
    (2, 7, 5, 5, 7, (3, 3), (0, 1), (2, 0)),       # asymmetric padding
    (2, 6, 13, 2, 9, (2, 3), (0, 0), (0, 1)),      # an even, non-square window
    (1, 5, 40, 1, 3, (1, 1), (0, 0), (0, 0)),      # 1×1, rows longer than a vector
]
POOLS = [None, ((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 2), (1, 1)), ((3, 2), (3, 3)),
         ((1, 2), (1, 2))]


@pytest.mark.parametrize("tile", gen_planar.TILES)
@pytest.mark.parametrize("n, h, width, c, f, k, before, after", CONVS)
def test_planar_conv_and_pool_equal_the_numpy_twin_on_every_tile(monkeypatch, tile, n, h,
                                                                  width, c, f, k, before,
                                                                  after):
    """Every tile kernel, for every conv shape above, alone and with each pool (strides 1,
    2 and 3: the epilogue's three ways of reading a row), with and without bias and ReLU."""
    monkeypatch.setattr(planar_path, "_tile", lambda filters, positions: tile)
    rng = np.random.default_rng(f * h + width)
    x = rng.standard_normal((n, 1, h, width, c)).astype(np.float32)
    w = rng.standard_normal((f, c, 1, *k)).astype(np.float32)
    args, where, out = _geometry(h, width, k, before, after)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for pool in POOLS:
        if pool is not None and any(o < pk for o, pk in zip(out, pool[0])):
            continue
        for b, relu in ((rng.standard_normal(f).astype(np.float32), True), (None, False)):
            b64 = None if b is None else b.astype(np.float64)
            if pool is None:
                assert planar_path.fits(x, w, 1, where, training=False, pooled=False) == (
                    f % 16 != 0 or c < 8)
                y = np.empty((n, 1, *out, f), np.float32)
                planar_path.forward(x, w, b, relu, where, y)
                y0 = reference.conv_forward(x64, w64, b64, *args, relu=relu)
            else:
                window = _pool(*pool)
                y = conv_forward(x, w, b, *args, relu=relu, pool=window)
                y0 = reference.conv_forward(x64, w64, b64, *args, relu=relu, pool=window)
            assert y.shape == y0.shape, (pool, y.shape, y0.shape)
            _close(y, y0, f"pool {pool}, relu {relu}")


@pytest.mark.parametrize("pool", [((2, 2), (2, 2)), ((3, 3), (3, 3))])  # vector, scalar
def test_the_fused_pool_lets_nan_win_and_relu_keep_it(pool):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 10, 10, 1)).astype(np.float32)
    x[0, 0, 4, 4, 0] = np.nan
    w = rng.standard_normal((5, 1, 1, 3, 3)).astype(np.float32)
    args, _, _ = _geometry(10, 10, (3, 3), (0, 0), (0, 0))
    y = conv_forward(x, w, None, *args, relu=True, pool=_pool(*pool))
    y0 = reference.conv_forward(x.astype(np.float64), w.astype(np.float64), None, *args,
                                relu=True, pool=_pool(*pool))
    # the NaN reaches conv outputs 2..4 on each axis, and every pooled output over them
    assert np.isnan(y[0]).sum() == np.isnan(y0[0]).sum() > 0
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    assert not np.isnan(y[1]).any() and (y[~np.isnan(y)] >= 0).all()
    _close(np.nan_to_num(y), np.nan_to_num(y0), "values")


def test_which_inference_convs_take_the_planar_path():
    def fits(c, f, stride=(1, 1, 1), dtype=np.float32, training=False, pooled=False,
             groups=1):
        x = np.zeros((2, 1, 8, 8, c), dtype)
        w = np.zeros((f, c // groups, 1, 3, 3), dtype)
        out = (1, 8, 8) if stride == (1, 1, 1) else (1, 4, 4)
        where = common.geometry((1, 3, 3), stride, (1, 1, 1), (0, 1, 1), out)
        return planar_path.fits(x, w, groups, where, training=training, pooled=pooled)

    assert fits(1, 10) and fits(3, 32) and fits(16, 20) and fits(64, 8)
    assert fits(16, 16, pooled=True) and fits(32, 32, pooled=True)
    assert not fits(16, 16) and not fits(32, 32)       # the narrow kernels fill vectors
    assert not fits(3, 33, pooled=True)                # wide: the direct and GEMM paths
    assert not fits(1, 10, training=True)              # training keeps im2col
    assert not fits(1, 10, dtype=np.float64)
    assert not fits(1, 10, stride=(1, 2, 2))
    assert not fits(4, 10, groups=2)
    assert planar_path.pool_fits((1, 3, 3), (1, 2, 2), (0, 0, 0), (0, 0, 0))
    assert not planar_path.pool_fits((1, 3, 3), (1, 2, 2), (0, 1, 1), (0, 1, 1))
    assert not planar_path.pool_fits((2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0))


@pytest.mark.parametrize("c, f, dtype, pool", [
    (32, 32, np.float32, ((2, 2), (2, 2))),      # the direct path, then the pool
    (2, 6, np.float32, ((3, 3), (2, 2), (1, 1), (1, 1))),  # a padded pool: not fused
    (2, 6, np.float64, ((2, 2), (2, 2))),        # float64: im2col, then the pool
])
def test_conv_forward_pools_on_paths_that_cannot_fuse(c, f, dtype, pool):
    rng = np.random.default_rng(c + f)
    x = rng.standard_normal((2, 1, 8, 8, c)).astype(dtype)
    w = (rng.standard_normal((f, c, 1, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    args, _, _ = _geometry(8, 8, (3, 3), (1, 1), (1, 1))
    window = _pool(*pool)
    out = np.empty_like(conv_forward(x, w, b, *args, relu=True, pool=window))
    y = conv_forward(x, w, b, *args, relu=True, pool=window, out=out)
    assert y is out
    conv = conv_forward(x, w, b, *args, relu=True)
    expected, _ = pool_kernels.maxpool_forward(conv, *window)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("kernel, stride, before, after, relu", [
    ((1, 2, 2), (1, 2, 2), (0, 0, 0), (0, 0, 0), False),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), (0, 1, 0), True),
    ((2, 3, 2), (1, 1, 2), (1, 1, 0), (0, 1, 1), True)])
def test_maxpool_without_indices_gives_the_same_values(kernel, stride, before, after, relu):
    """Inference skips the argmax; the values stay those of the pool with indices (ties,
    NaN and -inf included), for the kernel and its NumPy twin."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 5, 4)).astype(np.float32)
    x[0, 1, 2, 2, 1] = np.nan
    x[1, 0, :, :, 2] = -np.inf
    x[1, 2, 1:3, 1:3, 3] = 0.5
    for module in (pool_kernels, reference_pool):
        y, argmax = module.maxpool_forward(x, kernel, stride, before, after, relu=relu)
        values, none = module.maxpool_forward(x, kernel, stride, before, after, relu=relu,
                                              indices=False)
        assert none is None and argmax is not None
        np.testing.assert_array_equal(values, y)


def test_every_example_network_infers_with_fused_pools_as_it_does_saving():
    """Model.forward(train=False) runs the inference layers, max pools computed by the convs
    before them (float32: the planar kernels where they fit); a forward that saves for a
    backward runs every pool itself. Both give the same output, on every example network
    and layer kind's example; the lecture networks' pools are fused."""
    from cnndsl.model import Model

    fused_networks = []
    for name, graph in example_graphs():
        model = Model(graph, seed=1)
        x = np.random.default_rng(2).standard_normal((2, *model.input_shape)).astype(
            np.float32)
        runner = model._runners[0]
        expected = runner.run(x, train=False, save=True).copy()
        got = model.forward(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5 * max(
            1.0, float(np.abs(expected).max())), err_msg=name)
        if any(dict(layer.geometry or {}).get("pool") for layer, _, _ in
               runner.inference_steps):
            fused_networks.append(name)
    assert {"lecture.cnn", "fashion_small.cnn"} <= set(fused_networks)
