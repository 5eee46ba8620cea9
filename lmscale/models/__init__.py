"""Models: the recurrent character-level language model and its building blocks.

``build_model`` makes a :class:`RecurrentLM` from the ``model`` section of a run config.
``flops_per_token`` counts forward matmul FLOPs; a training step (forward + backward) costs
about 3x that (backward = grads w.r.t. activations + grads w.r.t. weights, each ~1x forward).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.lm import LAYER_TYPES, RecurrentLM
from lmscale.models.recurrent import LSTMLayer, MLSTMLayer, lstm_scan, mlstm_scan
from lmscale.models.weight_norm import Matrix, WeightNormMatrix, weight_norm

MODEL_KINDS: tuple[str, ...] = tuple(sorted(LAYER_TYPES))


def build_model(model_config: Any, vocab_size: int, *, rngs: nnx.Rngs,
                dtype: Any = jnp.float32) -> RecurrentLM:
    """RecurrentLM from a config with fields kind, hidden, embed, layers, dropout, weight_norm."""
    kind = model_config.kind
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model.kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    return RecurrentLM(kind=kind, vocab_size=vocab_size, embed=int(model_config.embed),
                       hidden=int(model_config.hidden), layers=int(model_config.layers),
                       dropout=float(model_config.dropout),
                       weight_norm=bool(model_config.weight_norm), dtype=dtype, rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (all nnx.Param leaves)."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def flops_per_token(model_config: Any, vocab_size: int) -> int:
    """Forward matmul FLOPs per token (2 per multiply-add): recurrent layers + decoder.

    The embedding is a lookup (no FLOPs); gate nonlinearities, weight norm (once per call,
    not per token) and other elementwise work are ignored. mLSTM layer with input I, hidden
    H: I*4H + I*H + H*H + H*4H multiply-adds; LSTM: I*4H + H*4H; decoder: H*V.
    Training (forward + backward) is about 3x this.
    """
    kind, hidden, embed = model_config.kind, int(model_config.hidden), int(model_config.embed)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model.kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    macs = hidden * vocab_size
    for l in range(int(model_config.layers)):
        i = embed if l == 0 else hidden
        macs += i * 4 * hidden + hidden * 4 * hidden
        if kind == "mlstm":
            macs += i * hidden + hidden * hidden
    return 2 * macs


__all__ = ["MODEL_KINDS", "RecurrentLM", "MLSTMLayer", "LSTMLayer", "mlstm_scan", "lstm_scan",
           "WeightNormMatrix", "Matrix", "weight_norm", "build_model", "count_params",
           "flops_per_token"]
