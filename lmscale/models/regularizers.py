"""AWD-LSTM regularizers (Merity et al. 2017; salesforce/awd-lstm-lm), as pure functions.

Two kinds of randomness, so that data parallelism gives the same numbers on any device count:

* per forward pass (embedding dropout, weight drop): drawn from the *step key* [2], the same
  on every device of a data-parallel step;
* per sequence (locked dropout, zoneout): drawn from *row keys* [B, 2], one per global batch
  row (``lmscale.training.steps.row_dropout_keys``), so a row's masks do not depend on which
  device holds it. One key [2] instead of row keys draws the whole [B, ...] mask from it.

Every mask is keyed by ``jax.random.fold_in(key, tag)`` with a distinct integer ``tag`` per
use (layer, kind), so masks of different layers/kinds are independent.
Dropout rescales kept values by 1/(1-p) (inverted dropout) as PyTorch's does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _keep(key: jax.Array, tag: int, p: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(1-p) keep mask of ``shape`` from ``fold_in(key, tag)``."""
    # float32 p: under JAX_ENABLE_X64 a Python float drew float64 uniforms (other masks)
    return jax.random.bernoulli(jax.random.fold_in(key, tag), jnp.float32(1.0 - p), shape)


def _scaled(mask: jax.Array, p: float, dtype) -> jax.Array:
    return mask.astype(dtype) * jnp.asarray(1.0 / (1.0 - p), dtype)


def embedding_dropout(embedding: jax.Array, step_key: jax.Array, tag: int, p: float) -> jax.Array:
    """embedding [V, E] with whole rows (words) zeroed with probability p, the rest scaled by
    1/(1-p): one mask per vocabulary row per forward pass (awd ``embedded_dropout``)."""
    if p <= 0.0:
        return embedding
    mask = _keep(step_key, tag, p, (embedding.shape[0], 1))
    return embedding * _scaled(mask, p, embedding.dtype)


def weight_drop(w: jax.Array, step_key: jax.Array, tag: int, p: float) -> jax.Array:
    """DropConnect: w (any shape) with elements zeroed with probability p, the rest scaled by
    1/(1-p); one mask per call (the caller masks the matrix once, before the time scan, so
    every time step of the forward pass sees the same mask; awd ``WeightDrop``)."""
    if p <= 0.0:
        return w
    return w * _scaled(_keep(step_key, tag, p, w.shape), p, w.dtype)


def locked_mask(keys: jax.Array, tag: int, p: float, batch: int, width: int, dtype) -> jax.Array:
    """Locked (variational) dropout multiplier [B, F]: one mask per sequence and feature, to be
    broadcast over all time steps. ``keys``: row keys [B, 2] or one key [2]."""
    if keys.ndim == 1:
        mask = _keep(keys, tag, p, (batch, width))
    else:
        mask = jax.vmap(lambda k: _keep(k, tag, p, (width,)))(keys)
    return _scaled(mask, p, dtype)


def locked_dropout(x: jax.Array, keys: jax.Array | None, tag: int, p: float) -> jax.Array:
    """x time-major [T, B, F] times a locked mask [B, F] shared over T (awd ``LockedDropout``)."""
    if keys is None or p <= 0.0:
        return x
    return x * locked_mask(keys, tag, p, x.shape[1], x.shape[2], x.dtype)[None]


def row_bernoulli(keys: jax.Array, tag: int, keep: float, steps: int, batch: int, width: int
                  ) -> jax.Array:
    """Per-element bool mask [T, B, F] (a new draw per time step), from row keys [B, 2] (each
    row's [T, F] from its own key) or one key [2]."""
    keep = jnp.float32(keep)  # JAX_ENABLE_X64: a Python float drew float64 uniforms
    if keys.ndim == 1:
        return jax.random.bernoulli(jax.random.fold_in(keys, tag), keep, (steps, batch, width))
    per_row = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, tag), keep,
                                                      (steps, width)))(keys)
    return jnp.swapaxes(per_row, 0, 1)


def activation_penalty(h_dropped: jax.Array, alpha: float) -> jax.Array:
    """AR per row: alpha * mean over (T, F) of h_dropped^2; h_dropped time-major [T, B, F].

    The mean of the returned [B] over rows is awd's alpha * dropped_h.pow(2).mean()."""
    h = h_dropped.astype(jnp.float32)
    return alpha * jnp.mean(h * h, axis=(0, 2))


def temporal_penalty(h: jax.Array, beta: float) -> jax.Array:
    """TAR per row: beta * mean over (T-1, F) of (h[t+1] - h[t])^2; h time-major [T, B, F]
    (the undropped output). The mean over rows is awd's beta * (h[1:] - h[:-1]).pow(2).mean().
    Zero when T < 2."""
    h = h.astype(jnp.float32)
    if h.shape[0] < 2:
        return jnp.zeros((h.shape[1],), jnp.float32)
    d = h[1:] - h[:-1]
    return beta * jnp.mean(d * d, axis=(0, 2))
