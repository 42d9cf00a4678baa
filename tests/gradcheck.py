"""Shared by the kernel and layer tests: central differences in float64."""

import numpy as np


def numgrad(f, x, w, h=1e-6):
    """Central differences of Σ f(x)·w with respect to x (float64)."""
    g = np.zeros_like(x)
    xf, gf = x.reshape(-1), g.reshape(-1)
    for i in range(xf.size):
        old = xf[i]
        xf[i] = old + h
        fp = np.sum(f(x) * w)
        xf[i] = old - h
        fm = np.sum(f(x) * w)
        xf[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


def assert_model_gradients(model, x, r, atol=1e-7):
    """model.backward(r) after a training forward of x: the input gradient and every
    parameter's equal central differences of sum(forward(x) * r), each entry (float64
    model; small networks only)."""
    model.forward(x, train=True)
    gx, grads = model.backward(r)
    np.testing.assert_allclose(
        gx, numgrad(lambda v: model.forward(v, train=True), x.copy(), r), atol=atol)
    for name, array in model.parameters().items():
        original = array.copy()

        def f(value, array=array):
            array[...] = value
            return model.forward(x, train=True)

        numeric = numgrad(f, original.copy(), r)
        array[...] = original  # numgrad leaves the last element moved by -h
        np.testing.assert_allclose(grads[name], numeric, atol=atol, err_msg=name)
