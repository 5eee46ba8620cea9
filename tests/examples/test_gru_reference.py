"""The example GRU kind (examples/gru_kind.py) against a float64 NumPy GRU written from its
documented equations (PyTorch's convention):

  r = sigmoid(x Wi_r + bi_r + h Wh_r + bh_r),  z = sigmoid(x Wi_z + bi_z + h Wh_z + bh_z)
  n = tanh(x Wi_n + bi_n + r * (h Wh_n + bh_n)),  h' = (1 - z) * n + z * h

with the registry's resets (resets[b, t]: h is zeroed before step t, registry.py), two
layers, a nonzero carry, every layer's features, the loss gradient (autodiff vs. the float64
backward through time written by hand), the update-bias setting and bfloat16 matmuls.
Tolerances: float32 1e-5; bfloat16: float64 on the bfloat16-rounded operands, with the
recurrent state rounded to bfloat16 before each h Wh product as documented ("products in
dtype, float32 sums/states"): 2e-3 absolute on states of size <= 1 (a few bfloat16 ulps of
|gh| ~ 1, accumulated over T = 6 steps)."""

from __future__ import annotations

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import registry
from tests.conftest import REPO

EXAMPLES = os.path.join(str(REPO), "examples")

B, T, E, H, V = 3, 6, 5, 4, 9


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _bf16(a):
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def np_gru_layer(xs, h0, wi, wh, bi, bh, resets, rnd=lambda a: a):
    """xs [T, B, I] -> (hs [T, B, H], cache for the backward)."""
    h = h0.copy()
    hs, cache = [], []
    for t in range(xs.shape[0]):
        h = np.where(resets[:, t][:, None], 0.0, h)
        a_i = rnd(xs[t]) @ rnd(wi) + bi
        a_h = rnd(h) @ rnd(wh) + bh
        r = sig(a_i[:, :H] + a_h[:, :H])
        z = sig(a_i[:, H:2 * H] + a_h[:, H:2 * H])
        n = np.tanh(a_i[:, 2 * H:] + r * a_h[:, 2 * H:])
        cache.append((xs[t], h, r, z, n, a_h))
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs), cache


def np_gru_layer_bwd(dhs, cache, wi, wh, resets):
    """Backward through time of one layer: dhs [T, B, H] -> (dxs, dwi, dwh, dbi, dbh, dh0)."""
    dwi, dwh = np.zeros_like(wi), np.zeros_like(wh)
    dbi, dbh = np.zeros(3 * H), np.zeros(3 * H)
    dxs = np.zeros((len(cache), B, wi.shape[0]))
    dh = np.zeros((B, H))
    for t in reversed(range(len(cache))):
        x, hp, r, z, n, a_h = cache[t]
        dh = dh + dhs[t]
        dz = dh * (hp - n) * z * (1 - z)
        dn = dh * (1 - z) * (1 - n ** 2)
        dr = dn * a_h[:, 2 * H:] * r * (1 - r)
        da_i = np.concatenate([dr, dz, dn], 1)
        da_h = np.concatenate([dr, dz, dn * r], 1)
        dwi += x.T @ da_i
        dwh += hp.T @ da_h
        dbi += da_i.sum(0)
        dbh += da_h.sum(0)
        dxs[t] = da_i @ wi.T
        dh = dh * z + da_h @ wh.T
        dh = np.where(resets[:, t][:, None], 0.0, dh)  # h was zeroed before step t
    return dxs, dwi, dwh, dbi, dbh, dh


def _params(layer):
    return [np.asarray(getattr(layer, n)[...], np.float64) for n in ("wi", "wh", "bi", "bh")]


@pytest.fixture(scope="module", autouse=True)
def gru_kind():
    global GRULM
    sys.path.insert(0, EXAMPLES)
    try:
        GRULM = importlib.import_module("gru_kind").GRULM
        yield
    finally:
        sys.path.remove(EXAMPLES)
        registry._KINDS.pop("gru", None)  # the other tests of this process see the built-ins
        sys.modules.pop("gru_kind", None)


def _model(dtype=jnp.float32, update_bias=0.0, seed=0):
    return GRULM(vocab_size=V, embed=E, hidden=H, layers=2, dtype=dtype,
                          update_bias=update_bias, rngs=nnx.Rngs(seed))


def _inputs():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    resets = np.zeros((B, T), bool)
    resets[0, 3] = resets[2, 1] = resets[1, 0] = True
    carry = [rng.normal(size=(B, H)) * 0.5 for _ in range(2)]
    targets = rng.integers(0, V, (B, T))
    return tokens, resets, carry, targets


def np_forward(model, tokens, resets, carry, rnd=lambda a: a):
    emb = np.asarray(model.embedding.embedding[...], np.float64)
    x = emb[tokens].transpose(1, 0, 2)  # [T, B, E]
    hs_all, caches, lasts = [], [], []
    for l, layer in enumerate(model.layers):
        x, cache = np_gru_layer(x, carry[l], *_params(layer), resets, rnd)
        hs_all.append(x)
        caches.append(cache)
        lasts.append(x[-1])
    k = np.asarray(model.decoder.kernel[...], np.float64)
    b = np.asarray(model.decoder.bias[...], np.float64)
    logits = (rnd(x) @ rnd(k) + b).transpose(1, 0, 2)  # [B, T, V]
    return logits, lasts, hs_all, caches


def test_forward_with_resets_carry_and_every_layers_features():
    model = _model()
    tokens, resets, carry, _ = _inputs()
    logits, lasts, hs_all, _ = np_forward(model, tokens, resets, carry)
    c = tuple(jnp.asarray(h, jnp.float32) for h in carry)
    got, new = jax.jit(lambda t, c, r: model(t, c, r))(jnp.asarray(tokens), c, jnp.asarray(resets))
    np.testing.assert_allclose(np.asarray(got), logits, rtol=1e-5, atol=1e-5)
    for g, w in zip(new, lasts):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
    feats = model.features(jnp.asarray(tokens), c, jnp.asarray(resets))["hidden"]  # [L, B, T, H]
    np.testing.assert_allclose(np.asarray(feats), np.stack([h.transpose(1, 0, 2) for h in hs_all]),
                               rtol=1e-5, atol=1e-6)


def test_loss_gradient_matches_backprop_through_time():
    model = _model()
    tokens, resets, carry, targets = _inputs()
    logits, _, hs_all, caches = np_forward(model, tokens, resets, carry)
    # mean cross entropy over B*T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dlogits = p - np.eye(V)[targets]
    dlogits /= B * T
    k = np.asarray(model.decoder.kernel[...], np.float64)
    top = hs_all[-1].transpose(1, 0, 2)  # [B, T, H]
    want = {"decoder.kernel": np.einsum("bth,btv->hv", top, dlogits),
            "decoder.bias": dlogits.sum((0, 1))}
    dh = np.einsum("btv,hv->tbh", dlogits, k)
    for l in reversed(range(2)):
        layer = model.layers[l]
        wi, wh, _, _ = _params(layer)
        dx, dwi, dwh, dbi, dbh, _ = np_gru_layer_bwd(dh, caches[l], wi, wh, resets)
        want.update({f"layers.{l}.wi": dwi, f"layers.{l}.wh": dwh, f"layers.{l}.bi": dbi,
                     f"layers.{l}.bh": dbh})
        dh = dx
    demb = np.zeros((V, E))
    np.add.at(demb, tokens.T, dh)
    want["embedding.embedding"] = demb

    graphdef, params = nnx.split(model, nnx.Param)
    c = tuple(jnp.asarray(h, jnp.float32) for h in carry)

    def loss(ps):
        m = nnx.merge(graphdef, ps)
        lg, _ = m(jnp.asarray(tokens), c, jnp.asarray(resets))
        lp = jax.nn.log_softmax(lg)
        return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(targets)[..., None], -1))

    got = jax.grad(loss)(params)
    flat = {".".join(str(k) for k in path): np.asarray(v[...] if hasattr(v, "__getitem__") else v)
            for path, v in nnx.to_flat_state(got)}
    assert set(flat) == set(want), (sorted(flat), sorted(want))
    for name, w in want.items():
        np.testing.assert_allclose(flat[name], w, rtol=1e-4, atol=1e-6, err_msg=name)


def test_update_bias_shifts_only_the_update_gates_input_bias():
    a, b = _model(update_bias=0.0, seed=3), _model(update_bias=1.5, seed=3)
    for la, lb in zip(a.layers, b.layers):
        d = np.asarray(lb.bi[...], np.float64) - np.asarray(la.bi[...], np.float64)
        np.testing.assert_allclose(d, np.r_[np.zeros(H), np.full(H, 1.5), np.zeros(H)], atol=1e-6)
        np.testing.assert_array_equal(np.asarray(la.bh[...]), np.asarray(lb.bh[...]))


def test_bfloat16_matmuls_match_float64_on_rounded_operands():
    model = _model(dtype=jnp.bfloat16)
    tokens, resets, carry, _ = _inputs()
    logits, lasts, _, _ = np_forward(model, tokens, resets, carry, rnd=_bf16)
    c = tuple(jnp.asarray(h, jnp.float32) for h in carry)
    got, new = jax.jit(lambda t, c, r: model(t, c, r))(jnp.asarray(tokens), c, jnp.asarray(resets))
    for g, w in zip(new, lasts):
        np.testing.assert_allclose(np.asarray(g), w, atol=2e-3)
    np.testing.assert_allclose(np.asarray(got), logits, atol=2e-3)
