"""TransformerLM against the float64 NumPy reference (tests/models/numpy_transformer.py):
the reduced-precision forward, and the gradient of the whole model (embedding, positions,
LayerNorm, GeLU, attention, weight norm, head) - test_transformer checks the float32 forward
only, and reduced precision only against float32 (5% of the largest logit).

Tolerances (u = unit roundoff: bfloat16 2^-9 ~ 2.0e-3, float16 2^-12 ~ 2.4e-4):
  * forward logits, compute dtype d: atol 8 u_d * max|logit| (every matmul's operands are
    rounded to d, two blocks of three chained products plus the head; seen 2.3 u bfloat16,
    2.8 u float16, both norms); float32 as test_transformer (rtol 1e-5, atol 2e-5).
  * float32 gradient of the mean NLL, 2 random entries of every parameter, against central
    differences (step 1e-5) of the float64 NumPy loss: truncation ~1e-10; atol 1e-6 + rtol
    1e-4 (float32 rounding of sums over B*T*V terms; 1.6e-8 seen).
  * 2-byte gradients against the float32 ones just checked: per parameter, max abs difference
    <= 16 u_d * max|float32 gradient| (seen 6.8 u bfloat16, 6.6 u float16).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.models.numpy_transformer import np_transformer
from tests.models.test_transformer import H, L, _matrix, block_weights, make, tokens

U = {jnp.bfloat16: 2.0 ** -9, jnp.float16: 2.0 ** -12}
CONFIGS = [dict(norm="pre", positions="learned", weight_norm=True, tie_embeddings=False),
           dict(norm="post", positions="sinusoidal", weight_norm=False, tie_embeddings=True)]


def weights_from_pure(p: dict, tie: bool) -> dict:
    f = lambda a: np.asarray(a, np.float64)
    w = {"embedding": f(p["embedding"]),
         "positions": f(p["position_embedding"]) if "position_embedding" in p else None,
         "blocks": [block_weights(jax.tree.map(lambda a: a[l], p["blocks"])) for l in range(L)]}
    if "final_norm" in p:
        w["final_scale"], w["final_bias"] = f(p["final_norm"]["scale"]), f(p["final_norm"]["bias"])
    if tie:
        w["head"], w["head_bias"] = w["embedding"].T, None
    else:
        w["head"], w["head_bias"] = _matrix(p["head"]), f(p["head_bias"])
    return w


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _batch():
    tok = tokens(3, (2, 7))
    targets = np.asarray(tokens(4, (2, 7)))
    resets = np.zeros(tok.shape, bool)
    resets[0, 3] = True
    return tok, targets, resets


def _grads(model, tok, targets, resets):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params, rest)(tok, (), jnp.asarray(resets))
        lp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(targets)[..., None], -1))

    return params, nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["pre", "post"])
def test_forward_matches_numpy_in_each_dtype(cfg, dtype):
    model = make(dtype=dtype, **cfg)
    tok, _, resets = _batch()
    logits, _ = model(tok, (), jnp.asarray(resets))
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    want, _ = np_transformer(np.asarray(tok), weights_from_pure(p, cfg["tie_embeddings"]),
                             heads=H, norm=cfg["norm"], resets=resets)
    assert logits.dtype == jnp.float32
    tol = (dict(rtol=1e-5, atol=2e-5) if dtype == jnp.float32
           else dict(rtol=0, atol=8 * U[dtype] * np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(logits, np.float64), want, **tol)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["pre", "post"])
def test_float32_gradients_match_finite_differences_of_numpy(cfg):
    model = make(**cfg)
    tok, targets, resets = _batch()
    params, grads = _grads(model, tok, targets, resets)
    p = jax.tree.map(lambda a: np.array(a, np.float64), nnx.to_pure_dict(params))
    got = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(grads)}

    def np_loss():
        logits, _ = np_transformer(np.asarray(tok), weights_from_pure(p, cfg["tie_embeddings"]),
                                   heads=H, norm=cfg["norm"], resets=resets)
        return -np.mean(np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1))

    rng, eps, checked = np.random.default_rng(0), 1e-5, 0
    for path, arr in jax.tree_util.tree_leaves_with_path(p):
        name = jax.tree_util.keystr(path)
        for _ in range(2):
            idx = tuple(int(rng.integers(0, s)) for s in arr.shape)
            if name == "['embedding']":  # a row the batch reads (other rows: gradient 0)
                idx = (int(rng.choice(np.asarray(tok).ravel())), idx[1])
            elif name == "['position_embedding']":
                idx = (int(rng.integers(0, tok.shape[1])), idx[1])
            arr[idx] += eps
            up = np_loss()
            arr[idx] -= 2 * eps
            down = np_loss()
            arr[idx] += eps
            np.testing.assert_allclose(got[name][idx], (up - down) / (2 * eps), atol=1e-6,
                                       rtol=1e-4, err_msg=f"{name}{idx}")
            checked += 1
    assert checked >= 2 * 13  # every parameter array (13 in the tied post-norm model)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["pre", "post"])
def test_two_byte_gradients_within_their_roundoff_of_float32(cfg, dtype):
    tok, targets, resets = _batch()
    _, g32 = _grads(make(**cfg), tok, targets, resets)
    _, g16 = _grads(make(dtype=dtype, **cfg), tok, targets, resets)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(g32),
                                 jax.tree_util.tree_leaves_with_path(g16)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert b.dtype == np.float64 and np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, rtol=0, atol=16 * U[dtype] * np.abs(a).max(),
                                   err_msg=jax.tree_util.keystr(path))
