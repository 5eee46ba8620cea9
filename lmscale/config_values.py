"""The config's fixed choices, its error type, and the rules on a few fields that the
config's checks and the models read: kept apart from ``lmscale.config`` (which asks the
model registry to validate a model's fields) so that neither imports the other back.
``lmscale.config`` exports every name here; importing this module imports no JAX."""

from __future__ import annotations

import math

import ml_collections

SCHEDULES = ("constant", "linear", "cosine", "slanted_triangular")
LR_SCALINGS = ("none", "linear", "sqrt")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_REMAT_STEPS = 32  # model.remat_steps (configs that predate it: this)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


MAX_LOSS_SCALE = 2.0**64  # the dynamic loss scale's cap: far above any float16 gradient's need


BUILT_IN_KINDS = ("lstm", "mlstm", "qrnn", "transformer")


AVERAGING_OPTIMIZERS = ("ntasgd", "asgd")  # average the weights: validation, eval and export read the average
OPTIMIZERS = ("adam", "sgd", *AVERAGING_OPTIMIZERS)
WEIGHT_DECAY_STYLES = ("coupled", "decoupled")
WEIGHT_DECAY_ON = ("all", "matrices")


def parse_epochs(text: str) -> tuple[float, ...]:
    """optim.lr_drop_epochs: "12" or "25,35" -> (12.0,) / (25.0, 35.0); "" -> ()."""
    try:
        epochs = tuple(float(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        epochs = (-1.0,)
    if any(not 0 < e < math.inf for e in epochs):  # nan, inf: a traceback in derive()
        raise ConfigError(f"optim.lr_drop_epochs must be positive epochs, comma-separated, got {text!r}")
    return tuple(sorted(epochs))


def step_width(train: ml_collections.ConfigDict) -> int:
    """Tokens per row per training step: seq_len times train.grad_accum_steps."""
    return int(train.seq_len) * int(train.get("grad_accum_steps", 1))


def bptt_max(train: ml_collections.ConfigDict) -> int:
    """The longest variable-BPTT sequence: train.bptt_max, or seq_len + 15."""
    return int(train.bptt_max) or int(train.seq_len) + 15
