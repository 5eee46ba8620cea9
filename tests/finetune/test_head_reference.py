"""The fine-tuning head's numerics against float64 NumPy written from the equations: pooling
over each text's real tokens, the head (LayerNorm, then Linear layers with an activation
between), the classification losses and the correct-answer count.

Equations:
  * pooling: last = x[L-1], mean = (1/L) sum_{t<L} x_t, max = max_{t<L} x_t (padding t >= L
    never counts);
  * LayerNorm (Ba et al. 2016, eq. 4): (x - mu) / sqrt(var + eps) * gamma + beta, biased var;
  * Linear: x W + b; ReLU; tanh; GELU in its tanh form (Hendrycks & Gimpel 2016, sec. 2:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), jax.nn.gelu's default);
  * single-label loss: sum_b w_b * (logsumexp(z_b) - z_b[y_b]) (softmax cross entropy);
  * multi-label loss: sum_b w_b * mean_k c_k * (log(1 + e^{z}) - y z) (sigmoid cross entropy,
    the stable form max(z, 0) - y z + log(1 + e^{-|z|}));
  * correct: sum over rows with w_b > 0 of [argmax z_b == y_b], or of the fraction of k with
    [z_bk > 0] == [y_bk > 0.5].

Tolerances: float32 against float64, rtol 1e-5 (atol 1e-6); bfloat16 features or logits are
compared with NumPy on the same bfloat16-rounded values at rtol 1e-5, since the head and the
losses compute in float32 (head.py, steps.py) -- a head or loss that ran in bfloat16 would be
off by ~2^-9 relative and fail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.finetuning.head import Head, pool
from lmscale.finetuning.steps import classification_loss, correct_count
from tests.models.helpers import randomize_params

TOL = dict(rtol=1e-5, atol=1e-6)
B, T, F, K = 5, 9, 6, 3
LENGTHS = np.array([1, 9, 4, 7, 2])


def np_pool(x: np.ndarray, lengths: np.ndarray, pooling: str) -> np.ndarray:
    out = []
    for row, n in zip(np.asarray(x, np.float64), lengths):
        real = row[:n]
        out.append({"last": real[-1], "mean": real.mean(0), "max": real.max(0),
                    "min": real.min(0)}[pooling])
    return np.stack(out)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


NP_ACT = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "gelu": np_gelu_tanh}


def np_head(x, head: Head, activation: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    x = (x - mu) / np.sqrt(var + head.norm.epsilon)
    x = x * np.asarray(head.norm.scale[...], np.float64) + np.asarray(head.norm.bias[...], np.float64)
    for i, layer in enumerate(head.layers):
        x = x @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)
        if i + 1 < len(head.layers):
            x = NP_ACT[activation](x)
    return x


def _rounded(x, dtype):
    return np.asarray(jnp.asarray(x, dtype), np.float64)


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "min"])
def test_pool_over_real_tokens_matches_numpy(pooling):
    """float32 only: the LM's features reach ``pool`` as float32 whatever the compute dtype
    (checked below); a bfloat16 mean would sum in bfloat16 (0.45 % off, seen)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    x[:, :, 0] -= 10.0  # the max must not come from a zero where padding would be masked
    got = pool(jnp.asarray(x), jnp.asarray(LENGTHS, jnp.int32), pooling)
    np.testing.assert_allclose(np.asarray(got, np.float64), np_pool(x, LENGTHS, pooling), **TOL)


def test_a_bfloat16_lms_features_reach_the_pool_as_float32():
    from lmscale.models import RecurrentLM
    lm = RecurrentLM(kind="mlstm", vocab_size=11, embed=4, hidden=F, layers=1, dtype=jnp.bfloat16,
                     rngs=nnx.Rngs(0))
    out = lm.features(jnp.zeros((2, 3), jnp.int32), lm.initial_carry(2))
    assert out["hidden"].dtype == out["cell"].dtype == jnp.float32


@pytest.mark.parametrize("activation,hidden", [("relu", ()), ("relu", (7,)), ("tanh", (7, 4)),
                                               ("gelu", (7,))])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_head_matches_numpy(activation, hidden, dtype):
    head = Head(F, K, hidden, activation, rngs=nnx.Rngs(0))
    randomize_params(head, seed=1, scale=1.0)
    x = np.random.default_rng(2).normal(size=(B, F)).astype(np.float32) * 3 + 1
    got = head(jnp.asarray(x, dtype))
    assert got.dtype == jnp.float32 and got.shape == (B, K)
    np.testing.assert_allclose(np.asarray(got, np.float64), np_head(_rounded(x, dtype), head,
                                                                   activation), **TOL)


def np_softmax_ce(z, y, w):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.sum(w * (lse - z[np.arange(len(y)), y])))


def np_sigmoid_ce(z, y, w, c=None, pw=None):
    """-(pw y log(sigmoid(z)) + (1 - y) log(1 - sigmoid(z))), from softplus(-z) = -log(sigmoid(z))."""
    z = np.asarray(z, np.float64)
    softplus = lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    per = (1.0 if pw is None else pw) * y * softplus(-z) + (1 - y) * softplus(z)
    if c is not None:
        per = per * c
    return float(np.sum(w * per.mean(-1)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
def test_classification_losses_match_numpy(dtype):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(B, K)) * 4).astype(np.float32)
    z[0, 1] = 40.0  # a confident row: the naive log(sum(exp)) would need care
    y = rng.integers(0, K, B)
    w = np.array([0.1, 0.3, 0.0, 0.4, 0.2])  # row weights (a filler row with 0)
    zr = _rounded(z, dtype)
    got = float(classification_loss(jnp.asarray(z, dtype), jnp.asarray(y), jnp.asarray(w, jnp.float32),
                                    False))
    np.testing.assert_allclose(got, np_softmax_ce(zr, y, w), **TOL)
    ym = (rng.random((B, K)) < 0.5).astype(np.float32)
    cw, pws = np.array([0.5, 1.0, 2.0]), np.array([3.0, 0.25, 1.0])
    as_jax = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    for c, pw in ((None, None), (cw, None), (None, pws), (cw, pws)):
        got = float(classification_loss(jnp.asarray(z, dtype), jnp.asarray(ym), jnp.asarray(w, jnp.float32),
                                        True, as_jax(c), as_jax(pw)))
        np.testing.assert_allclose(got, np_sigmoid_ce(zr, ym, w, c, pw), **TOL)


def test_classification_loss_gradient_is_the_closed_form():
    """d/dz of the single-label loss: w_b (softmax(z_b) - onehot(y_b)); multi-label:
    w_b c_k (sigmoid(z_bk) - y_bk) / K."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(B, K)).astype(np.float32) * 2
    y = rng.integers(0, K, B)
    w = rng.random(B)
    g = jax.grad(lambda z: classification_loss(z, jnp.asarray(y), jnp.asarray(w, jnp.float32),
                                               False))(jnp.asarray(z))
    z64 = z.astype(np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = w[:, None] * (p - np.eye(K)[y])
    np.testing.assert_allclose(np.asarray(g, np.float64), want, **TOL)
    ym = (rng.random((B, K)) < 0.5).astype(np.float32)
    c = np.array([0.5, 1.0, 2.0])
    g = jax.grad(lambda z: classification_loss(z, jnp.asarray(ym), jnp.asarray(w, jnp.float32), True,
                                               jnp.asarray(c, jnp.float32)))(jnp.asarray(z))
    want = w[:, None] * c[None] * (1 / (1 + np.exp(-z64)) - ym) / K
    np.testing.assert_allclose(np.asarray(g, np.float64), want, **TOL)
    # with pos_weight a: d/dz [-(a y log s + (1 - y) log(1 - s))] = s (a y + 1 - y) - a y
    a = np.array([3.0, 0.25, 1.0])
    g = jax.grad(lambda z: classification_loss(z, jnp.asarray(ym), jnp.asarray(w, jnp.float32), True,
                                               jnp.asarray(c, jnp.float32),
                                               jnp.asarray(a, jnp.float32)))(jnp.asarray(z))
    s = 1 / (1 + np.exp(-z64))
    want = w[:, None] * c[None] * (s * (a * ym + 1 - ym) - a * ym) / K
    np.testing.assert_allclose(np.asarray(g, np.float64), want, **TOL)


def test_correct_count_matches_numpy():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(B, K)).astype(np.float32)
    y = np.argmax(z, -1)
    y[1] = (y[1] + 1) % K  # one wrong answer
    w = np.array([0.2, 0.2, 0.0, 0.3, 0.3])  # row 2 is filler
    right, rows = correct_count(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w, jnp.float32), False)
    real = w > 0
    assert float(rows) == real.sum()
    assert float(right) == float(np.sum((np.argmax(z, -1) == y) & real))
    ym = (rng.random((B, K)) < 0.5).astype(np.float32)
    right, rows = correct_count(jnp.asarray(z), jnp.asarray(ym), jnp.asarray(w, jnp.float32), True)
    want = np.sum(np.mean((z > 0) == (ym > 0.5), -1) * real)
    np.testing.assert_allclose(float(right), want, rtol=1e-6)


def test_head_dropout_keeps_the_expected_input():
    """Inverted dropout: the kept inputs are scaled by 1 / keep, so a linear head's logits
    average, over masks, to those without dropout (unscaled, they shrank by keep in training
    and came back whole at evaluation)."""
    head = Head(16, 2, (), dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.tile(jax.random.normal(jax.random.key(1), (1, 16)), (4096, 1))
    keys = jax.random.split(jax.random.PRNGKey(2), 4096)  # [B, 2], one per row
    dropped = np.asarray(head(x, keys)).mean(0)
    whole = np.asarray(head(x[:1]))[0]
    b = np.asarray(head.layers[0].bias[...])
    np.testing.assert_allclose(dropped - b, whole - b, atol=0.1 * np.abs(whole - b).max())


def test_head_dropout_is_the_same_under_jax_enable_x64():
    """JAX_ENABLE_X64=1 drew the head's dropout from float64 uniforms: other masks, so the
    fine-tune a user's shell setting gave was not the one it gives without."""
    head = Head(8, 3, hidden=(6,), dropout=0.4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(2), i))(jnp.arange(5))
    plain = head(x, keys)
    with jax.enable_x64(True):
        wide = head(x, keys)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(wide))
