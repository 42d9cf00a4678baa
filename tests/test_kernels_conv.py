"""Conv-family kernels: Numba == NumPy reference, central-difference gradients, PyTorch, and the
lecture's hand-computed examples. Tests marked `nojit` also pass under NUMBA_DISABLE_JIT=1."""

from __future__ import annotations

import numpy as np
import pytest

from cnndsl.kernels import conv as K
from cnndsl.kernels.reference import conv as R

IMPLS = [pytest.param(K, id="numba"), pytest.param(R, id="reference")]
ONE = (1, 1, 1)


def close(actual, expected, tol):
    """max |actual - expected| <= tol · max(1, max |expected|)."""
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= tol * scale, f"error {err:.3g} > {tol:g} x scale {scale:.3g}"


def close_all(actual, expected, tol):
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
        else:
            close(a, e, tol)


def randn(rng, *shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------------------------- configurations
# conv: (x shape N×D×H×W×C, filters, kernel, stride, dilation, pad_before, pad_after, groups, bias)
CONV = {
    "1d": ((2, 1, 1, 11, 3), 4, (1, 1, 3), (1, 1, 2), (1, 1, 2), (0, 0, 1), (0, 0, 2), 1, True),
    "1d_groups2_asym": ((3, 1, 1, 9, 4), 6, (1, 1, 4), (1, 1, 3), ONE, (0, 0, 3), (0, 0, 0), 2,
                        False),
    "2d_same": ((2, 1, 7, 8, 4), 8, (1, 3, 3), ONE, ONE, (0, 1, 1), (0, 1, 1), 1, True),
    "2d_stride_dil_groups4": ((2, 1, 9, 10, 8), 4, (1, 3, 2), (1, 2, 3), (1, 2, 1), (0, 2, 0),
                              (0, 1, 1), 4, True),
    "2d_depthwise_m2": ((2, 1, 6, 7, 3), 6, (1, 3, 3), (1, 2, 1), (1, 1, 2), (0, 1, 2),
                        (0, 0, 1), 3, True),
    "2d_1x1": ((2, 1, 5, 6, 8), 4, (1, 1, 1), ONE, ONE, (0, 0, 0), (0, 0, 0), 1, True),
    "2d_1x1_groups2": ((2, 1, 5, 6, 8), 6, (1, 1, 1), ONE, ONE, (0, 0, 0), (0, 0, 0), 2, False),
    "2d_1x1_stride2_pad": ((2, 1, 5, 6, 2), 3, (1, 1, 1), (1, 2, 2), ONE, (0, 1, 0), (0, 0, 1), 1,
                           True),
    "2d_big_kernel_odd": ((1, 1, 5, 5, 1), 2, (1, 5, 5), ONE, ONE, (0, 2, 2), (0, 2, 2), 1, True),
    "3d": ((2, 5, 6, 7, 3), 4, (3, 2, 3), (2, 1, 2), (1, 2, 1), (1, 0, 2), (0, 1, 1), 1, True),
    "3d_groups2": ((1, 4, 5, 6, 4), 6, (2, 2, 2), ONE, ONE, (1, 1, 1), (1, 1, 1), 2, False),
    "3d_stride3": ((2, 7, 5, 8, 2), 3, (2, 3, 2), (3, 2, 3), ONE, (0, 1, 1), (1, 1, 0), 1, True),
}
# transposed conv: (x shape, filters, kernel, stride, pad, output_pad, bias)
CONVT = {
    "1d": ((2, 1, 1, 5, 3), 4, (1, 1, 3), (1, 1, 2), (0, 0, 1), (0, 0, 1), True),
    "2d": ((2, 1, 4, 5, 3), 2, (1, 3, 3), (1, 2, 2), (0, 1, 0), (0, 1, 0), True),
    "2d_stride1": ((2, 1, 4, 4, 3), 5, (1, 2, 2), ONE, (0, 0, 0), (0, 0, 0), False),
    "3d": ((1, 3, 4, 3, 2), 3, (2, 3, 2), (2, 1, 3), (1, 1, 0), (1, 0, 2), True),
}
# depthwise: (x shape, multiplier, kernel, stride, pad_before, pad_after, bias)
DEPTHWISE = {
    "1d": ((2, 1, 1, 10, 3), 1, (1, 1, 3), (1, 1, 2), (0, 0, 1), (0, 0, 1), True),
    "2d_m2": ((2, 1, 6, 7, 4), 2, (1, 3, 3), ONE, (0, 1, 1), (0, 1, 1), True),
    "2d_m3_asym": ((1, 1, 7, 6, 2), 3, (1, 2, 3), (1, 2, 3), (0, 0, 2), (0, 1, 0), False),
    "3d": ((2, 4, 5, 6, 3), 1, (3, 3, 2), (1, 2, 1), (1, 1, 0), (1, 0, 1), True),
}
# locally connected: (x shape, filters, kernel, stride, bias)
LOCAL = {
    "1d": ((2, 1, 1, 9, 3), 4, (1, 1, 3), (1, 1, 2), True),
    "2d": ((3, 1, 6, 5, 2), 3, (1, 2, 2), (1, 2, 1), True),
    "3d": ((2, 4, 5, 4, 2), 2, (2, 3, 2), (2, 1, 2), False),
}


def make_conv(cfg, rng):
    shape, f, kernel, stride, dil, pb, pa, groups, bias = cfg
    x = randn(rng, *shape)
    w = randn(rng, f, shape[-1] // groups, *kernel)
    b = randn(rng, f) if bias else None
    return x, w, b, (stride, dil, pb, pa, groups)


def make_convt(cfg, rng):
    shape, f, kernel, stride, pad, opad, bias = cfg
    x, w = randn(rng, *shape), randn(rng, shape[-1], f, *kernel)
    return x, w, (randn(rng, f) if bias else None), (stride, pad, opad)


def make_depthwise(cfg, rng):
    shape, mult, kernel, stride, pb, pa, bias = cfg
    f = shape[-1] * mult
    x, w = randn(rng, *shape), randn(rng, f, 1, *kernel)
    return x, w, (randn(rng, f) if bias else None), (stride, pb, pa)


def make_local(cfg, rng):
    shape, f, kernel, stride, bias = cfg
    out = tuple((n - k) // s + 1 for n, k, s in zip(shape[1:4], kernel, stride))
    x, w = randn(rng, *shape), randn(rng, *out, f, shape[-1], *kernel)
    return x, w, (randn(rng, f, *out) if bias else None), (stride,)


FAMILIES = {  # name: (configs, maker, forward, backward)
    "conv": (CONV, make_conv, "conv_forward", "conv_backward"),
    "convt": (CONVT, make_convt, "convt_forward", "convt_backward"),
    "depthwise": (DEPTHWISE, make_depthwise, "depthwise_forward", "depthwise_backward"),
    "local": (LOCAL, make_local, "local_forward", "local_backward"),
}
CASES = [pytest.param(fam, name, id=f"{fam}-{name}")
         for fam, (cfgs, *_) in FAMILIES.items() for name in cfgs]


def setup(fam, name, seed=0):
    cfgs, maker, fwd, bwd = FAMILIES[fam]
    x, w, b, args = maker(cfgs[name], np.random.default_rng(seed))
    return x, w, b, args, fwd, bwd


# ----------------------------------------------------------------------- numba == reference

@pytest.mark.parametrize(("fam", "name"), CASES)
def test_numba_matches_reference_float64(fam, name):
    x, w, b, args, fwd, bwd = setup(fam, name)
    y = getattr(K, fwd)(x, w, b, *args)
    close(y, getattr(R, fwd)(x, w, b, *args), 1e-12)
    assert y.dtype == np.float64 and y.flags.c_contiguous
    dy = np.random.default_rng(1).standard_normal(y.shape)
    got = getattr(K, bwd)(x, w, dy, *args)
    close_all(got, getattr(R, bwd)(x, w, dy, *args), 1e-12)
    assert all(g.flags.c_contiguous and g.dtype == np.float64 for g in got)
    assert got[1].shape == w.shape
    if b is not None:
        assert got[2].shape == b.shape
    dx, dw, db = getattr(K, bwd)(x, w, dy, *args, need_dx=False)
    assert dx is None
    close(dw, got[1], 0)
    close(db, got[2], 0)


@pytest.mark.parametrize(("fam", "name"), CASES)
def test_float32_matches_float64_reference(fam, name):
    x, w, b, args, fwd, bwd = setup(fam, name, seed=2)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    x, w, b = x32.astype(np.float64), w32.astype(np.float64), (None if b is None else
                                                              b32.astype(np.float64))
    expected = getattr(R, fwd)(x, w, b, *args)
    dy32 = np.random.default_rng(3).standard_normal(expected.shape).astype(np.float32)
    expected_grads = getattr(R, bwd)(x, w, dy32.astype(np.float64), *args)
    for impl in (K, R):
        y = getattr(impl, fwd)(x32, w32, b32, *args)
        assert y.dtype == np.float32
        close(y, expected, 1e-5)
        grads = getattr(impl, bwd)(x32, w32, dy32, *args)
        assert all(g.dtype == np.float32 for g in grads)
        close_all(grads, expected_grads, 1e-5)


@pytest.mark.parametrize(("fam", "name"), [c for c in CASES if c.values[0] in ("conv", "convt")])
def test_one_image_per_block_matches_reference(monkeypatch, fam, name):
    monkeypatch.setattr(K.common, "_BLOCK_BYTES", 1)  # im2col/GEMM/col2im one image at a time
    x, w, b, args, fwd, bwd = setup(fam, name, seed=6)
    y = getattr(K, fwd)(x, w, b, *args)
    close(y, getattr(R, fwd)(x, w, b, *args), 1e-12)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    close_all(getattr(K, bwd)(x, w, dy, *args), getattr(R, bwd)(x, w, dy, *args), 1e-12)


def test_noncontiguous_inputs_and_scratch_reuse():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 1, 9, 7, 6))[:, :, ::2]  # a strided view
    w = rng.standard_normal((4, 6, 1, 3, 3))
    args = (ONE, ONE, (0, 1, 1), (0, 1, 1), 1)
    expected = R.conv_forward(x, w, None, *args)
    close(K.conv_forward(x, w, None, *args), expected, 1e-12)
    # a larger call grows the shared scratch; the small call must still be right afterwards
    big = rng.standard_normal((3, 1, 12, 12, 6))
    close(K.conv_forward(big, w, None, *args), R.conv_forward(big, w, None, *args), 1e-12)
    y1 = K.conv_forward(x, w, None, *args)
    y2 = K.conv_forward(x + 1, w, None, *args)  # outputs never alias the scratch
    close(y1, expected, 1e-12)
    assert not np.shares_memory(y1, y2)
    K.clear_scratch()
    close(K.conv_forward(x, w, None, *args), expected, 1e-12)


# ---------------------------------------------------------------- central-difference gradients

def numeric_grad(loss, a, eps=1e-6):
    """d loss / d a by central differences, perturbing `a` in place."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = loss()
        a[idx] = old - eps
        down = loss()
        a[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def gradcheck(impl, fwd, bwd, x, w, b, args):
    r = np.random.default_rng(7).standard_normal(getattr(impl, fwd)(x, w, b, *args).shape)

    def loss():
        return float(np.sum(getattr(impl, fwd)(x, w, b, *args) * r))

    dx, dw, db = getattr(impl, bwd)(x, w, r, *args)
    close(dx, numeric_grad(loss, x), 1e-7)
    close(dw, numeric_grad(loss, w), 1e-7)
    if b is not None:
        close(db, numeric_grad(loss, b), 1e-7)


GRAD_CASES = [
    ("conv", ((2, 1, 1, 7, 2), 3, (1, 1, 3), (1, 1, 2), (1, 1, 2), (0, 0, 2), (0, 0, 1), 1, True)),
    ("conv", ((1, 1, 5, 4, 4), 4, (1, 2, 3), (1, 2, 1), ONE, (0, 1, 0), (0, 0, 2), 2, True)),
    ("conv", ((1, 3, 4, 3, 2), 2, (2, 2, 2), (2, 1, 1), (1, 1, 2), (1, 1, 1), (0, 0, 1), 1,
              True)),
    ("conv", ((1, 1, 4, 5, 2), 4, (1, 3, 2), ONE, ONE, (0, 1, 1), (0, 1, 0), 2, True)),
    ("convt", ((2, 1, 1, 4, 2), 3, (1, 1, 3), (1, 1, 2), (0, 0, 1), (0, 0, 1), True)),
    ("convt", ((1, 2, 3, 2, 2), 2, (2, 2, 3), (2, 1, 2), (1, 0, 1), (1, 0, 0), True)),
    ("depthwise", ((2, 1, 4, 5, 2), 2, (1, 3, 2), (1, 2, 1), (0, 1, 0), (0, 1, 1), True)),
    ("depthwise", ((1, 3, 3, 4, 3), 1, (2, 2, 3), (1, 1, 2), (1, 0, 1), (0, 1, 1), True)),
    ("local", ((2, 1, 4, 5, 2), 2, (1, 2, 3), (1, 1, 2), True)),
    ("local", ((1, 3, 3, 4, 2), 2, (2, 2, 2), (1, 1, 2), True)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("fam", "cfg"), GRAD_CASES,
                         ids=[f"{fam}{i}" for i, (fam, _) in enumerate(GRAD_CASES)])
def test_gradcheck(impl, fam, cfg):
    _, maker, fwd, bwd = FAMILIES[fam]
    x, w, b, args = maker(cfg, np.random.default_rng(5))
    gradcheck(impl, fwd, bwd, x, w, b, args)


@pytest.mark.parametrize("name", ["2d_same", "2d_stride_dil_groups4", "2d_depthwise_m2", "3d",
                                  "2d_1x1"])
def test_fused_relu_matches_reference_and_unfused(name):
    """conv_forward(relu=True) == max(conv, 0); conv_backward(y=...) == backward of the masked
    dy; Numba == NumPy twin."""
    x, w, b, args, *_ = setup("conv", name)
    y = K.conv_forward(x, w, b, *args, relu=True)
    close(y, R.conv_forward(x, w, b, *args, relu=True), 1e-10)
    assert np.array_equal(y, np.maximum(K.conv_forward(x, w, b, *args), 0))
    assert (y > 0).any() and (y == 0).any()
    dy = randn(np.random.default_rng(3), *y.shape)
    fused = K.conv_backward(x, w, dy, *args, y=y)
    close_all(fused, R.conv_backward(x, w, dy, *args, y=y), 1e-10)
    close_all(fused, K.conv_backward(x, w, np.where(y > 0, dy, 0), *args), 1e-12)
    dy_before = dy.copy()
    K.conv_backward(x, w, dy, *args, y=y, need_dx=False)
    assert np.array_equal(dy, dy_before)  # dy is never masked in place (fan-out shares it)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("block_bytes", [1, 1 << 20])
@pytest.mark.parametrize("name", ["2d_same", "2d_stride_dil_groups4", "3d", "1d"])
def test_any_cut_into_runs_and_blocks_gives_the_same_results(monkeypatch, name, threads,
                                                            block_bytes):
    """The blocked conv kernels cut the batch into one run per Numba thread (more runs than
    cores is still correct) and blocks of whole images; any cut gives the reference."""
    import numba

    monkeypatch.setattr(K.common, "_THREAD_BLOCK_BYTES", block_bytes)  # 1: one image per block
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    x, w, b, args, *_ = setup("conv", name)
    for keep in (None, {}):
        y = K.conv_forward(x, w, b, *args, relu=True, keep=keep)
        close(y, R.conv_forward(x, w, b, *args, relu=True), 1e-10)
        dy = randn(np.random.default_rng(5), *y.shape)
        close_all(K.conv_backward(x, w, dy, *args, y=y, keep=keep),
                  R.conv_backward(x, w, dy, *args, y=y), 1e-10)


@pytest.mark.parametrize("one_block", [True, False])
@pytest.mark.parametrize("name", ["2d_same", "2d_stride_dil_groups4", "3d", "2d_1x1"])
def test_patches_kept_by_the_forward_give_the_same_gradients(monkeypatch, name, one_block):
    if not one_block:
        monkeypatch.setattr(K.common, "_BLOCK_BYTES", 1)  # one image per block: nothing is kept
    x, w, b, args, *_ = setup("conv", name)
    keep = {}
    y = K.conv_forward(x, w, b, *args, keep=keep)
    assert ("cols" in keep) == (one_block and name != "2d_1x1")  # 1x1: the patches are x
    close(y, R.conv_forward(x, w, b, *args), 1e-10)
    dy = randn(np.random.default_rng(4), *y.shape)
    K.conv_forward(2 * x, w, b, *args)  # the scratch patches now hold another input
    expected = R.conv_backward(x, w, dy, *args)
    close_all(K.conv_backward(x, w, dy, *args, keep=keep), expected, 1e-10)
    close_all(K.conv_backward(x, w, dy, *args, keep=keep, need_dx=False),
              (None, *expected[1:]), 1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg", [GRAD_CASES[0][1], GRAD_CASES[1][1]], ids=["1d", "2d_groups2"])
def test_gradcheck_fused_relu(impl, cfg):
    x, w, b, args = make_conv(cfg, np.random.default_rng(6))
    x += 0.3  # fewer outputs right at the kink

    def fwd(x, w, b, *args):
        return impl.conv_forward(x, w, b, *args, relu=True)

    def bwd(x, w, dy, *args):
        return impl.conv_backward(x, w, dy, *args, y=fwd(x, w, b, *args))

    ns = type("Fused", (), {"fwd": staticmethod(fwd), "bwd": staticmethod(bwd)})
    gradcheck(ns, "fwd", "bwd", x, w, b, args)


# ------------------------------------------------------------------------------ nojit (tiny)

@pytest.mark.nojit
def test_nojit_tiny_conv_matches_reference():
    x, w, b, args = make_conv(((1, 1, 3, 4, 2), 2, (1, 2, 2), (1, 1, 2), ONE, (0, 1, 0),
                               (0, 0, 1), 2, True), np.random.default_rng(0))
    y = K.conv_forward(x, w, b, *args)
    close(y, R.conv_forward(x, w, b, *args), 1e-12)
    dy = np.ones_like(y)
    close_all(K.conv_backward(x, w, dy, *args), R.conv_backward(x, w, dy, *args), 1e-12)


@pytest.mark.nojit
def test_nojit_tiny_other_kernels_match_reference():
    rng = np.random.default_rng(1)
    for fam, cfg in [
        ("convt", ((1, 1, 2, 2, 2), 2, (1, 2, 2), (1, 2, 2), (0, 1, 0), (0, 1, 0), True)),
        ("depthwise", ((1, 1, 3, 3, 2), 2, (1, 2, 2), ONE, (0, 1, 0), (0, 0, 1), True)),
        ("local", ((2, 1, 3, 3, 1), 2, (1, 2, 2), ONE, True)),
    ]:
        _, maker, fwd, bwd = FAMILIES[fam]
        x, w, b, args = maker(cfg, rng)
        y = getattr(K, fwd)(x, w, b, *args)
        close(y, getattr(R, fwd)(x, w, b, *args), 1e-12)
        dy = rng.standard_normal(y.shape)
        close_all(getattr(K, bwd)(x, w, dy, *args), getattr(R, bwd)(x, w, dy, *args), 1e-12)


@pytest.mark.nojit
def test_nojit_tiny_gradcheck():
    x, w, b, args = make_conv(((1, 1, 1, 5, 2), 2, (1, 1, 2), (1, 1, 2), ONE, (0, 0, 1),
                               (0, 0, 0), 1, True), np.random.default_rng(2))
    gradcheck(K, "conv_forward", "conv_backward", x, w, b, args)


# ------------------------------------------------------------------- the lecture's examples

IMAGE = np.array([[1, 1, 1, 0, 0],
                  [0, 1, 1, 1, 0],
                  [0, 0, 1, 1, 1],
                  [0, 0, 1, 1, 0],
                  [0, 1, 1, 0, 0]], float)
KERNEL = np.array([[1, 0, 1],
                   [0, 1, 0],
                   [1, 0, 1]], float)


@pytest.mark.nojit
@pytest.mark.parametrize("impl", IMPLS)
def test_lecture_examples(impl):
    # 5×5 image ⊛ 3×3 kernel: each output is the sum of the 4 corners and the centre of its
    # window, e.g. top-left valid output: x00 + x02 + x11 + x20 + x22 = 1 + 1 + 1 + 0 + 1 = 4
    x, w = IMAGE.reshape(1, 1, 5, 5, 1), KERNEL.reshape(1, 1, 1, 3, 3)
    valid = impl.conv_forward(x, w, None, ONE, ONE, (0, 0, 0), (0, 0, 0), 1)
    assert valid.reshape(3, 3).tolist() == [[4, 3, 4],
                                            [2, 4, 3],
                                            [2, 3, 4]]
    # same: zero border of 1, so the corner output (0, 0) sees only x00 (centre) + x11 = 2
    same = impl.conv_forward(x, w, None, ONE, ONE, (0, 1, 1), (0, 1, 1), 1)
    assert same.reshape(5, 5).tolist() == [[2, 2, 3, 1, 1],
                                           [1, 4, 3, 4, 1],
                                           [1, 2, 4, 3, 3],
                                           [1, 2, 3, 4, 1],
                                           [0, 2, 2, 1, 1]]

    # 1-D: kernel [3, 2, 2] on the signal [2, 1, 0, 3, 1]; deep-learning "convolution" is
    # cross-correlation, y[i] = 3·x[i] + 2·x[i+1] + 2·x[i+2] (no kernel flip)
    s, k = np.array([2, 1, 0, 3, 1], float).reshape(1, 1, 1, 5, 1), np.array(
        [3, 2, 2], float).reshape(1, 1, 1, 1, 3)
    valid = impl.conv_forward(s, k, None, ONE, ONE, (0, 0, 0), (0, 0, 0), 1)
    assert valid.ravel().tolist() == [3 * 2 + 2 * 1 + 2 * 0,   # 8
                                      3 * 1 + 2 * 0 + 2 * 3,   # 9
                                      3 * 0 + 2 * 3 + 2 * 1]   # 8
    same = impl.conv_forward(s, k, None, ONE, ONE, (0, 0, 1), (0, 0, 1), 1)
    assert same.ravel().tolist() == [6, 8, 9, 8, 11]  # 3·0 + 2·2 + 2·1 = 6, ..., 3·3 + 2·1 + 0
    # a flipped kernel (true convolution) would give [2·2 + 2·1 + 3·0, ...] = [6, 11, 9]
    flipped = impl.conv_forward(s, k[..., ::-1], None, ONE, ONE, (0, 0, 0), (0, 0, 0), 1)
    assert flipped.ravel().tolist() == [6, 11, 9]


# -------------------------------------------------------------------------------- vs PyTorch

def to_torch(torch, a, rank):
    """N×D×H×W×C (5-D, leading spatial axes of size 1) -> N×C×(last `rank` spatial axes)."""
    n, c = a.shape[0], a.shape[-1]
    return torch.from_numpy(np.ascontiguousarray(a.reshape(n, *a.shape[4 - rank:4], c))) \
        .movedim(-1, 1).contiguous()


def from_torch(t, shape5):
    return t.detach().movedim(1, -1).numpy().reshape(shape5)


def weight_to_torch(torch, w, rank):
    return torch.from_numpy(np.ascontiguousarray(w.reshape(*w.shape[:2], *w.shape[5 - rank:])))


TORCH_CONV = [  # (rank, config) — rank = number of spatial axes torch sees
    (1, CONV["1d"]), (1, CONV["1d_groups2_asym"]), (2, CONV["2d_same"]),
    (2, CONV["2d_stride_dil_groups4"]), (2, CONV["2d_depthwise_m2"]),
    (2, CONV["2d_1x1_groups2"]), (3, CONV["3d"]), (3, CONV["3d_groups2"]),
]


def torch_grads(torch, fn, inputs, dy):
    leaves = [t.requires_grad_() for t in inputs if t is not None]
    y = fn(*inputs)
    y.backward(dy)
    return y, [t.grad for t in leaves]


@pytest.mark.parametrize(("rank", "cfg"), TORCH_CONV)
def test_conv_matches_torch(rank, cfg):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, (stride, dil, pb, pa, groups) = make_conv(cfg, np.random.default_rng(8))
    x, w = x.astype(np.float32), w.astype(np.float32)
    b = None if b is None else b.astype(np.float32)
    y = K.conv_forward(x, w, b, stride, dil, pb, pa, groups)
    dy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = K.conv_backward(x, w, dy, stride, dil, pb, pa, groups)

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    pads = [p for axis in reversed(range(3 - rank, 3)) for p in (pb[axis], pa[axis])]

    def run(xt, wt, bt=None):
        return conv(F.pad(xt, pads), wt, bt, stride[3 - rank:], 0, dil[3 - rank:], groups)

    inputs = [to_torch(torch, x, rank), weight_to_torch(torch, w, rank)]
    if b is not None:
        inputs.append(torch.from_numpy(b))
    yt, grads = torch_grads(torch, run, inputs, to_torch(torch, dy, rank))
    close(y, from_torch(yt, y.shape), 1e-4)
    close(dx, from_torch(grads[0], x.shape), 1e-4)
    close(dw, grads[1].numpy().reshape(w.shape), 1e-4)
    if b is not None:
        close(db, grads[2].numpy(), 1e-4)


@pytest.mark.parametrize("name", list(CONVT))
def test_convt_matches_torch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, (stride, pad, opad) = make_convt(CONVT[name], np.random.default_rng(10))
    rank = 1 if name == "1d" else 2 if name.startswith("2d") else 3
    x, w = x.astype(np.float32), w.astype(np.float32)
    b = None if b is None else b.astype(np.float32)
    y = K.convt_forward(x, w, b, stride, pad, opad)
    dy = np.random.default_rng(11).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = K.convt_backward(x, w, dy, stride, pad, opad)

    convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]

    def run(xt, wt, bt=None):
        return convt(xt, wt, bt, stride[3 - rank:], pad[3 - rank:], opad[3 - rank:])

    inputs = [to_torch(torch, x, rank), weight_to_torch(torch, w, rank)]
    if b is not None:
        inputs.append(torch.from_numpy(b))
    yt, grads = torch_grads(torch, run, inputs, to_torch(torch, dy, rank))
    close(y, from_torch(yt, y.shape), 1e-4)
    close(dx, from_torch(grads[0], x.shape), 1e-4)
    close(dw, grads[1].numpy().reshape(w.shape), 1e-4)
    if b is not None:
        close(db, grads[2].numpy(), 1e-4)


@pytest.mark.parametrize("name", list(DEPTHWISE))
def test_depthwise_matches_torch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, (stride, pb, pa) = make_depthwise(DEPTHWISE[name], np.random.default_rng(12))
    rank = 1 if name == "1d" else 2 if name.startswith("2d") else 3
    x, w = x.astype(np.float32), w.astype(np.float32)
    b = None if b is None else b.astype(np.float32)
    y = K.depthwise_forward(x, w, b, stride, pb, pa)
    dy = np.random.default_rng(13).standard_normal(y.shape).astype(np.float32)
    dx, dw, db = K.depthwise_backward(x, w, dy, stride, pb, pa)

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    pads = [p for axis in reversed(range(3 - rank, 3)) for p in (pb[axis], pa[axis])]

    def run(xt, wt, bt=None):
        return conv(F.pad(xt, pads), wt, bt, stride[3 - rank:], groups=x.shape[-1])

    inputs = [to_torch(torch, x, rank), weight_to_torch(torch, w, rank)]
    if b is not None:
        inputs.append(torch.from_numpy(b))
    yt, grads = torch_grads(torch, run, inputs, to_torch(torch, dy, rank))
    close(y, from_torch(yt, y.shape), 1e-4)
    close(dx, from_torch(grads[0], x.shape), 1e-4)
    close(dw, grads[1].numpy().reshape(w.shape), 1e-4)
    if b is not None:
        close(db, grads[2].numpy(), 1e-4)


def test_batch64_layer_matches_torch():
    """One realistic float32 layer (large M, so float32 accumulation order matters)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    x = rng.standard_normal((64, 1, 16, 16, 32), dtype=np.float32)
    w = rng.standard_normal((48, 32, 1, 3, 3), dtype=np.float32) * 0.1
    b = rng.standard_normal(48, dtype=np.float32)
    args = (ONE, ONE, (0, 1, 1), (0, 1, 1), 1)
    y = K.conv_forward(x, w, b, *args)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = K.conv_backward(x, w, dy, *args)
    inputs = [to_torch(torch, x, 2), weight_to_torch(torch, w, 2), torch.from_numpy(b)]
    yt, grads = torch_grads(
        torch, lambda xt, wt, bt: torch.nn.functional.conv2d(xt, wt, bt, 1, 1), inputs,
        to_torch(torch, dy, 2))
    close(y, from_torch(yt, y.shape), 1e-4)
    close(dx, from_torch(grads[0], x.shape), 1e-4)
    close(dw, grads[1].numpy().reshape(w.shape), 1e-4)
    close(db, grads[2].numpy(), 1e-4)


@pytest.mark.parametrize(("kernel", "stride", "dilation", "pad"), [
    ((1, 5, 5), (1, 1, 1), (1, 1, 1), ((0, 0, 0), (0, 0, 0))),  # the lecture's MNIST conv1
    ((1, 3, 3), (1, 2, 2), (1, 1, 1), ((0, 1, 1), (0, 1, 1))),
    ((1, 3, 3), (1, 1, 2), (1, 2, 1), ((0, 2, 0), (0, 1, 3))),  # asymmetric, dilated
    ((1, 1, 4), (1, 1, 3), (1, 1, 1), ((0, 0, 2), (0, 0, 2))),  # 1-D
    ((2, 3, 3), (2, 1, 1), (1, 1, 1), ((1, 1, 1), (0, 1, 1))),  # 3-D
])
def test_one_channel_inputs_use_the_tapwise_patches_correctly(kernel, stride, dilation, pad):
    """A one-channel input (a grey-scale image) takes `_im2col_rows_single_channel`; compared
    with the NumPy twin, forward (with ReLU) and backward including dx, float64."""
    rng = np.random.default_rng(11)
    x = randn(rng, 3, 4 if kernel[0] > 1 else 1, 9, 10, 1)
    w = randn(rng, 5, 1, *kernel)
    b = randn(rng, 5)
    args = (stride, dilation, *pad, 1)
    y = K.conv_forward(x, w, b, *args, relu=True)
    close(y, R.conv_forward(x, w, b, *args, relu=True), 1e-10)
    dy = randn(rng, *y.shape)
    close_all(K.conv_backward(x, w, dy, *args, y=y), R.conv_backward(x, w, dy, *args, y=y),
              1e-10)
