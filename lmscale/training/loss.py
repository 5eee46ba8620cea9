"""Language-model loss: cross entropy with log-softmax in float32, mean over counted targets."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Summed negative log-likelihood (nats) and number of counted targets.

    logits: [B, T, V] (any float dtype; promoted to float32), targets: int [B, T],
    weights: [B, T], 1 where a target counts and 0 where it is masked (padding, or a
    target that starts a new shard). Returns (sum of weighted NLL, sum of weights), float32.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def lm_loss_sums(model: Any, inputs: jax.Array, carry: Any, resets: Any, targets: jax.Array,
                 weights: jax.Array, *, dropout_key: Any = None, step_key: Any = None
                 ) -> tuple[jax.Array, jax.Array, Any, Any]:
    """(summed NLL, counted targets, new carry, AR/TAR penalty [B] or None) of any model on a
    batch: ``cross_entropy_sums`` of its training forward pass, or, for a model with an
    adaptive softmax (``cutoffs``), its ``adaptive_loss``, which forms no V-wide logits."""
    from lmscale.models.registry import training_forward
    if getattr(model, "cutoffs", ()):
        return model.adaptive_loss(inputs, carry, resets, targets, weights,
                                   dropout_key=dropout_key, step_key=step_key)
    logits, new_carry, penalty = training_forward(model, inputs, carry, resets,
                                                  dropout_key=dropout_key, step_key=step_key)
    nats, count = cross_entropy_sums(logits, targets, weights)
    return nats, count, new_carry, penalty


def byte_count(targets: jax.Array, weights: jax.Array, byte_lengths: jax.Array) -> jax.Array:
    """UTF-8 bytes of text the counted targets stand for: sum(weights * byte_lengths[targets]).

    ``byte_lengths`` [V] from the tokenizer (all 1 for a byte tokenizer, so this equals the
    target count; a word vocabulary's ``<unk>`` a fraction). Bits per character are
    nats / ln 2 / this, comparable across tokenizers.
    """
    lengths = jnp.asarray(byte_lengths, jnp.float32)[targets.astype(jnp.int32)]
    return jnp.sum(lengths * weights.astype(jnp.float32))


def mean_loss(nats: jax.Array, count: jax.Array) -> jax.Array:
    """Mean NLL per counted target; 0 when nothing counts (avoids 0/0)."""
    return nats / jnp.maximum(count, 1.0)


def bits_per_char(nats: float, num_bytes: float = 1.0) -> float:
    """Bits per character (UTF-8 byte): nats / ln 2 / bytes (of nats per byte when one argument)."""
    return nats / LN2 / max(num_bytes, 1.0)
