"""Models: language-model families behind one interface (see ``registry``).

``build_model`` makes the module of ``config.model.kind``; ``flops_per_token`` counts its
forward matmul FLOPs (a training step, forward + backward, costs about 3x that). Kinds:
"mlstm", "lstm" and "qrnn" (:class:`RecurrentLM`, with the AWD-LSTM regularizers) and
"transformer" (``MODEL_KINDS``); a family registers itself when its file is imported, a
family of your own too (``registry.load_plugins``: ``LMSCALE_MODEL_MODULES`` or the
``lmscale.models`` entry points).
"""

from __future__ import annotations

import jax
from flax import nnx

from lmscale.models import recurrent_kinds as _recurrent_kinds  # noqa: F401  (registers mlstm, lstm, qrnn)
from lmscale.models.lm import RecurrentLM
from lmscale.models import transformer as _transformer_kind  # noqa: F401  (registers transformer)
from lmscale.models.transformer import TransformerLM
from lmscale.models.qrnn import QRNNLayer, qrnn_scan
from lmscale.models.recurrent import LSTMLayer, MLSTMLayer, lstm_scan, mlstm_scan
from lmscale.models.registry import (ModelKind, architecture, build_model, flops_per_token,
                                     get_kind, model_kinds, register, uses_dropout)
from lmscale.models.weight_norm import Matrix, WeightNormMatrix, weight_norm
from lmscale.models.building import built_in_one_program, model_params
from lmscale.config_values import BUILT_IN_KINDS

MODEL_KINDS: tuple[str, ...] = BUILT_IN_KINDS


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (all nnx.Param leaves)."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


__all__ = ["MODEL_KINDS", "ModelKind", "RecurrentLM", "TransformerLM", "MLSTMLayer", "LSTMLayer", "QRNNLayer", "mlstm_scan", "qrnn_scan",
           "lstm_scan", "WeightNormMatrix", "Matrix", "weight_norm", "build_model", "count_params",
           "flops_per_token", "get_kind", "model_kinds", "register", "architecture", "uses_dropout",
           "built_in_one_program", "model_params"]
