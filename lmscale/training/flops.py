"""Analytic training FLOPs per token: what ``lmscale.bench`` reports utilization against,
``lmscale.plan`` projects step times from, and each run records in its config's derived values.

The forward cost per token is ``lmscale.models.flops_per_token`` (matmuls only, 2 per
multiply-add); a training step costs 3 x forward per token (forward, gradients w.r.t.
activations, gradients w.r.t. weights: each one pass of every matmul). The derivation per
model kind, and how remat's recomputed FLOPs are reported apart, are in
``lmscale/training/bench.py``'s docstring.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from lmscale.models import flops_per_token, get_kind
from lmscale.models.registry import recompute_flops_per_token  # each kind's count, under remat
from lmscale.models.adaptive_softmax import parse_cutoffs, tail_shares, zipf_id_counts

__all__ = ["train_flops_per_token", "loss_tail_shares", "adaptive_cutoffs",
           "recompute_flops_per_token", "adaptive_recompute_flops_per_token"]


def train_flops_per_token(model_config: ml_collections.ConfigDict, vocab_size: int,
                          seq_len: int, id_counts: np.ndarray | None = None) -> int:
    """3 x the forward matmul FLOPs per token (see the module docstring). With
    ``model.adaptive_cutoffs`` the loss forms the head's logits and each target's cluster's:
    counted at the share of targets in each tail cluster that ``id_counts`` [V] (how often
    each id is a target) gives, or Zipf's law over the frequency-ranked ids when None."""
    shares = loss_tail_shares(model_config, vocab_size, id_counts)
    return 3 * int(flops_per_token(model_config, vocab_size, seq_len=seq_len, tail_shares=shares))


def adaptive_recompute_flops_per_token(model_config: ml_collections.ConfigDict, vocab_size: int,
                                       seq_len: int, id_counts: np.ndarray | None = None) -> int:
    """FLOPs per token the adaptive loss's backward forms again (``adaptive_loss._cluster_bwd``
    recomputes each target's tail-cluster logits instead of keeping them): one more forward
    pass of the tail clusters' matmuls, at the shares of ``loss_tail_shares``; 0 without
    cut-offs. Not the model's FLOPs: bench adds them to the executed (hardware) count only."""
    shares = loss_tail_shares(model_config, vocab_size, id_counts)
    if shares is None:
        return 0
    return int(flops_per_token(model_config, vocab_size, seq_len=seq_len, tail_shares=shares)
               - flops_per_token(model_config, vocab_size, seq_len=seq_len,
                                 tail_shares=tuple(0.0 for _ in shares)))


def loss_tail_shares(model_config: ml_collections.ConfigDict, vocab_size: int,
                     id_counts: np.ndarray | None = None) -> tuple[float, ...] | None:
    """The share of targets in each tail cluster of a model with adaptive cut-offs, from
    ``id_counts`` [V] (Zipf's law when None or all 0); None for a model without them."""
    cutoffs = adaptive_cutoffs(model_config)
    if not cutoffs:
        return None
    if id_counts is not None and len(id_counts) != vocab_size:
        raise ValueError(f"id_counts has {len(id_counts)} entries, the vocabulary {vocab_size}")
    if id_counts is None or not np.sum(id_counts) > 0:  # no data, or none sampled
        id_counts = zipf_id_counts(vocab_size)
    return tail_shares(cutoffs, id_counts)


def adaptive_cutoffs(model_config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The cut-offs of a kind with an adaptive softmax (its ``fields`` name
    ``adaptive_cutoffs``); () for the others, which leave the setting unused."""
    if "adaptive_cutoffs" not in get_kind(model_config.kind).fields:
        return ()
    return parse_cutoffs(model_config.get("adaptive_cutoffs", ""))

