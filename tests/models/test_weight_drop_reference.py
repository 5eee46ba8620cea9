"""Weight drop (DropConnect on W_h, W_mh) on a weight-normed layer, through the custom
backward, against the float64 NumPy loop: test_awd_regularizers checks the forward with plain
matrices only, and the gradient only against autodiff of the same JAX forward (grad_norm).

With weight norm the layer drops V and keeps s = g / ||v|| of the undropped V (weight_norm
folded into the products); the reference drops the normalized matrix:
W_h = M * (g v / ||v||) / (1 - p), M the layer's 0/1 mask (read from regularizers.weight_drop
on ones). So the gradient of v_h must include the ||v|| term of every column entry, dropped
or not; a dropped entry of W_h gets no gradient through the product.

Tolerances: forward float32 atol = rtol = 1e-5; bfloat16 atol 6e-3, float16 atol 1e-3 (as
test_recurrent_layouts_reference: unit roundoff 2^-9 / 2^-12 on the matmul operands, |h| < 1).
Gradients (float32) against central differences (step 1e-6) of the float64 loop: atol 2e-4,
rtol 1e-3 (as test_recurrent_layouts_reference; float32 sums over T*B*H terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import regularizers as reg
from lmscale.models.recurrent import scan_options
from tests.models.helpers import randomize_params
from tests.models.numpy_reference import np_rnn, np_weight_norm
from tests.models.test_recurrent import B, H, IN, LAYERS, T, inputs, make_resets

P = 0.4
KEY = jax.random.PRNGKey(11)
TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-5), jnp.bfloat16: dict(atol=6e-3, rtol=0),
       jnp.float16: dict(atol=1e-3, rtol=0)}
TAGS = {"w_h": 1, "w_mh": 0}  # the tags the layers draw each matrix's mask with


def _masks(kind, layer):
    names = ["w_h"] + (["w_mh"] if kind == "mlstm" else [])
    return {n: np.asarray(reg.weight_drop(jnp.ones_like(getattr(layer, n).v[...]), KEY, TAGS[n], P),
                          np.float64) * (1 - P) for n in names}


def _np_weights(kind, flat, masks):
    names = ["w_x", "w_h"] + (["w_mx", "w_mh"] if kind == "mlstm" else [])
    w = {n: np_weight_norm(flat[(n, "g")], flat[(n, "v")]) for n in names}
    for n, m in masks.items():
        w[n] = w[n] * m / (1 - P)
    w["b"] = flat[("bias",)]
    return w


def _flat(state):
    return {tuple(str(k) for k in path): np.asarray(v[...], np.float64)
            for path, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_weight_dropped_forward_matches_numpy(kind, dtype):
    layer = LAYERS[kind](IN, H, weight_norm=True, weight_drop=P, dtype=dtype, rngs=nnx.Rngs(1))
    randomize_params(layer, seed=2)
    xs, h0, c0 = inputs(0)
    resets = make_resets()
    masks = _masks(kind, layer)
    assert all(0.2 < 1 - m.mean() < 0.6 for m in masks.values())  # the masks drop entries
    hs, (h, c), _ = layer.scan_time_major(jnp.swapaxes(jnp.asarray(xs), 0, 1),
                                          (jnp.asarray(h0), jnp.asarray(c0)),
                                          jnp.asarray(resets).T, step_key=KEY)
    ref_hs, _, (ref_h, ref_c) = np_rnn(kind, xs, h0, c0,
                                       _np_weights(kind, _flat(nnx.state(layer, nnx.Param)), masks),
                                       resets)
    for name, got, want in [("hs", jnp.swapaxes(hs, 0, 1), ref_hs), ("h", h, ref_h), ("c", c, ref_c)]:
        np.testing.assert_allclose(np.asarray(got, np.float64), want, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("layout", ["feature", "batch"])
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_weight_dropped_gradients_match_finite_differences_of_numpy(kind, layout):
    layer = LAYERS[kind](IN, H, weight_norm=True, weight_drop=P, rngs=nnx.Rngs(3))
    randomize_params(layer, seed=4)
    xs, h0, c0 = inputs(5)
    rng = np.random.default_rng(7)
    probe = rng.normal(size=(B, T, H))
    resets = make_resets()
    masks = _masks(kind, layer)
    graphdef, params = nnx.split(layer, nnx.Param)

    def loss(params):
        hs, _, _ = nnx.merge(graphdef, params).scan_time_major(
            jnp.swapaxes(jnp.asarray(xs), 0, 1), (jnp.asarray(h0), jnp.asarray(c0)),
            jnp.asarray(resets).T, step_key=KEY)
        return jnp.sum(jnp.swapaxes(hs, 0, 1) * jnp.asarray(probe, jnp.float32))

    with scan_options(layout=layout, grad="custom"):
        got = _flat(jax.jit(jax.grad(loss))(params))
    flat = _flat(params)

    def np_loss(flat):
        hs, _, _ = np_rnn(kind, xs, h0, c0, _np_weights(kind, flat, masks), resets)
        return float(np.sum(hs * probe))

    eps, checked = 1e-6, 0
    for key, base in flat.items():
        picks = list(rng.choice(base.size, size=min(5, base.size), replace=False))
        if key[0] in masks and key[1] == "v":  # a dropped entry of V too (gradient via ||v|| only)
            picks.append(int(np.flatnonzero(masks[key[0]] == 0)[0]))
        for i in picks:
            idx = np.unravel_index(i, base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            fd = (np_loss({**flat, key: plus}) - np_loss({**flat, key: minus})) / (2 * eps)
            np.testing.assert_allclose(got[key][idx], fd, atol=2e-4, rtol=1e-3, err_msg=f"{key}{idx}")
            checked += 1
    assert checked >= 5 * len(flat)
