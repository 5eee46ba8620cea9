"""QRNN layer against the float64 NumPy loop written from the equations, in the 2-byte compute
dtypes, and its gradients against finite differences of that loop.

Equations: Bradbury et al. 2016, "Quasi-Recurrent Neural Networks", eqs. 1-2 (masked
convolution of width k = qrnn_window over x_t, x_{t-1}: Z = tanh, F = sigmoid, O = sigmoid)
and eq. 4 (fo-pooling, c_t from f_t, z_t and c_{t-1}; h_t = o_t c_t), in the orientation of
Salesforce's pytorch-qrnn ForgetMult used by Merity et al. 2018: c_t = f_t z_t + (1 - f_t)
c_{t-1} (the paper writes f_t c_{t-1} + (1 - f_t) z_t; the two are the same model with f's
pre-activation negated). The reference is ``np_qrnn`` of tests/models/test_qrnn.py.

Why: test_qrnn.py checks the layer against NumPy only in float32 and its gradients only
between its two poolings (both lmscale code). Here:
  * bfloat16 compute: atol 8e-3 (unit roundoff 2^-9; the matmul operands are rounded, the
    cell c accumulates through (1 - f) products, h = o c is rounded to bfloat16; 3.0e-3 seen);
    float16 compute: atol 1e-3 (unit roundoff 2^-12; 2.9e-4 seen); float32: 1e-5 (as test_qrnn);
  * gradients (float32, both poolings, window 2, resets) w.r.t. w, bias, inputs, c0 and the
    carried x_prev against central differences (step 1e-6) of the float64 loop: atol 1e-4,
    rtol 1e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.models.qrnn import POOLINGS, qrnn_scan
from tests.models.test_qrnn import np_qrnn

T, B, I, H = 9, 3, 5, 4
TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-5), jnp.bfloat16: dict(atol=8e-3, rtol=0),
       jnp.float16: dict(atol=1e-3, rtol=0)}


def _problem(window: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    resets = np.zeros((T, B), bool)
    resets[0, 1] = resets[4, 0] = resets[6, 2] = True
    xs = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    w = rng.uniform(-0.7, 0.7, (window * I, 3 * H)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, (3 * H,)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (B, H)).astype(np.float32)
    x_prev = rng.uniform(-1, 1, (B, I)).astype(np.float32)
    return xs, w, b, c0, x_prev, resets


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("window", [1, 2])
def test_layer_matches_numpy_in_each_dtype(window, pooling, dtype):
    xs, w, b, c0, x_prev, resets = _problem(window)
    carry = (jnp.asarray(c0),) + ((jnp.asarray(x_prev),) if window == 2 else ())
    hs, new_carry, cs = jax.jit(lambda *a: qrnn_scan(*a, window=window, pooling=pooling,
                                                     dtype=dtype, return_cells=True))(
        jnp.asarray(xs), carry, jnp.asarray(w), jnp.asarray(b), jnp.asarray(resets))
    ref_h, ref_c, (c_last, _) = np_qrnn(xs, c0, x_prev, w, b, resets, window)
    assert hs.dtype == dtype and cs.dtype == jnp.float32 and new_carry[0].dtype == jnp.float32
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(hs, np.float64), ref_h, err_msg="hs", **tol)
    np.testing.assert_allclose(np.asarray(cs, np.float64), ref_c, err_msg="cs", **tol)
    np.testing.assert_allclose(np.asarray(new_carry[0], np.float64), c_last, err_msg="c", **tol)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gradients_match_finite_differences_of_numpy(pooling):
    window = 2
    xs, w, b, c0, x_prev, resets = _problem(window, seed=1)
    rng = np.random.default_rng(2)
    probe_h, probe_c = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))

    def loss(w, b, xs, c0, x_prev):
        hs, (c, _), _ = qrnn_scan(xs, (c0, x_prev), w, b, jnp.asarray(resets), window=window,
                                  pooling=pooling)
        return jnp.sum(hs * jnp.asarray(probe_h, jnp.float32)) + \
            jnp.sum(jnp.tanh(c) * jnp.asarray(probe_c, jnp.float32))

    args = [np.asarray(a, np.float64) for a in (w, b, xs, c0, x_prev)]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*[jnp.asarray(a, jnp.float32)
                                                               for a in args])

    def np_loss(w, b, xs, c0, x_prev):
        hs, _, (c, _) = np_qrnn(xs, c0, x_prev, w, b, resets, window)
        return float(np.sum(hs * probe_h) + np.sum(np.tanh(c) * probe_c))

    eps = 1e-6
    for i, (name, g) in enumerate(zip(["w", "b", "xs", "c0", "x_prev"], grads)):
        g = np.asarray(g, np.float64)
        assert np.abs(g).max() > 0, name
        for flat in rng.choice(g.size, size=min(8, g.size), replace=False):
            idx = np.unravel_index(flat, g.shape)
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            fd = (np_loss(*plus) - np_loss(*minus)) / (2 * eps)
            np.testing.assert_allclose(g[idx], fd, atol=1e-4, rtol=1e-3, err_msg=f"{name}{idx}")
