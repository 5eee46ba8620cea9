"""TransformerLM: NumPy reference, masks, scan/remat/decode equivalences, precision, dropout,
validation and FLOPs against XLA's cost analysis. Small dims, CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model, count_params, flops_per_token, get_kind
from lmscale.models.transformer import TransformerLM
from lmscale.models.transformer_block import Block, sinusoidal
from lmscale.training.flops import recompute_flops_per_token
from tests.models.helpers import randomize_params
from tests.models.numpy_reference import np_weight_norm
from tests.models.numpy_transformer import np_block, np_sinusoidal, np_transformer

V, D, H, FF, L, MAXLEN = 50, 32, 2, 64, 2, 16


def make(seed: int = 0, randomize: bool = True, **kw) -> TransformerLM:
    args = dict(vocab_size=V, layers=L, d_model=D, heads=H, d_ff=FF, max_len=MAXLEN)
    args.update(kw)
    model = TransformerLM(**args, rngs=nnx.Rngs(seed))
    if randomize:
        randomize_params(model, seed + 100, scale=0.3)
    return model


def tokens(seed: int, shape=(2, 12)) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, V, dtype=jnp.int32)


def _matrix(m: dict) -> np.ndarray:
    if "g" in m:
        return np_weight_norm(m["g"], m["v"])
    return np.asarray(m["kernel"], np.float64)


def block_weights(p: dict) -> dict:
    """NumPy weights of one Block from its pure param dict (not stacked)."""
    f = lambda a: np.asarray(a, np.float64)
    qkv, bqkv = _matrix(p["qkv"]), f(p["qkv_bias"])
    return {"wq": qkv[:, :D], "wk": qkv[:, D:2 * D], "wv": qkv[:, 2 * D:],
            "bq": bqkv[:D], "bk": bqkv[D:2 * D], "bv": bqkv[2 * D:],
            "wo": _matrix(p["out"]), "bo": f(p["out_bias"]),
            "w1": _matrix(p["fc1"]), "b1": f(p["fc1_bias"]),
            "w2": _matrix(p["fc2"]), "b2": f(p["fc2_bias"]),
            "ln1_scale": f(p["ln_attn"]["scale"]), "ln1_bias": f(p["ln_attn"]["bias"]),
            "ln2_scale": f(p["ln_ff"]["scale"]), "ln2_bias": f(p["ln_ff"]["bias"])}


def model_weights(model: TransformerLM) -> dict:
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    f = lambda a: np.asarray(a, np.float64)
    w = {"embedding": f(p["embedding"]),
         "positions": f(p["position_embedding"]) if "position_embedding" in p else None,
         "blocks": [block_weights(jax.tree.map(lambda a: a[l], p["blocks"]))
                    for l in range(model.num_layers)]}
    if "final_norm" in p:
        w["final_scale"], w["final_bias"] = f(p["final_norm"]["scale"]), f(p["final_norm"]["bias"])
    if model.tie_embeddings:
        w["head"], w["head_bias"] = w["embedding"].T, None
    else:
        w["head"], w["head_bias"] = _matrix(p["head"]), f(p["head_bias"])
    return w


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_block_matches_numpy(norm, weight_norm):
    block = Block(D, H, FF, norm=norm, weight_norm=weight_norm, rngs=nnx.Rngs(0))
    randomize_params(block, 1, scale=0.3)
    x = jax.random.normal(jax.random.key(2), (2, 9, D), jnp.float32)
    attend = lambda q, k, v: (jax.nn.dot_product_attention(q, k, v, is_causal=True), None)
    got, _ = block(x, attend, lambda site, h: h, jnp.float32)
    w = block_weights(nnx.to_pure_dict(nnx.state(block, nnx.Param)))
    want = np_block(np.asarray(x, np.float64), w, H, norm, np.zeros((2, 9), np.int64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm,positions,weight_norm,tie", [
    ("post", "learned", True, False), ("pre", "sinusoidal", False, True),
    ("pre", "learned", True, False), ("post", "sinusoidal", False, False)])
def test_model_matches_numpy(norm, positions, weight_norm, tie):
    model = make(norm=norm, positions=positions, weight_norm=weight_norm, tie_embeddings=tie)
    tok = tokens(3)
    resets = np.zeros(tok.shape, bool)
    resets[0, 5] = resets[1, 0] = resets[1, 7] = True
    logits, carry = model(tok, model.initial_carry(2), jnp.asarray(resets))
    feats = model.features(tok, (), jnp.asarray(resets))
    want_logits, want_hidden = np_transformer(np.asarray(tok), model_weights(model), heads=H,
                                              norm=norm, resets=resets)
    assert carry == () and logits.dtype == jnp.float32 and logits.shape == (2, 12, V)
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-5, atol=2e-5)
    assert feats["hidden"].shape == (L, 2, 12, D) and feats["carry"] == ()
    np.testing.assert_allclose(np.asarray(feats["hidden"]), want_hidden, rtol=1e-5, atol=2e-5)


def test_sinusoidal_table_and_param_counts():
    for dim in (7, 32):
        np.testing.assert_allclose(np.asarray(sinusoidal(jnp.arange(20), dim)),
                                   np_sinusoidal(np.arange(20), dim), atol=1e-5)
    learned, fixed = make(randomize=False), make(randomize=False, positions="sinusoidal")
    assert count_params(learned) - count_params(fixed) == MAXLEN * D
    tok = tokens(4)
    assert not np.allclose(learned(tok)[0], fixed(tok)[0])


def test_causality():
    model = make()
    tok = tokens(5)
    base = np.asarray(model(tok)[0])
    for t in (0, 4, 10):
        changed = tok.at[:, t + 1:].set((tok[:, t + 1:] + 7) % V)
        out = np.asarray(model(changed)[0])
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_segments(norm):
    model = make(norm=norm)
    tok, r = tokens(6), 5
    resets = jnp.zeros(tok.shape, bool).at[:, r].set(True)
    full = np.asarray(model(tok, (), resets)[0])
    tail = np.asarray(model(tok[:, r:])[0])
    np.testing.assert_allclose(full[:, r:], tail, rtol=1e-5, atol=1e-5)
    other = tok.at[:, :r].set((tok[:, :r] + 3) % V)
    np.testing.assert_allclose(np.asarray(model(other, (), resets)[0])[:, r:], full[:, r:],
                               rtol=1e-6, atol=1e-6)
    head = np.asarray(model(tok[:, :r])[0])
    np.testing.assert_allclose(full[:, :r], head, rtol=1e-5, atol=1e-5)


def _loss(model, tok, key=None):
    logits, _ = model(tok, (), dropout_key=key)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, tok[..., None], -1)[..., 0])


def _value_and_grad(model, tok, key=None):
    graphdef, params = nnx.split(model, nnx.Param)
    f = lambda p: _loss(nnx.merge(graphdef, p), tok, key)
    return jax.jit(jax.value_and_grad(f))(params)


def _assert_trees_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_scanned_equals_unscanned():
    drop = dict(dropout=0.1, ff_dropout=0.1)  # (attention dropout: same per-layer sites)
    scanned, loop = make(**drop), make(**drop, scan_layers=False)
    tok, key = tokens(7), jax.random.key(8)
    np.testing.assert_allclose(np.asarray(scanned.features(tok)["hidden"]),
                               np.asarray(loop.features(tok)["hidden"]), rtol=1e-6, atol=1e-6)
    (l1, g1), (l2, g2) = _value_and_grad(scanned, tok, key), _value_and_grad(loop, tok, key)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    _assert_trees_close(g1, g2, 1e-5)


def test_remat_equals_no_remat():
    drop = dict(dropout=0.1, ff_dropout=0.1)
    plain, remat = make(**drop), make(**drop, remat="block")
    tok, key = tokens(7), jax.random.key(9)
    (l1, g1), (l2, g2) = _value_and_grad(plain, tok, key), _value_and_grad(remat, tok, key)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    _assert_trees_close(g1, g2, 1e-5)


@pytest.mark.parametrize("norm,scan", [("post", True), ("pre", False)])
def test_decode_matches_full_forward(norm, scan):
    model = make(norm=norm, scan_layers=scan, weight_norm=True)
    tok = tokens(9, (3, 10))
    full = np.asarray(model(tok)[0])
    state = model.init_decode(3, 10)
    step = jax.jit(lambda m, t, s: m.decode_step(t, s))
    for t in range(10):
        logits, state = step(model, tok[:, t], state)
        assert logits.shape == (3, V) and logits.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=1e-5)
    assert int(state["pos"]) == 10 and len(state["k"]) == L
    assert state["k"][0].shape == (3, H, D // H, 10) and state["v"][0].shape == (3, H, 10, D // H)
    with pytest.raises(ValueError, match="max_len=16"):
        model.init_decode(1, MAXLEN + 1)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_close_to_float32_and_finite_grads(dtype):
    f32 = make(weight_norm=True, norm="pre")
    half = make(weight_norm=True, norm="pre", dtype=dtype)
    tok = tokens(11)
    a, b = np.asarray(f32(tok)[0]), np.asarray(half(tok)[0])
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    _, grads = _value_and_grad(half, tok, jax.random.key(0))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_dropout_per_row_keys_and_determinism():
    model = make(dropout=0.2, attn_dropout=0.2, ff_dropout=0.2)
    tok, other = tokens(12, (3, 12)), tokens(13, (3, 12))
    mixed = other.at[0].set(tok[0])
    keys = jax.random.key_data(jax.random.split(jax.random.key(1), 3))  # raw uint32 [3, 2]
    other_keys = keys.at[1:].set(jax.random.key_data(jax.random.split(jax.random.key(2), 2)))
    fwd = jax.jit(lambda m, t, k: m(t, (), dropout_key=k)[0])
    a, b = fwd(model, tok, keys), fwd(model, mixed, other_keys)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(a[1:]), np.asarray(b[1:]), atol=1e-3)
    det_fwd = jax.jit(lambda m, t: m(t)[0])
    det = np.asarray(det_fwd(model, tok))
    np.testing.assert_array_equal(det, np.asarray(det_fwd(model, tok)))
    np.testing.assert_allclose(det, np.asarray(det_fwd(make(), tok)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(a), det, atol=1e-3)
    one = fwd(model, tok, jax.random.key_data(jax.random.key(3)))  # one key for the batch
    assert not np.allclose(np.asarray(one), det, atol=1e-3)


def _config(**overrides):
    m = ml_collections.ConfigDict(dict(
        kind="transformer", layers=2, dropout=0.0, weight_norm=True, d_model=32, heads=2,
        d_ff=64, max_len=16, norm="post", positions="learned", attn_dropout=0.0,
        ff_dropout=0.0, tie_embeddings=False, remat="none", scan_layers=True))
    m.update(overrides)
    return m


@pytest.mark.parametrize("overrides,seq_len,match", [
    (dict(d_model=30, heads=4), 8, r"model.d_model=30 is not divisible by model.heads=4"),
    ({}, 17, r"train.seq_len=17 exceeds model.max_len=16"),
    (dict(norm="sandwich"), 8, r"model.norm"),
    (dict(positions="rotary"), 8, r"model.positions"),
    (dict(remat="full"), 8, r"model.remat"),
    (dict(attn_dropout=1.0), 8, r"model.attn_dropout"),
    (dict(dropout=-0.1), 8, r"model.dropout"),
    (dict(layers=0), 8, r"model.layers"),
    (dict(d_ff=0), 8, r"model.d_ff"),
])
def test_validate_errors(overrides, seq_len, match):
    kind = get_kind("transformer")
    with pytest.raises(ValueError, match=match):
        kind.validate(_config(**overrides), ml_collections.ConfigDict(dict(seq_len=seq_len)))


def test_registry_build_describe_and_param_count():
    m = _config()
    kind = get_kind("transformer")
    kind.validate(m, ml_collections.ConfigDict(dict(seq_len=16)))
    assert kind.describe(m) == "transformer 2x32 heads 2 ff 64 max_len 16 post-norm weight-norm"
    assert "dropout" not in kind.fields and "d_model" in kind.fields
    model = build_model(m, V, rngs=nnx.Rngs(0))
    assert isinstance(model, TransformerLM) and model.max_len == 16
    assert model.feature_width == D and model.num_layers == 2
    assert model.feature_states == ("hidden",)
    per_block = 4 * D * D + 4 * D + 2 * D * FF + FF + D + 4 * D + (3 * D + D + FF + D)  # + g's
    assert count_params(model) == V * D + 16 * D + L * per_block + D * V + 2 * V
    leaves = lambda *f: len(jax.tree.leaves(nnx.state(model, *f)))
    assert leaves() == leaves(nnx.Param)  # parameters only: nnx.split(model, nnx.Param) is all
    with pytest.raises(ValueError, match="max_len=16"):
        model(tokens(0, (1, 17)))
    c = default_config()  # every field the kind reads exists in the real config
    c.model.kind, c.model.layers = "transformer", 12
    c.train.seq_len = 64
    kind.validate(c.model, c.train)
    assert kind.describe(c.model) == ("transformer 12x768 heads 8 ff 3072 max_len 256 post-norm"
                                      " weight-norm")
    abstract = nnx.eval_shape(lambda: build_model(c.model, 32001, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n > 12 * (4 * 768 ** 2 + 2 * 768 * 3072) + 2 * 32001 * 768


@pytest.mark.parametrize("remat", ["none", "block"])
def test_training_flops_match_xla_cost_analysis(remat):
    """3 x forward (+ with remat="block" the blocks' forward again,
    ``bench.recompute_flops_per_token``) within 10 % of XLA's count of the gradient."""
    m = _config(layers=2, d_model=128, heads=4, d_ff=512, max_len=64, weight_norm=False,
                scan_layers=False, remat=remat)
    vocab, batch, seq = 256, 2, 64
    model = build_model(m, vocab, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tok = jnp.zeros((batch, seq), jnp.int32)
    step = jax.jit(jax.grad(lambda p: _loss(nnx.merge(graphdef, p), tok)))
    cost = step.lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    measured = cost["flops"] / (batch * seq)
    predicted = 3 * flops_per_token(m, vocab, seq) + recompute_flops_per_token(m, seq)
    blocks = 2 * 2 * (4 * 128 ** 2 + 2 * 128 * 512) + 4 * 2 * seq * 128  # forward, per token
    assert predicted == 3 * (blocks + 2 * 128 * vocab) + (blocks if remat == "block" else 0)
    print(f"training FLOPs/token: XLA {measured:.0f}, formula {predicted}, "
          f"ratio {measured / predicted:.3f}")
    assert abs(measured / predicted - 1) < 0.10


@pytest.mark.parametrize("weight_norm", [True, False])
def test_the_fused_qkv_starts_as_fairseqs_in_proj(weight_norm):
    """sentiment-discovery's attention (fairseq's in_proj) draws q, k and v as one Xavier-
    uniform (3d, d) matrix: bound sqrt(6 / 4d), std sqrt(1 / 2d). Each drawn as a (d, d)
    Xavier was sqrt(2) wider (attention logits at the start twice as spread)."""
    d = 256
    block = Block(d, 4, 4 * d, norm="post", weight_norm=weight_norm, rngs=nnx.Rngs(0))
    w = np.asarray(block.matrices()["qkv"])  # the effective matrix (v at the start)
    assert w.shape == (d, 3 * d)
    bound = (6 / (4 * d)) ** 0.5
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), (1 / (2 * d)) ** 0.5, rtol=0.02)
    for part in np.split(w, 3, axis=1):  # q, k, v alike
        np.testing.assert_allclose(part.std(), w.std(), rtol=0.03)
