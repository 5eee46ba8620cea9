"""A checkpoint's model signature — what must match between it and the config restoring it
(the architecture, the tokenizer, and for a model that carries state the batch: the carry's
shape) — and the refusal, naming the first field that differs and the way on, of a
checkpoint of another model."""

from __future__ import annotations

from typing import Any

import ml_collections

from lmscale.models import architecture
from lmscale.training.checkpoints import ModelMismatchError


def check_same_model(saved: dict[str, Any], current: dict[str, Any], directory: str,
                     ignore: tuple[str, ...] = (), step: int | None = None) -> None:
    """Raises CheckpointMismatchError naming the first differing field (the kind first).
    ``step`` 0: the checkpoint is an import (``lmscale.convert``; training saves none at 0),
    whose carried state is zeros: another batch is said to need a re-import.

    A ``model.*`` field the checkpoint does not record (it predates the field) counts as the
    field's default, so adding a field with a default keeps old checkpoints readable.
    """
    from lmscale.config import default_config
    defaults = default_config().model
    for key in sorted(set(saved) | set(current), key=lambda k: (k != "model.kind", k)):
        if key in ignore:
            continue
        old = saved.get(key)
        if key not in saved and key.startswith("model.") and key[6:] in defaults:
            old = defaults[key[6:]]
        if old != current.get(key):
            if key == "train.batch_size" and step == 0:  # an import: nothing trained yet
                message = (
                    f"{directory} holds imported weights (lmscale.convert) saved with "
                    f"train.batch_size={old} (the rows of their zero carried state), and this "
                    f"run's batch is {current.get(key)}: import them again with python -m "
                    f"lmscale.convert ... --batch_size={current.get(key)} (into a new workdir), "
                    f"or set train.batch_size={old}; --config.resume=false would start from "
                    f"random weights, not the imported ones")
            elif key == "train.batch_size":  # the carry's rows, not the model
                message = (
                    f"{directory}'s checkpoint was trained with a global batch of {old} "
                    f"(train.batch_size) and this run's is {current.get(key)}: the model's "
                    f"carried state has one row per sequence of the batch, so the run resumes "
                    f"only with a batch of {old}; set train.batch_size={old} (with "
                    f"train.per_device_batch_size=0: a per-device batch changes with the device "
                    f"count), use another --workdir, or --config.resume=false to start afresh "
                    f"(the old run is archived)")
            elif key not in saved and key.startswith("model."):  # e.g. model.two_biases
                message = (
                    f"{directory}'s checkpoint records no {key} (made before that setting, or "
                    f"imported): its model has the default {key}={_flag_value(old)}, and this "
                    f"config sets {_flag_value(current.get(key))}; resume it with "
                    f"--config.{key}={_flag_value(old)}, or use another --workdir")
            else:
                message = (
                    f"{directory} holds a checkpoint of a different model: {key} is "
                    f"{old!r} there and {current.get(key)!r} here; use another --workdir, "
                    f"the same model config{_as_flag(key, old)}, or --config.resume=false to "
                    f"start afresh (the old run is archived)")
            raise ModelMismatchError(message, key, old, current.get(key))


def _flag_value(value: Any) -> str:
    """``value`` as a --config flag takes it (booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _as_flag(key: str, value: Any) -> str:
    """" (--config.KEY=VALUE)" for a config key a flag sets (model.*), else ""."""
    return f" (--config.{key}={_flag_value(value)})" if key.startswith("model.") else ""


def model_signature(config: ml_collections.ConfigDict, tokenizer: dict[str, Any], vocab_size: int,
                    carries: bool = True) -> dict[str, Any]:
    """What must match between a checkpoint and the config restoring it: the architecture,
    the tokenizer, and, for a model that carries state, the batch (the carry's shape)."""
    sig = {f"model.{k}": v for k, v in architecture(config.model).items()}
    if carries:
        sig["train.batch_size"] = config.train.batch_size  # the shape of the persisted carry
    sig["data.tokenizer"] = tokenizer
    sig["vocab_size"] = vocab_size
    return sig
