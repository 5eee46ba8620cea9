"""Tied adaptive softmax (awd-lstm-lm's ``SplitCrossEntropyLoss``; Grave et al. 2017).

The vocabulary [0, V) is split at cut-offs c_1 < ... < c_k into a head [0, c_1) and tail
clusters [c_i, c_{i+1}) (c_{k+1} = V). The head softmax is over the head words plus one
"tombstone" per tail cluster (a learned vector and bias, ``tail_vectors`` [k, H] and
``tail_bias`` [k], zero-initialized as awd's); a tail word's log-probability is the log-prob of
its cluster's tombstone plus its log-prob within the cluster's own softmax. The word vectors
and biases are the decoder's (tied to the embedding when ``model.tie_embeddings``); there is
no projection. No cut-offs: exactly the full softmax. The result sums to 1 over [0, V).

Memory and compute: ``adaptive_log_probs`` returns full-vocabulary log-probabilities
[..., V] float32, which sampling and featurizing read. This costs what a full softmax
costs — all V logits are formed (H·V multiply-adds per token, plus H·k for the
tombstones). The training and evaluation steps' loss and the API's scores do not form them
(``adaptive_loss.py``: the head, and each target's own cluster only), so their cost
depends on how the targets fall into the clusters (``tail_shares``): FLOP counts for
training take the shares measured on the data, or Zipf's law where there is none.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx


def parse_cutoffs(spec: str, vocab_size: int | None = None) -> tuple[int, ...]:
    """"2800,20000,76000" -> (2800, 20000, 76000); "" -> () (full softmax). Strictly
    increasing positive integers, below ``vocab_size`` when given; errors name the key."""
    spec = str(spec).strip()
    if not spec:
        return ()
    try:
        cuts = tuple(int(p) for p in spec.split(","))
    except ValueError:
        raise ValueError(f"model.adaptive_cutoffs must be comma-separated integers, got {spec!r}") from None
    if cuts[0] < 1 or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"model.adaptive_cutoffs must be strictly increasing and >= 1, got {spec!r}")
    if vocab_size is not None and cuts[-1] >= vocab_size:
        raise ValueError(f"model.adaptive_cutoffs must be below the vocabulary size {vocab_size}, "
                         f"got {spec!r}")
    return cuts


def zipf_id_counts(vocab_size: int) -> np.ndarray:
    """Zipf's law over a frequency-ranked vocabulary: id i (1 <= i < V) weighs 1/i, id 0
    (padding, never a target) 0. float64 [V]. The word tokenizer numbers words by descending
    count (``data/words.py``), so this approximates a natural-language corpus' targets."""
    counts = np.zeros(int(vocab_size), np.float64)
    counts[1:] = 1.0 / np.arange(1, int(vocab_size), dtype=np.float64)
    return counts


def tail_shares(cutoffs: tuple[int, ...], id_counts: np.ndarray) -> tuple[float, ...]:
    """The fraction of targets in each tail cluster [c_i, c_{i+1}) (k floats; the head's is
    1 minus their sum). ``id_counts`` [V]: how often each id is a target (counts, or
    weights such as ``zipf_id_counts``)."""
    counts = np.asarray(id_counts, np.float64)
    total = counts.sum()
    if not cutoffs or total <= 0:
        return tuple(0.0 for _ in cutoffs)
    bounds = (*cutoffs, counts.shape[0])
    return tuple(float(counts[bounds[i]:bounds[i + 1]].sum() / total) for i in range(len(cutoffs)))


def loss_logits_per_token(cutoffs: tuple[int, ...], vocab_size: int,
                          shares: tuple[float, ...] | None) -> float:
    """Logits per token the training loss forms (each costs H multiply-adds): all V (+ k
    tombstones) with ``shares`` None — what ``adaptive_log_probs`` forms —, else the head's
    c_1 + k and, for the ``shares[i]`` of tokens whose target lies in cluster i, that
    cluster's c_{i+1} - c_i (the loop's padding rows, at most a chunk per cluster, are not
    counted). No cut-offs: V."""
    if not cutoffs or shares is None:
        return float(vocab_size + len(cutoffs))
    bounds = (*cutoffs, int(vocab_size))
    return cutoffs[0] + len(cutoffs) + sum(
        s * (bounds[i + 1] - bounds[i]) for i, s in enumerate(shares))


def adaptive_log_probs(logits: jax.Array, tail_logits: jax.Array, cutoffs: tuple[int, ...]
                       ) -> jax.Array:
    """Full-vocabulary log-probabilities [..., V] float32.

    logits [..., V]: the decoder's word logits (h·w_v + b_v); tail_logits [..., k]: the
    tombstones' (h·tail_vectors + tail_bias), k = len(cutoffs). With no cut-offs this is
    log_softmax(logits).
    """
    logits = logits.astype(jnp.float32)
    if not cutoffs:
        return jax.nn.log_softmax(logits, axis=-1)
    head = cutoffs[0]
    head_lp = jax.nn.log_softmax(
        jnp.concatenate([logits[..., :head], tail_logits.astype(jnp.float32)], axis=-1), axis=-1)
    parts = [head_lp[..., :head]]
    bounds = (*cutoffs, logits.shape[-1])
    for i in range(len(cutoffs)):
        cluster = jax.nn.log_softmax(logits[..., bounds[i]:bounds[i + 1]], axis=-1)
        parts.append(head_lp[..., head + i, None] + cluster)
    return jnp.concatenate(parts, axis=-1)


class AdaptiveTails(nnx.Module):
    """The tombstone parameters of an adaptive softmax: ``tail_vectors`` [k, H] and
    ``tail_bias`` [k] (zeros at init, as awd-lstm-lm)."""

    def __init__(self, width: int, cutoffs: tuple[int, ...]):
        self.cutoffs = tuple(cutoffs)
        self.tail_vectors = nnx.Param(jnp.zeros((len(cutoffs), width), jnp.float32))
        self.tail_bias = nnx.Param(jnp.zeros((len(cutoffs),), jnp.float32))

    def __call__(self, h: jax.Array) -> jax.Array:
        """h [..., H] -> tombstone logits [..., k] float32."""
        return (jnp.einsum("...h,kh->...k", h, self.tail_vectors[...].astype(h.dtype),
                           preferred_element_type=jnp.float32) + self.tail_bias[...])
