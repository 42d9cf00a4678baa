"""The direct conv paths (cnndsl/kernels/conv/direct_path.py, direct.py): which convs take
them, and their forward and backward against the NumPy twin (float64) on every tile shape."""

from __future__ import annotations

import numpy as np
import pytest

from cnndsl.kernels.conv import (
    common,
    conv_backward,
    conv_forward,
    direct_path,
    gen_direct,
    winograd,
)
from cnndsl.kernels.reference import conv as reference

SAME = ((1, 1, 1), (1, 1, 1), (0, 1, 1), (0, 1, 1), 1)  # stride, dilation, pads, groups


def test_direct_py_is_what_the_generator_writes():
    """direct.py is generated: edited by hand, it would drift from gen_direct.py."""
    assert gen_direct.TARGET.read_text() == gen_direct.source(), \
        "run: python -m cnndsl.kernels.conv.gen_direct"


def _fits(x_shape, w_shape, stride=(1, 1, 1), dilation=(1, 1, 1), pad=(0, 1, 1), groups=1,
          dtype=np.float32):
    x, w = np.zeros(x_shape, dtype), np.zeros(w_shape, dtype)
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, d, p
                in zip(x_shape[1:4], w_shape[2:], stride, dilation, pad))
    return direct_path.fits(x, w, groups, common.geometry(w_shape[2:], stride, dilation, pad,
                                                          out))


def test_which_convs_take_the_direct_path():
    assert _fits((2, 1, 8, 8, 32), (64, 32, 1, 3, 3))
    assert _fits((2, 1, 5, 9, 64), (32, 64, 1, 3, 3))
    assert not _fits((2, 1, 8, 8, 32), (64, 32, 1, 3, 3), dtype=np.float64)  # gradient checks
    assert not _fits((2, 1, 8, 8, 16), (64, 16, 1, 3, 3))  # channels not a multiple of 32
    assert not _fits((2, 1, 8, 8, 32), (48, 32, 1, 3, 3))
    assert not _fits((2, 1, 8, 8, 32), (64, 32, 1, 3, 3), stride=(1, 2, 2))
    assert not _fits((2, 1, 8, 8, 32), (64, 32, 1, 3, 3), dilation=(1, 2, 2), pad=(0, 2, 2))
    assert not _fits((2, 1, 8, 8, 32), (64, 32, 1, 3, 3), pad=(0, 0, 0))  # valid
    assert not _fits((2, 1, 8, 8, 32), (64, 32, 1, 5, 5), pad=(0, 2, 2))
    assert not _fits((2, 1, 8, 8, 64), (64, 32, 1, 3, 3), groups=2)
    assert not _fits((2, 3, 8, 8, 32), (64, 32, 3, 3, 3), pad=(1, 1, 1))  # 3-D


def _close(a, b, what):
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(scale, 1e-6), err_msg=what)


# widths: 7 (tiles of 7), 8 (of 8), 9 (8 + one pixel), 5 (one pixel at a time)
@pytest.mark.parametrize("n, h, width, c, f", [(3, 7, 7, 32, 64), (2, 8, 8, 64, 32),
                                               (3, 4, 9, 32, 32), (2, 6, 5, 32, 32)])
@pytest.mark.parametrize("relu", [False, True])
def test_direct_conv_forward_and_backward_equal_the_numpy_twin(n, h, width, c, f, relu):
    rng = np.random.default_rng(n * h + width)
    x = rng.standard_normal((n, 1, h, width, c)).astype(np.float32)
    w = (rng.standard_normal((f, c, 1, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    assert direct_path.fits(x, w, 1, common.geometry((1, 3, 3), *SAME[:3], (1, h, width)))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for b in (rng.standard_normal(f).astype(np.float32), None):
        y = conv_forward(x, w, b, *SAME, relu=relu)
        y0 = reference.conv_forward(x64, w64, None if b is None else b.astype(np.float64),
                                    *SAME, relu=relu)
        _close(y, y0, "y")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        for need_dx in (True, False):
            dx, dw, db = conv_backward(x, w, dy, *SAME, need_dx=need_dx,
                                       y=y if relu else None)
            dx0, dw0, db0 = reference.conv_backward(x64, w64, dy.astype(np.float64), *SAME,
                                                    need_dx=need_dx, y=y0 if relu else None)
            _close(dw, dw0, "dw")
            _close(db, db0, "db")
            assert dw.shape == w.shape and db.shape == (f,)
            if need_dx:
                _close(dx, dx0, "dx")
            else:
                assert dx is None


def test_direct_conv_writes_into_out_and_keeps_nan():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 8, 8, 32)).astype(np.float32)
    x[0, 0, 3, 3, 5] = np.nan
    w = rng.standard_normal((32, 32, 1, 3, 3)).astype(np.float32)
    out = np.empty((2, 1, 8, 8, 32), np.float32)
    y = conv_forward(x, w, None, *SAME, relu=True, out=out)
    assert y is out
    assert np.isnan(y[0, 0, 2:5, 2:5]).all() and not np.isnan(y[1]).any()


# ---- the narrow path (inference convs with at most 32 filters) ------------------------
@pytest.mark.parametrize("n, h, width, c, f, k, before, after", [
    (3, 28, 28, 1, 10, 5, (0, 0), (0, 0)),    # net A's first conv: one vector of filters
    (2, 12, 12, 10, 20, 5, (0, 0), (0, 0)),   # its second: two vectors
    (3, 9, 11, 3, 32, 3, (1, 1), (1, 1)),     # same padding, a remainder of 3 pixels
    (2, 7, 5, 5, 16, 3, (0, 1), (2, 0)),      # asymmetric padding, tiles of one pixel
    (2, 6, 13, 2, 7, 2, (0, 0), (0, 1)),      # an even window
    (2, 8, 9, 16, 16, 3, (1, 1), (1, 1))])    # 16 filters on 16 channels: conv_forward's
@pytest.mark.parametrize("relu", [False, True])
def test_narrow_conv_forward_equals_the_numpy_twin_at_inference(n, h, width, c, f, k, before,
                                                                 after, relu):
    rng = np.random.default_rng(f * k + width)
    x = rng.standard_normal((n, 1, h, width, c)).astype(np.float32)
    w = rng.standard_normal((f, c, 1, k, k)).astype(np.float32)
    geometry = ((1, 1, 1), (1, 1, 1), (0, *before), (0, *after), 1)
    out = tuple(s + a + b - k + 1 for s, a, b in zip((h, width), before, after))
    where = common.geometry((1, k, k), (1, 1, 1), (1, 1, 1), (0, *before), (1, *out))
    assert direct_path.narrow_fits(x, w, 1, where, training=False)
    assert not direct_path.narrow_fits(x, w, 1, where, training=True)  # keeps im2col
    for b in (rng.standard_normal(f).astype(np.float32), None):
        # called directly: conv_forward gives most of these convs the planar kernels
        y = np.full((n, 1, *out, f), np.nan, np.float32)
        direct_path.narrow_forward(x, w, b, relu, where, y)
        y0 = reference.conv_forward(x.astype(np.float64), w.astype(np.float64),
                                    None if b is None else b.astype(np.float64), *geometry,
                                    relu=relu)
        assert y0.shape == (n, 1, *out, f)
        _close(y, y0, "y")
        if f % 16 == 0 and c >= 8:  # the narrow kernels' own convs: conv_forward's too
            _close(conv_forward(x, w, b, *geometry, relu=relu), y0, "conv_forward")


def test_which_inference_convs_take_the_narrow_path():
    x = np.zeros((2, 1, 8, 8, 3), np.float32)
    where = common.geometry((1, 3, 3), (1, 1, 1), (1, 1, 1), (0, 1, 1), (1, 8, 8))
    assert direct_path.narrow_fits(x, np.zeros((32, 3, 1, 3, 3), np.float32), 1, where, False)
    assert not direct_path.narrow_fits(x, np.zeros((33, 3, 1, 3, 3), np.float32), 1, where,
                                       False)
    assert not direct_path.narrow_fits(x.astype(np.float64), np.zeros((8, 3, 1, 3, 3)), 1,
                                       where, False)
    strided = common.geometry((1, 3, 3), (1, 2, 2), (1, 1, 1), (0, 1, 1), (1, 4, 4))
    assert not direct_path.narrow_fits(x, np.zeros((8, 3, 1, 3, 3), np.float32), 1, strided,
                                       False)
    grouped = np.zeros((2, 1, 8, 8, 4), np.float32)
    assert not direct_path.narrow_fits(grouped, np.zeros((8, 2, 1, 3, 3), np.float32), 2,
                                       where, False)


@pytest.mark.parametrize("group_images", [1, 2, 3])
def test_weight_gradient_in_groups_of_images_equals_the_numpy_twin(monkeypatch, group_images):
    """The weight gradient sums a run's images a group at a time (`direct_path._group`):
    groups of 1, 2 (a partial last group) and 3 of runs of up to 4 images give the same dW."""
    n, h, width, c, f = 7, 5, 6, 32, 32
    plane = (h + 2) * (width + 2) * c * 4
    monkeypatch.setattr(direct_path, "GROUP_BYTES", plane * group_images)
    assert direct_path._group(4, h, width, c) == group_images
    rng = np.random.default_rng(group_images)
    x = rng.standard_normal((n, 1, h, width, c)).astype(np.float32)
    w = rng.standard_normal((f, c, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, 1, h, width, f)).astype(np.float32)
    _, dw, _ = conv_backward(x, w, dy, *SAME, need_dx=False)
    _, dw0, _ = reference.conv_backward(x.astype(np.float64), w.astype(np.float64),
                                        dy.astype(np.float64), *SAME, need_dx=False)
    _close(dw, dw0, "dw")


# ---- Winograd F(2x2, 3x3): the direct path's small images ----------------------------
def test_which_direct_convs_take_winograd():
    def fits(h, width, c, f):
        return winograd.fits(np.zeros((1, 1, h, width, c), np.float32),
                             np.zeros((f, c, 1, 3, 3), np.float32))

    assert fits(8, 8, 256, 256) and fits(16, 16, 64, 128) and fits(3, 5, 64, 64)
    assert not fits(32, 32, 64, 64)    # 1,024 pixels: the direct kernels
    assert not fits(16, 17, 64, 64)
    assert not fits(14, 14, 32, 32)    # 32 channels: the direct kernels
    assert not fits(8, 8, 64, 32)


@pytest.mark.parametrize("n, h, width, c, f", [(2, 8, 8, 64, 64), (3, 5, 7, 64, 128),
                                               (2, 3, 4, 128, 64), (2, 1, 1, 64, 64)])
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_forward_and_backward_equal_the_numpy_twin(n, h, width, c, f, relu):
    """Even and odd sizes (a tile's row or column past the image dropped), a 1×1 image;
    the data gradient is Winograd too (the flipped, transposed weight), the weight gradient
    the direct kernel's."""
    rng = np.random.default_rng(n * h * width + c)
    x = rng.standard_normal((n, 1, h, width, c)).astype(np.float32)
    w = (rng.standard_normal((f, c, 1, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    assert winograd.fits(x, w) and direct_path.fits(
        x, w, 1, common.geometry((1, 3, 3), *SAME[:3], (1, h, width)))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for b in (rng.standard_normal(f).astype(np.float32), None):
        y = conv_forward(x, w, b, *SAME, relu=relu, keep={})  # keep: a training forward
        y0 = reference.conv_forward(x64, w64, None if b is None else b.astype(np.float64),
                                    *SAME, relu=relu)
        _close(y, y0, "y")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = conv_backward(x, w, dy, *SAME, need_dx=True, y=y if relu else None)
        dx0, dw0, db0 = reference.conv_backward(x64, w64, dy.astype(np.float64), *SAME,
                                                need_dx=True, y=y0 if relu else None)
        _close(dx, dx0, "dx")
        _close(dw, dw0, "dw")
        _close(db, db0, "db")


def test_winograd_weights_transform_as_g_w_gt():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 1, 3, 3)).astype(np.float32)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    expected = np.einsum("ai,fcij,bj->abcf", g, w[:, :, 0].astype(np.float64), g)
    np.testing.assert_allclose(winograd.weights(w), expected.reshape(16, 2, 3), rtol=1e-6)


def test_winograd_runs_a_batch_in_chunks(monkeypatch):
    """Chunks of 2 images, the last one partial: the same output as one chunk."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 1, 4, 6, 64)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 1, 3, 3)) / 24).astype(np.float32)
    whole = conv_forward(x, w, None, *SAME, relu=True, keep={})
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 16 * 2 * 3 * 64 * 4 * 2)
    chunked = conv_forward(x, w, None, *SAME, relu=True, keep={})
    np.testing.assert_array_equal(chunked, whole)
    _close(chunked, reference.conv_forward(x.astype(np.float64), w.astype(np.float64), None,
                                           *SAME, relu=True), "y")


def test_winograd_runs_in_training_only(monkeypatch):
    """Inference keeps the direct kernels (winograd.fits: peak memory); a training forward
    and the data gradient take Winograd."""
    calls = []
    original = winograd.forward
    monkeypatch.setattr(winograd, "forward", lambda *a: calls.append(1) or original(*a))
    x = np.ones((2, 1, 8, 8, 64), np.float32)
    w = np.full((64, 64, 1, 3, 3), 0.01, np.float32)
    inference = conv_forward(x, w, None, *SAME)
    assert calls == []
    training = conv_forward(x, w, None, *SAME, keep={})
    conv_backward(x, w, np.ones_like(training), *SAME)
    assert calls == [1, 1]
    _close(training, inference, "training vs inference forward")


@pytest.mark.parametrize("rows", [8, 13, 3])  # whole blocks of 8 rows, a partial one, none
def test_batched_gemm_equals_matmul(rows):
    from cnndsl.kernels.conv import direct

    rng = np.random.default_rng(rows)
    v = rng.standard_normal((16, rows, 40)).astype(np.float32)
    u = rng.standard_normal((16, 40, 64)).astype(np.float32)
    m = np.full((16, rows, 64), np.nan, np.float32)
    direct._batched_gemm(v, u, m)
    np.testing.assert_allclose(m, np.matmul(v.astype(np.float64), u), rtol=1e-5, atol=1e-4)
