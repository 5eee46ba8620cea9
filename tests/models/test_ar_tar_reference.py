"""AR and TAR (Merity et al. 2017, as README/config document them) against float64 NumPy
references written from the equations, values and gradients:

  AR  = alpha * mean over (B, T, F) of (m*h)^2      (the last layer's dropped output)
  TAR = beta  * mean over (B, T-1, F) of (h_{t+1} - h_t)^2   (its undropped output)

dAR/dx = 2 alpha x / (B T F);  dTAR/dh_t = 2 beta / (B (T-1) F) * ((h_t - h_{t-1})[t>0] -
(h_{t+1} - h_t)[t<T-1]). lmscale returns per-row [B] penalties whose mean over rows is the
batch's. Tolerance: float32 rtol 1e-5; bfloat16 inputs are squared in float32, so compared
against float64 on the rounded inputs at rtol 1e-5 as well."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import RecurrentLM
from lmscale.models import regularizers as reg

T, B, F = 7, 3, 5


def np_ar(x, alpha):
    x = np.asarray(x, np.float64)
    return alpha * np.mean(x ** 2), 2 * alpha * x / x.size


def np_tar(h, beta):
    h = np.asarray(h, np.float64)
    t, b, f = h.shape
    if t < 2:
        return 0.0, np.zeros_like(h)
    d = h[1:] - h[:-1]
    n = (t - 1) * b * f
    g = np.zeros_like(h)
    g[1:] += 2 * beta * d / n
    g[:-1] -= 2 * beta * d / n
    return beta * np.sum(d ** 2) / n, g


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_ar_tar_values_and_gradients(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(T, B, F)), dtype)
    xr = np.asarray(x.astype(jnp.float32))
    alpha, beta = 2.0, 3.0
    ar_want, ar_grad = np_ar(xr, alpha)
    tar_want, tar_grad = np_tar(xr, beta)
    ar = reg.activation_penalty(x, alpha)
    tar = reg.temporal_penalty(x, beta)
    assert ar.shape == tar.shape == (B,) and ar.dtype == tar.dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.mean(ar)), ar_want, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.mean(tar)), tar_want, rtol=1e-5)
    # per row: the row's own mean
    np.testing.assert_allclose(np.asarray(ar), alpha * np.mean(xr.astype(np.float64) ** 2, (0, 2)),
                               rtol=1e-5)
    x32 = x.astype(jnp.float32)
    g_ar = jax.grad(lambda v: jnp.mean(reg.activation_penalty(v, alpha)))(x32)
    g_tar = jax.grad(lambda v: jnp.mean(reg.temporal_penalty(v, beta)))(x32)
    np.testing.assert_allclose(np.asarray(g_ar), ar_grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.asarray(g_tar), tar_grad, rtol=1e-5, atol=1e-8)


def test_tar_of_one_step_is_zero_and_zero_weights_give_zero():
    x = jnp.ones((1, B, F))
    assert np.all(np.asarray(reg.temporal_penalty(x, 5.0)) == 0)
    assert np.all(np.asarray(reg.activation_penalty(x, 0.0)) == 0)


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_model_penalty_and_its_parameter_gradient_follow_the_equations(kind):
    """The model's penalty = AR(dropped top) + TAR(undropped top), and its gradient w.r.t. the
    parameters is the chain rule of the float64 dPenalty/dh through the model's own output
    (a VJP of the features with the NumPy cotangents): the regularizer enters the loss with
    the documented derivative."""
    alpha, beta, p = 2.0, 3.0, 0.4
    V, H = 11, 6
    model = RecurrentLM(kind=kind, vocab_size=V, embed=4, hidden=H, layers=2, weight_norm=False,
                        output_dropout=p, ar_alpha=alpha, tar_beta=beta, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, (B, T)), jnp.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(4), i))(jnp.arange(B))
    graphdef, params = nnx.split(model)

    def top(ps):  # undropped top output [T, B, H]
        m = nnx.merge(graphdef, ps)
        return jnp.swapaxes(m.features(tokens, None, dropout_key=keys)["hidden"][-1], 0, 1)

    def penalty(ps):
        m = nnx.merge(graphdef, ps)
        return jnp.mean(m.regularized_call(tokens, None, dropout_key=keys)[2])

    h, vjp = jax.vjp(top, params)
    h64 = np.asarray(h, np.float64)
    # the locked output mask (awd LockedDropout): entries 0 or 1/(1-p), one per row and unit
    from lmscale.models import lm as lm_module
    mask = np.asarray(reg.locked_mask(keys, lm_module._TAG_OUTPUT, p, B, H, jnp.float32), np.float64)
    assert np.all((mask == 0) | np.isclose(mask, 1 / (1 - p))) and 0 < np.mean(mask == 0) < 1
    ar, dar = np_ar(h64 * mask[None], alpha)
    tar, dtar = np_tar(h64, beta)
    np.testing.assert_allclose(float(penalty(params)), ar + tar, rtol=1e-5)
    cot = dar * mask[None] + dtar  # d/dh of AR(m h) + TAR(h)
    (want,) = vjp(jnp.asarray(cot, jnp.float32))
    got = jax.grad(penalty)(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-7)
