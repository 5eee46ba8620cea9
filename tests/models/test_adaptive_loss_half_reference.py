"""The adaptive softmax loss (models/adaptive_loss.py) with bfloat16 / float16 products against
a float64 NumPy reference written from Grave et al. 2017 (head softmax over the head words and
one tombstone per tail cluster; a tail word: log p(tombstone_i) + log p(word | cluster i)),
value and analytic gradient (dz = w * (softmax - onehot) of the head and of the target's
cluster), evaluated at the inputs rounded to the compute dtype.

Tolerances. Forward: products of two 2-byte floats are exact in float32 and are summed in
float32 (H = 16 terms), so the loss matches the float64 sum on the rounded inputs to float32
accuracy: rtol 1e-5. Backward: the cotangent dz is rounded to the compute dtype before each
product (fast_dot / the cluster VJP), so each gradient element may err by at most
u * sum_j |dz_j| |operand_j| (u = unit roundoff, 2^-8 bfloat16, 2^-11 float16) plus float32
summation; the test allows 2u times that bound (+1e-6). dbias and dtail_bias are float32 sums
of dz (not rounded): rtol 1e-5 + atol 1e-6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.models.adaptive_loss import adaptive_nll_sums

N, H, V, CUTS = 200, 16, 40, (8, 20, 31)
UNIT = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def _data(seed: int):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, H)).astype(np.float32)
    words = (rng.normal(size=(V, H)) * 0.4).astype(np.float32)
    bias = (rng.normal(size=V) * 0.1).astype(np.float32)
    tails = (rng.normal(size=(len(CUTS), H)) * 0.4).astype(np.float32)
    tail_bias = (rng.normal(size=len(CUTS)) * 0.1).astype(np.float32)
    targets = rng.integers(0, V, N).astype(np.int32)
    weights = (rng.random(N) < 0.85).astype(np.float32) * rng.uniform(0.5, 1.0, N).astype(np.float32)
    return h, words, bias, tails, tail_bias, targets, weights


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_reference(h, words, bias, tails, tail_bias, targets, weights):
    """(loss, grads (dh, dwords, dbias, dtails, dtail_bias), |dz|-bounds for dh, dwords, dtails),
    float64, from the equations."""
    h, words, bias, tails, tail_bias, weights = (np.asarray(x, np.float64) for x in
                                                 (h, words, bias, tails, tail_bias, weights))
    c1, k = CUTS[0], len(CUTS)
    bounds = (0, *CUTS, V)
    # one matrix of all "output vectors": V words then k tombstones; dz over it per row
    out = np.concatenate([words, tails])          # [V + k, H]
    out_b = np.concatenate([bias, tail_bias])
    dz = np.zeros((N, V + k))
    loss = 0.0
    for n in range(N):
        y = int(targets[n])
        head_idx = np.r_[0:c1, V:V + k]
        zh = out[head_idx] @ h[n] + out_b[head_idx]
        ph = _softmax(zh)
        i = int(np.searchsorted(CUTS, y, side="right"))  # 0 head, else cluster i
        pos = y if i == 0 else c1 + i - 1
        lp = np.log(ph[pos])
        g = ph.copy()
        g[pos] -= 1.0
        dz[n, head_idx] += weights[n] * g
        if i > 0:
            a, b = bounds[i], bounds[i + 1]
            zc = words[a:b] @ h[n] + bias[a:b]
            pc = _softmax(zc)
            lp += np.log(pc[y - a])
            gc = pc.copy()
            gc[y - a] -= 1.0
            dz[n, a:b] += weights[n] * gc
        loss -= weights[n] * lp
    dh = dz @ out
    dout = dz.T @ h
    db = dz.sum(0)
    bound_h = np.abs(dz) @ np.abs(out)
    bound_out = np.abs(dz).T @ np.abs(h)
    grads = (dh, dout[:V], db[:V], dout[V:], db[V:])
    return loss, grads, (bound_h, bound_out[:V], bound_out[V:])


def _mine(dtype, targets, weights, transposed=True):
    def f(h, words, bias, tails, tail_bias):
        w = words if transposed else words.T
        return adaptive_nll_sums(h, w, bias, tails, tail_bias, CUTS, jnp.asarray(targets),
                                 jnp.asarray(weights), dtype, transposed)[0]
    return f


@pytest.mark.parametrize("transposed", [True, False], ids=["tied", "kernel"])
@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_half_products_match_float64_on_the_rounded_inputs(name, transposed):
    dtype = jnp.dtype(name)
    h, words, bias, tails, tail_bias, targets, weights = _data(1)
    rounded = [np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32)) for x in (h, words, tails)]
    loss, grads, bnd = np_reference(rounded[0], rounded[1], bias, rounded[2], tail_bias, targets,
                                    weights)
    args = tuple(jnp.asarray(x) for x in (h, words, bias, tails, tail_bias))
    f = _mine(dtype, targets, weights, transposed)
    got, got_grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))(*args)
    np.testing.assert_allclose(float(got), loss, rtol=1e-5)
    u = UNIT[name]
    names = ("dh", "dwords", "dbias", "dtails", "dtail_bias")
    bounds = {"dh": bnd[0], "dwords": bnd[1], "dtails": bnd[2]}
    for nm, g, want in zip(names, got_grads, grads):
        g = np.asarray(g, np.float64)
        assert g.shape == want.shape, nm
        if nm in bounds:
            err = np.abs(g - want)
            allowed = 2 * u * bounds[nm] + 1e-6
            worst = float(np.max(err / allowed))
            assert worst <= 1.0, f"{nm}: error {worst:.2f}x the rounding bound"
        else:
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=nm)


def test_float32_gradients_match_float64_tightly():
    h, words, bias, tails, tail_bias, targets, weights = _data(2)
    loss, grads, _ = np_reference(h, words, bias, tails, tail_bias, targets, weights)
    args = tuple(jnp.asarray(x) for x in (h, words, bias, tails, tail_bias))
    got, got_grads = jax.jit(jax.value_and_grad(_mine(jnp.float32, targets, weights),
                                                argnums=(0, 1, 2, 3, 4)))(*args)
    np.testing.assert_allclose(float(got), loss, rtol=1e-5)
    for g, want in zip(got_grads, grads):
        np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=1e-5, atol=1e-5)
