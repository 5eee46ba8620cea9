"""The recurrent kinds of ``config.model`` ("mlstm", "lstm", "qrnn"): their fields and
defaults (AWD-LSTM's and the QRNN's), validation, FLOPs, and their registration
(:class:`lmscale.models.lm.RecurrentLM` is the module they build)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from lmscale.config_values import DEFAULT_REMAT_STEPS
from lmscale.models.adaptive_softmax import loss_logits_per_token, parse_cutoffs
from lmscale.models.lm import LAYER_TYPES, RecurrentLM
from lmscale.models.qrnn import POOLINGS
from lmscale.models.recurrent_segments import largest_divisor
from lmscale.models.registry import ModelKind, register


# The AWD-LSTM / QRNN fields of ``config.model`` (name -> default, for configs that predate them).
AWD_FIELDS = {"embed_dropout": 0.0, "input_dropout": 0.0, "hidden_dropout": 0.0,
              "output_dropout": 0.0, "weight_dropout": 0.0, "ar_alpha": 0.0, "tar_beta": 0.0,
              "tie_embeddings": False, "adaptive_cutoffs": "", "qrnn_window": 2,
              "qrnn_zoneout": 0.0, "qrnn_pooling": "sequential", "two_biases": False,
              "io_init": "uniform"}
# model.io_init: the embedding's and untied decoder's init (the decoder bias starts at 0):
# awd-lstm-lm's U(+-0.1) for both, or PyTorch's defaults as sentiment-discovery's RNNModel
# has them, nn.Embedding's N(0, 1) and nn.Linear's U(+-1/sqrt(H))
IO_INITS = ("uniform", "pytorch")


# The settings read by the recurrent kinds only (registry.unused_settings_note; defaults: off)
RECURRENT_SETTINGS = {n: AWD_FIELDS[n] for n in (
    "embed_dropout", "input_dropout", "hidden_dropout", "output_dropout", "weight_dropout",
    "ar_alpha", "tar_beta", "adaptive_cutoffs", "io_init")}
# ... and by model.kind="qrnn" only
QRNN_SETTINGS = {n: AWD_FIELDS[n] for n in ("qrnn_window", "qrnn_zoneout", "qrnn_pooling")}
# ... and by the LSTMs (mlstm, lstm) only
LSTM_SETTINGS = {"two_biases": AWD_FIELDS["two_biases"]}


def _field(model_config: Any, name: str) -> Any:
    return model_config.get(name, AWD_FIELDS[name]) if name in AWD_FIELDS else model_config[name]


def _build(model_config: Any, vocab_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32
           ) -> RecurrentLM:
    f = lambda name: _field(model_config, name)
    return RecurrentLM(kind=model_config.kind, vocab_size=vocab_size, embed=int(model_config.embed),
                       hidden=int(model_config.hidden), layers=int(model_config.layers),
                       dropout=float(model_config.dropout),
                       weight_norm=bool(model_config.weight_norm), dtype=dtype,
                       embed_dropout=float(f("embed_dropout")),
                       input_dropout=float(f("input_dropout")),
                       hidden_dropout=float(f("hidden_dropout")),
                       output_dropout=float(f("output_dropout")),
                       weight_drop=float(f("weight_dropout")), ar_alpha=float(f("ar_alpha")),
                       tar_beta=float(f("tar_beta")), tie_embeddings=bool(f("tie_embeddings")),
                       adaptive_cutoffs=str(f("adaptive_cutoffs")),
                       qrnn_window=int(f("qrnn_window")), qrnn_zoneout=float(f("qrnn_zoneout")),
                       qrnn_pooling=str(f("qrnn_pooling")),
                       remat_steps=remat_steps(model_config),
                       two_biases=bool(f("two_biases")), io_init=str(f("io_init")), rngs=rngs)


REMATS = ("none", "segments")  # model.remat of the mlstm and lstm kinds (qrnn: "none")


def configured_remat_steps(model_config: Any) -> Any:
    """``model.remat_steps`` as configured (whether or not remat is on)."""
    return model_config.get("remat_steps", DEFAULT_REMAT_STEPS)


def remat_steps(model_config: Any) -> int:
    """Steps per recomputed segment of the recurrent layers' backward; 0: no remat."""
    if model_config.get("remat", "none") != "segments":
        return 0
    return int(configured_remat_steps(model_config))


def _validate(model_config: Any, train_config: Any) -> None:
    for name in ("embed", "hidden", "layers"):
        value = model_config[name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    for name in ("dropout", "embed_dropout", "input_dropout", "hidden_dropout", "output_dropout",
                 "weight_dropout", "qrnn_zoneout"):
        value = _field(model_config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"model.{name} must be in [0, 1), got {value}")
    for name in ("ar_alpha", "tar_beta"):
        if _field(model_config, name) < 0:
            raise ValueError(f"model.{name} must be >= 0, got {_field(model_config, name)}")
    if _field(model_config, "qrnn_window") not in (1, 2):
        raise ValueError(f"model.qrnn_window must be 1 or 2, got {_field(model_config, 'qrnn_window')!r}")
    if _field(model_config, "qrnn_pooling") not in POOLINGS:
        raise ValueError(f"model.qrnn_pooling must be one of {list(POOLINGS)}, "
                         f"got {_field(model_config, 'qrnn_pooling')!r}")
    if _field(model_config, "io_init") not in IO_INITS:
        raise ValueError(f"model.io_init must be one of {list(IO_INITS)}, "
                         f"got {_field(model_config, 'io_init')!r}")
    parse_cutoffs(_field(model_config, "adaptive_cutoffs"))
    remat = model_config.get("remat", "none")
    allowed = ("none",) if model_config.kind == "qrnn" else REMATS
    if remat not in allowed:
        raise ValueError(f"model.remat must be one of {list(allowed)} for model.kind "
                         f"{model_config.kind!r}, got {remat!r}")
    steps = configured_remat_steps(model_config)
    if remat == "segments" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"model.remat_steps must be a positive integer, got {steps!r}")
    seq_len = train_config.get("seq_len") if train_config is not None else None
    if remat == "segments" and isinstance(seq_len, int) and seq_len % min(steps, seq_len):
        raise ValueError(f"model.remat_steps={steps} must divide train.seq_len={seq_len} "
                         f"(equal segments; e.g. {largest_divisor(seq_len, steps)})")


def layer_sizes(model_config: Any) -> tuple[int, ...]:
    """Width of each layer: ``hidden``, the last ``embed`` when ``tie_embeddings`` (awd)."""
    n, tied = int(model_config.layers), bool(_field(model_config, "tie_embeddings"))
    return tuple(int(model_config.embed) if tied and l == n - 1 else int(model_config.hidden)
                 for l in range(n))


def _flops(model_config: Any, vocab_size: int, seq_len: int = 1,
           tail_shares: tuple[float, ...] | None = None) -> int:
    """Forward matmul FLOPs per token (2 per multiply-add): recurrent layers + decoder.

    The embedding is a lookup (no FLOPs); gate nonlinearities, fo-pooling, weight norm and
    dropout masks (once per call, not per token) and other elementwise work are ignored;
    ``seq_len`` does not matter. With input I and width H: mLSTM layer I*4H + I*H + H*H +
    H*4H multiply-adds; LSTM: I*4H + H*4H; QRNN: k*I*3H (window k: 2 on the first layer,
    ``qrnn_window``, else 1); decoder: H*V (tied or not), plus H*k' for the adaptive
    softmax's k' tombstones (all clusters' logits, as inference forms them). The training
    loss forms only the head's and each target's cluster's (``adaptive_loss.py``):
    ``tail_shares`` (the fraction of targets in each tail cluster, ``tail_shares`` of
    adaptive_softmax.py) counts those instead. Training is about 3x this.
    """
    kind, embed = model_config.kind, int(model_config.embed)
    sizes = layer_sizes(model_config)
    top = sizes[-1]
    cutoffs = parse_cutoffs(_field(model_config, "adaptive_cutoffs"))
    macs = round(top * loss_logits_per_token(cutoffs, vocab_size, tail_shares))
    for l, h in enumerate(sizes):
        i = embed if l == 0 else sizes[l - 1]
        if kind == "qrnn":
            window = int(_field(model_config, "qrnn_window")) if l == 0 else 1
            macs += window * i * 3 * h
            continue
        macs += i * 4 * h + h * 4 * h
        if kind == "mlstm":
            macs += i * h + h * h
    return 2 * macs


def _recompute_flops(model_config: Any, seq_len: int) -> int:
    """Forward FLOPs per token that ``model.remat="segments"`` computes again (mlstm, lstm):
    the recurrence only, h W_h (4 H^2 a layer) and the mLSTM's h W_mh (H^2); the input
    projections (x W_x, x W_mx) are formed once for the whole sequence, outside the segments."""
    per_h2 = 5 if model_config.kind == "mlstm" else 4
    return 2 * sum(per_h2 * h * h for h in layer_sizes(model_config))


def _describe(m: Any) -> str:
    text = f"{m.kind} hidden {m.hidden} embed {m.embed} layers {m.layers}"
    return text + (" tied" if _field(m, "tie_embeddings") else "")


_FIELDS = ("embed", "hidden", "layers", "weight_norm", "tie_embeddings", "adaptive_cutoffs")
for _name in LAYER_TYPES:
    register(ModelKind(name=_name, fields=_FIELDS + (("qrnn_window",) if _name == "qrnn"
                                                     else ("two_biases",)),
                       build=_build, validate=_validate, flops_per_token=_flops,
                       recompute_flops_per_token=_recompute_flops, describe=_describe,
                       settings={**RECURRENT_SETTINGS,
                                 **(QRNN_SETTINGS if _name == "qrnn" else LSTM_SETTINGS)}))
