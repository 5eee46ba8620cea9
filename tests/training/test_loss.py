"""Cross entropy against a NumPy reference, with masked targets."""

import math

import jax.numpy as jnp
import numpy as np

from lmscale.training.loss import bits_per_char, cross_entropy_sums


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    nats, count = cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(float(nats), (nll * weights).sum(), rtol=1e-5)
    assert float(count) == weights.sum()


def test_bfloat16_logits_are_reduced_in_float32():
    logits = jnp.zeros((1, 4, 257), jnp.bfloat16)
    nats, count = cross_entropy_sums(logits, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4)))
    assert nats.dtype == jnp.float32
    np.testing.assert_allclose(float(nats) / float(count), math.log(257), rtol=1e-6)
    assert bits_per_char(math.log(257)) == math.log2(257)
