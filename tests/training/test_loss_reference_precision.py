"""The LM loss (training/loss.py) against float64 NumPy written from its equations, with
random 2-byte logits, its gradient against the closed form, and the byte count.

Equations: NLL_t = logsumexp(z_t) - z_t[y_t] (softmax cross entropy), summed with weights
w_t; count = sum w_t; d(sum_t w_t NLL_t)/dz_t = w_t (softmax(z_t) - onehot(y_t));
bytes = sum_t w_t * byte_lengths[y_t]; bits per character = nats / ln 2 / bytes.

Why: test_loss.py checks float32 logits against NumPy, and bfloat16 only with all-zero logits
(log V exactly); float16 logits, used by every float16 run, were not checked. The loss promotes
the logits to float32 before the log-softmax, so on the same 2-byte-rounded logits it must
equal float64 NumPy to float32 accuracy: rtol 1e-5 for every dtype. Logits up to +-60 (float16
exp overflows at ~11.1) would make a log-softmax run in float16 fail.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.training.loss import bits_per_char, byte_count, cross_entropy_sums, mean_loss

B, T, V = 3, 6, 13


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(B, T, V)) * 8).astype(np.float32)
    z[0, 0, 3] = 60.0
    z[1, 2, :] -= 50.0
    y = rng.integers(0, V, (B, T))
    w = (rng.random((B, T)) > 0.25).astype(np.float32)
    return z, y, w


def np_nll(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(z, y[..., None], -1)[..., 0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
def test_cross_entropy_matches_numpy_on_the_rounded_logits(dtype):
    z, y, w = _problem()
    zj = jnp.asarray(z, dtype)
    nats, count = cross_entropy_sums(zj, jnp.asarray(y, jnp.int32), jnp.asarray(w))
    assert nats.dtype == count.dtype == jnp.float32
    want = float(np.sum(np_nll(np.asarray(zj, np.float64), y) * w))
    np.testing.assert_allclose(float(nats), want, rtol=1e-5)
    assert float(count) == w.sum()
    np.testing.assert_allclose(float(mean_loss(nats, count)), want / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
def test_gradient_is_softmax_minus_onehot(dtype):
    z, y, w = _problem(1)
    zj = jnp.asarray(z, dtype)
    g = jax.grad(lambda z: cross_entropy_sums(z, jnp.asarray(y, jnp.int32), jnp.asarray(w))[0])(zj)
    assert g.dtype == dtype
    z64 = np.asarray(zj, np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = w[..., None] * (p - np.eye(V)[y])
    # The gradient is rounded to the logits' dtype on the way out: 2^-9 (bf16), 2^-12 (f16).
    rel = {jnp.float32: 1e-5, jnp.bfloat16: 2 ** -8, jnp.float16: 2 ** -11}[dtype]
    np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=rel, atol=1e-6)


def test_byte_count_and_bits_per_char():
    z, y, w = _problem(2)
    byte_lengths = np.random.default_rng(3).integers(1, 5, V)
    got = float(byte_count(jnp.asarray(y), jnp.asarray(w), jnp.asarray(byte_lengths)))
    want = float(np.sum(w * byte_lengths[y]))
    assert got == want
    nats, _ = cross_entropy_sums(jnp.asarray(z), jnp.asarray(y), jnp.asarray(w))
    np.testing.assert_allclose(bits_per_char(float(nats), got),
                               float(np.sum(np_nll(z, y) * w)) / math.log(2) / want, rtol=1e-5)
