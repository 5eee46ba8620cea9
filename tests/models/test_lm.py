"""RecurrentLM vs NumPy; split/merge + jit + grad; weight-norm grads; dropout; build_model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.models import (MODEL_KINDS, RecurrentLM, build_model, count_params,
                            flops_per_token)
from tests.models.helpers import layer_weights, randomize_params
from tests.models.numpy_reference import np_lm

B, T, V, E, H = 3, 7, 11, 6, 8


def model_config(**kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(kind="mlstm", hidden=H, embed=E, layers=2, dropout=0.0,
                                       weight_norm=True))
    c.update(kw)
    return c


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    resets = np.zeros((B, T), bool)
    resets[0, 3] = resets[1, 0] = resets[1, 5] = True
    return tokens, resets


def loss_fn(model: RecurrentLM, tokens, carry, resets, key=None):
    logits, new_carry = model(tokens, carry, resets, dropout_key=key)
    targets = jnp.roll(tokens, -1, axis=1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
    return nll.mean(), new_carry


@pytest.mark.parametrize("kind", ["lstm", "mlstm"])
def test_lm_matches_numpy(kind):
    model = RecurrentLM(kind=kind, vocab_size=V, embed=E, hidden=H, layers=2, rngs=nnx.Rngs(0))
    randomize_params(model, seed=1)
    tokens, resets = batch()
    rng = np.random.default_rng(2)
    carry = tuple((rng.uniform(-0.5, 0.5, (B, H)).astype(np.float32),
                   rng.uniform(-1, 1, (B, H)).astype(np.float32)) for _ in range(2))
    logits, new_carry = model(jnp.asarray(tokens), jax.tree.map(jnp.asarray, carry),
                              jnp.asarray(resets))
    ref_logits, ref_carry = np_lm(kind, tokens, model.embedding.embedding[...],
                                  [layer_weights(l) for l in model.layers],
                                  model.decoder.kernel[...], model.decoder.bias[...], carry, resets)
    assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5, rtol=1e-5)
    for (h, c), (rh, rc) in zip(new_carry, ref_carry):
        np.testing.assert_allclose(np.asarray(h), rh, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(c), rc, atol=1e-5, rtol=1e-5)
    feats = model.features(jnp.asarray(tokens), jax.tree.map(jnp.asarray, carry), jnp.asarray(resets))
    assert feats["hidden"].shape == feats["cell"].shape == (2, B, T, H)
    np.testing.assert_allclose(np.asarray(feats["cell"][:, :, -1]),
                               np.stack([c for _, c in ref_carry]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(feats["hidden"][-1, :, -1]), ref_carry[-1][0],
                               atol=1e-5, rtol=1e-5)


def test_params_only_and_weight_norm_placement():
    model = build_model(model_config(), V, rngs=nnx.Rngs(0))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert len(jax.tree.leaves(rest)) == 0  # no RNG or other state
    paths = {"/".join(str(k) for k in p) for p, _ in nnx.to_flat_state(params)}
    assert paths >= {"embedding/embedding", "decoder/kernel", "decoder/bias"}
    assert not any(p.startswith(("embedding", "decoder")) and p.endswith(("/g", "/v"))
                   for p in paths)
    for l in range(2):
        for m in ["w_x", "w_mx", "w_mh", "w_h"]:
            assert {f"layers/{l}/{m}/g", f"layers/{l}/{m}/v"} <= paths
    plain = build_model(model_config(weight_norm=False), V, rngs=nnx.Rngs(0))
    plain_paths = {"/".join(str(k) for k in p) for p, _ in nnx.to_flat_state(nnx.state(plain, nnx.Param))}
    assert "layers/1/w_h/kernel" in plain_paths and not any(p.endswith("/g") for p in plain_paths)
    # Init ranges: embedding / decoder uniform(+-0.1), decoder bias 0.
    assert np.abs(np.asarray(model.embedding.embedding[...])).max() <= 0.1
    assert np.abs(np.asarray(model.decoder.kernel[...])).max() <= 0.1
    np.testing.assert_array_equal(np.asarray(model.decoder.bias[...]), 0.0)


def test_split_merge_jit_grad_and_weight_norm_grads():
    """The trainer's pattern: split -> jit(grad(merge -> loss)); g and v get nonzero grads."""
    model = build_model(model_config(dropout=0.2), V, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens, resets = batch()
    carry = model.initial_carry(B)

    @jax.jit
    def step(params, carry, key):
        def loss(p):
            return loss_fn(nnx.merge(graphdef, p), tokens, carry, resets, key)
        (value, new_carry), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, new_carry, grads

    value, new_carry, grads = step(params, carry, jax.random.PRNGKey(0))
    assert np.isfinite(float(value))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, g in nnx.to_flat_state(grads):
        assert float(jnp.abs(g[...]).max()) > 0, path
    for l in range(2):
        for m in ["w_x", "w_mx", "w_mh", "w_h"]:
            assert float(jnp.abs(grads["layers"][l][m]["g"][...]).max()) > 0
            assert float(jnp.abs(grads["layers"][l][m]["v"][...]).max()) > 0
    assert all(x.dtype == jnp.float32 and x.shape == (B, H) for x in jax.tree.leaves(new_carry))
    # A step of SGD on the State lowers the loss (grads are usable as an update).
    lr = 0.5
    new_params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    value2, _, _ = step(new_params, carry, jax.random.PRNGKey(0))
    assert float(value2) < float(value)


def test_dropout():
    tokens, resets = batch()
    tokens, resets = jnp.asarray(tokens), jnp.asarray(resets)
    cfg = model_config(dropout=0.5)
    model = build_model(cfg, V, rngs=nnx.Rngs(0))
    carry = model.initial_carry(B)
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    a1, _ = model(tokens, carry, resets, dropout_key=k1)
    a2, _ = model(tokens, carry, resets, dropout_key=k1)
    b1, _ = model(tokens, carry, resets, dropout_key=k2)
    e1, _ = model(tokens, carry, resets)
    e2, _ = model(tokens, carry, resets)
    nodrop = build_model(model_config(dropout=0.0), V, rngs=nnx.Rngs(0))
    e0, _ = nodrop(tokens, carry, resets, dropout_key=k1)
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    np.testing.assert_allclose(np.asarray(e1), np.asarray(e0), atol=1e-6)
    assert not np.allclose(np.asarray(a1), np.asarray(b1))
    assert not np.allclose(np.asarray(a1), np.asarray(e1))
    # A single layer has no between-layer dropout.
    one = build_model(model_config(dropout=0.5, layers=1), V, rngs=nnx.Rngs(0))
    c1 = one.initial_carry(B)
    np.testing.assert_array_equal(np.asarray(one(tokens, c1, resets, dropout_key=k1)[0]),
                                  np.asarray(one(tokens, c1, resets)[0]))


def test_bfloat16_lm():
    tokens, resets = map(jnp.asarray, batch())
    m32 = build_model(model_config(), V, rngs=nnx.Rngs(0))
    m16 = build_model(model_config(), V, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    l32, _ = m32(tokens, m32.initial_carry(B), resets)
    l16, c16 = m16(tokens, m16.initial_carry(B), resets)
    assert l16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(c16))
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=2e-2)
    graphdef, params = nnx.split(m16, nnx.Param)
    grads = jax.jit(jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), tokens,
                                               m16.initial_carry(B), resets)[0]))(params)
    for g in jax.tree.leaves(grads):  # float32 params get finite float32 grads
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_build_model_errors_and_counts():
    with pytest.raises(ValueError, match=r"unknown model.kind 'no_such_kind'; expected one of \['lstm', 'mlstm', 'qrnn', 'transformer'\] \(a kind of your own registers itself when its module is imported: name the module in LMSCALE_MODEL_MODULES"):
        build_model(model_config(kind="no_such_kind"), V, rngs=nnx.Rngs(0))
    assert set(MODEL_KINDS) == {"lstm", "mlstm", "qrnn", "transformer"}
    model = build_model(model_config(), V, rngs=nnx.Rngs(0))
    assert isinstance(model, RecurrentLM)
    per_layer = lambda i: (i * 4 * H + 4 * H) + (i * H + H) + (H * H + H) + (H * 4 * H + 4 * H) + 4 * H
    assert count_params(model) == V * E + per_layer(E) + per_layer(H) + H * V + V
    macs = (E * 4 * H + E * H + H * H + H * 4 * H) + (H * 4 * H + H * H + H * H + H * 4 * H) + H * V
    assert flops_per_token(model_config(), V) == 2 * macs
    assert flops_per_token(model_config(kind="lstm", layers=1), V) == 2 * (E * 4 * H + H * 4 * H + H * V)


@pytest.mark.parametrize("kind,dtype,tol", [("mlstm", jnp.float32, 1e-5), ("lstm", jnp.float32, 1e-5),
                                            ("qrnn", jnp.float32, 1e-5), ("mlstm", jnp.bfloat16, 2e-2)])
def test_decode_steps_with_prepared_weights_match_the_full_pass(kind, dtype, tol):
    """Generation prepares the weights once (``prepare_decode``: weight norm, cast, the
    forward loop's transposes) and runs ``decode_step`` per token with them: the logits and
    the state equal one pass over the whole sequence (bfloat16: within its rounding)."""
    extra = {"qrnn_window": 2} if kind == "qrnn" else {}
    model = build_model(model_config(kind=kind, **extra), V, rngs=nnx.Rngs(0), dtype=dtype)
    randomize_params(model, seed=4)
    tokens = jnp.asarray(batch()[0])
    logits, carry = jax.jit(lambda t: model(t, None))(tokens)
    prepared = jax.jit(model.prepare_decode)()
    assert len(prepared) == 2 and (prepared[0] is None) == (kind == "qrnn")
    step = jax.jit(lambda t, s, p: model.decode_step(t, s, p))
    state, out = model.init_decode(B), []
    for t in range(T):
        logit, state = step(tokens[:, t], state, prepared)
        out.append(logit)
    np.testing.assert_allclose(np.stack(out, 1), np.asarray(logits), rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(carry)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_initial_carry_is_zeros_with_the_batch_first(kind):
    """The interface's promise that callers rely on when they fill the carry on the host from
    its shapes (``training.state.zero_carry``): every kind's initial carry is zeros, each leaf
    with the batch as its leading axis (the transformer's is empty)."""
    from lmscale.config import default_config
    from lmscale.training import mesh as mesh_lib
    from lmscale.training.state import zero_carry
    config = default_config().model
    config.update({"kind": kind, "hidden": H, "embed": E, "layers": 2, "d_model": 16, "heads": 2,
                   "d_ff": 24, "qrnn_window": 2})
    model = build_model(config, V, rngs=nnx.Rngs(0))
    carry = model.initial_carry(5)
    assert (carry == ()) == (kind == "transformer")
    filled = zero_carry(model.initial_carry, 5, mesh_lib.replicated(mesh_lib.make_mesh()))
    assert jax.tree.structure(filled) == jax.tree.structure(carry)
    for leaf, host in zip(jax.tree.leaves(carry), jax.tree.leaves(filled)):
        assert leaf.shape[0] == 5 and leaf.shape == host.shape and leaf.dtype == host.dtype
        assert not np.asarray(leaf).any()
