"""The adaptive softmax's loss without the full vocabulary's logits (Grave et al. 2017; what
awd-lstm-lm's ``SplitCrossEntropyLoss`` buys: its speed).

``adaptive_softmax.adaptive_log_probs`` forms all V logits of every token (H·V multiply-adds
a token, and [N, V] float32 held for the backward pass). The negative log-likelihood of a
target only needs the head softmax (the head words and one tombstone per tail cluster) and,
for a target in tail cluster i, that cluster's softmax; so here every token forms the head's
c_1 + k logits, and a cluster's logits are formed only for the tokens whose target lies in it:
they are gathered (``_cluster_nll``: sorted to the front, read in chunks of ``CHUNK`` rows by
a loop whose trip count is their number) and the cluster's gradient is computed in the same
chunks (a custom VJP, recomputing the logits: nothing V-wide is kept). On WikiText-103
(V = 267,735, cut-offs 2800/20000/76000, a 400-wide output) a token costs about 1.1 M
multiply-adds in the head plus its cluster's share, against 107 M for the full softmax.

The result equals the NLL of ``adaptive_log_probs`` (tests/models/test_adaptive_loss.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models import fast_dot
from lmscale.models.recurrent_loops import varying_like

CHUNK = 128  # rows of a cluster's tokens whose logits are formed at once (64: 4.2x, 128: 5.0x, 256: 3.0x the full softmax's speed at 1,024 tokens; benchmarks/README.md)


def adaptive_nll_sums(h: jax.Array, words: jax.Array, bias: jax.Array, tail_vectors: jax.Array,
                      tail_bias: jax.Array, cutoffs: tuple[int, ...], targets: jax.Array,
                      weights: jax.Array, dtype: Any, words_transposed: bool
                      ) -> tuple[jax.Array, jax.Array]:
    """(Summed weighted NLL in nats, summed weights), float32, of the adaptive softmax.

    h [N, H]: the output states; ``words``: the decoder's word vectors, [V, H] (a tied
    embedding, ``words_transposed``) or [H, V] (a kernel); bias [V]; tail_vectors [k, H],
    tail_bias [k]; targets int [N]; weights [N] (0: not counted). Products in ``dtype`` with
    float32 sums.
    """
    head_nll, cluster, word_rows, bounds = _head_nll(h, words, bias, tail_vectors, tail_bias,
                                                     cutoffs, targets, dtype, words_transposed)
    h, bias = jnp.asarray(h), jnp.asarray(bias)  # NumPy eagerly too
    weights = jnp.asarray(weights, jnp.float32)
    targets = jnp.asarray(targets, jnp.int32)
    nats = jnp.sum(weights * head_nll)
    for i in range(1, len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        mine = jnp.where(cluster == i, weights, 0.0)
        nats = nats + _cluster_nll(jnp.dtype(dtype), h, word_rows(a, b), bias[a:b],
                                   jnp.clip(targets - a, 0, b - a - 1), mine)
    return nats, jnp.sum(weights)


def adaptive_token_nll(h: jax.Array, words: jax.Array, bias: jax.Array, tail_vectors: jax.Array,
                       tail_bias: jax.Array, cutoffs: tuple[int, ...], targets: jax.Array,
                       dtype: Any, words_transposed: bool, counted: jax.Array | None = None
                       ) -> jax.Array:
    """The NLL in nats of every target [N] float32 (no gradient: scoring), arguments as
    ``adaptive_nll_sums``: the head's c_1 + k logits for all rows, a tail cluster's only for
    the rows whose target lies in it, ``CHUNK`` rows at a time. ``counted`` [N] (optional):
    the rows wanted; the others' tail clusters are not formed and their NLL is 0."""
    targets = jnp.asarray(targets, jnp.int32)
    head_nll, cluster, word_rows, bounds = _head_nll(h, words, bias, tail_vectors, tail_bias,
                                                     cutoffs, targets, dtype, words_transposed)
    wanted = (jnp.ones(targets.shape, bool) if counted is None
              else jnp.asarray(counted) != 0)
    nll = jnp.where(wanted, head_nll, 0.0)
    h, bias = jnp.asarray(h), jnp.asarray(bias)
    for i in range(1, len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        mine = (wanted & (cluster == i)).astype(jnp.float32)
        nll = nll + _cluster_token_nll(jnp.dtype(dtype), h, word_rows(a, b), bias[a:b],
                                       jnp.clip(targets - a, 0, b - a - 1), mine)
    return jax.lax.stop_gradient(nll)


def _head_nll(h: jax.Array, words: jax.Array, bias: jax.Array, tail_vectors: jax.Array,
              tail_bias: jax.Array, cutoffs: tuple[int, ...], targets: jax.Array, dtype: Any,
              words_transposed: bool) -> tuple[jax.Array, jax.Array, Any, tuple[int, ...]]:
    """(Each row's NLL under the head softmax [N] (of its word, or of its cluster's
    tombstone), its target's cluster [N] (0: the head), word_rows(a, b) -> the word vectors
    [b - a, H], the cluster bounds (0, *cutoffs, V))."""
    h, words, bias = jnp.asarray(h), jnp.asarray(words), jnp.asarray(bias)  # NumPy eagerly too
    targets = jnp.asarray(targets, jnp.int32)
    vocab = bias.shape[0]
    bounds = (0, *cutoffs, vocab)
    head = cutoffs[0]
    word_rows = lambda a, b: words[a:b] if words_transposed else words[:, a:b].T  # [b - a, H]
    head_logits = (fast_dot.dense(h, word_rows(0, head), dtype, w_transposed=True) + bias[:head])
    tombstones = fast_dot.dense(h, tail_vectors, dtype, w_transposed=True) + tail_bias
    head_all = jnp.concatenate([head_logits, tombstones], axis=-1)  # [N, c_1 + k]
    cluster = jnp.searchsorted(jnp.asarray(cutoffs, jnp.int32), targets, side="right")  # 0 = head
    head_index = jnp.where(cluster == 0, targets, head + cluster - 1)
    return _nll(head_all, head_index), cluster, word_rows, bounds


def _nll(logits: jax.Array, index: jax.Array) -> jax.Array:
    """logsumexp(logits) - logits[index] of each row: logits [N, S], index int [N] -> [N]."""
    picked = jnp.take_along_axis(logits, index[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def _cluster_token_nll(dtype: Any, h: jax.Array, words: jax.Array, bias: jax.Array,
                       targets: jax.Array, mask: jax.Array) -> jax.Array:
    """[N]: logsumexp(z_n) - z_n[targets_n] (z_n = words · h_n + bias) for the rows with a
    nonzero ``mask``, 0 elsewhere; the cluster's logits formed for those rows only."""
    order, count, size = _chunks(mask)
    cast = words.astype(dtype)

    def body(j: jax.Array, out: jax.Array) -> jax.Array:
        rows, real, _, z = _chunk_logits(dtype, h, cast, bias, order, count, size, j)
        nll = _nll(z, targets[rows])
        return out.at[rows].add(jnp.where(real, nll, 0.0))  # rows past count add zeros

    zero = varying_like(jnp.zeros(mask.shape, jnp.float32), h, words, bias, mask)
    return jax.lax.fori_loop(0, (count + size - 1) // size, body, zero)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cluster_nll(dtype: Any, h: jax.Array, words: jax.Array, bias: jax.Array,
                 targets: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_n weights_n * (logsumexp(z_n) - z_n[targets_n]), z_n = words · h_n + bias, over the
    rows with a nonzero weight only. h [N, H], words [S, H], bias [S], targets [N] in [0, S)."""
    return _cluster_fwd(dtype, h, words, bias, targets, weights)[0]


def _chunks(weights: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """(row order with the weighted rows first, padded by a chunk; their number; chunk size)."""
    n_rows = weights.shape[0]
    size = min(CHUNK, n_rows)
    order = jnp.argsort(weights == 0, stable=True).astype(jnp.int32)
    order = jnp.concatenate([order, jnp.zeros((size,), jnp.int32)])
    return order, jnp.sum(weights != 0).astype(jnp.int32), size


def _chunk_logits(dtype: Any, h: jax.Array, words: jax.Array, bias: jax.Array, order: jax.Array,
                  count: jax.Array, size: int, j: jax.Array) -> tuple[jax.Array, ...]:
    """Chunk j's rows (indices [C]), whether each is real, their states [C, H] and logits [C, S]."""
    rows = jax.lax.dynamic_slice_in_dim(order, j * size, size)
    real = j * size + jnp.arange(size) < count
    hj = h[rows]
    return rows, real, hj, fast_dot.dense(hj, words, dtype, w_transposed=True) + bias


def _cluster_fwd(dtype: Any, h: jax.Array, words: jax.Array, bias: jax.Array, targets: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
    order, count, size = _chunks(weights)
    cast = words.astype(dtype)  # once, not in every chunk (a tail cluster's [S, H])

    def body(j: jax.Array, total: jax.Array) -> jax.Array:
        rows, real, _, z = _chunk_logits(dtype, h, cast, bias, order, count, size, j)
        nll = _nll(z, targets[rows])
        return total + jnp.sum(jnp.where(real, weights[rows] * nll, 0.0))

    zero = varying_like(jnp.zeros((), jnp.float32), h, words, bias, weights)  # in shard_map
    total = jax.lax.fori_loop(0, (count + size - 1) // size, body, zero)
    return total, (h, words, bias, targets, weights, order, count)


def _cluster_bwd(dtype: Any, res: tuple[Any, ...], g: jax.Array) -> tuple[Any, ...]:
    h, words, bias, targets, weights, order, count = res
    size = min(CHUNK, h.shape[0])
    cast = words.astype(dtype)

    def body(j: jax.Array, grads: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        dh, dwords, dbias = grads
        rows, real, hj, z = _chunk_logits(dtype, h, cast, bias, order, count, size, j)
        coef = jnp.where(real, weights[rows] * g, 0.0)[:, None]
        dz = coef * (jax.nn.softmax(z, axis=-1)
                     - jax.nn.one_hot(targets[rows], z.shape[-1], dtype=jnp.float32))  # [C, S]
        dh = dh.at[rows].add(fast_dot.dense(dz, cast, dtype))  # rows past count add zeros
        dwords = dwords + fast_dot.dense(dz.T, hj, dtype)
        return dh, dwords, dbias + jnp.sum(dz, axis=0)

    zeros = tuple(varying_like(jnp.zeros(x.shape, jnp.float32), h, words, bias, weights, g)
                  for x in (h, words, bias))
    dh, dwords, dbias = jax.lax.fori_loop(0, (count + size - 1) // size, body, zeros)
    return dh.astype(h.dtype), dwords.astype(words.dtype), dbias.astype(bias.dtype), None, None


_cluster_nll.defvjp(_cluster_fwd, _cluster_bwd)
