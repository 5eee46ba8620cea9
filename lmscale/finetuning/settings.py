"""Fine-tuning settings checked before a run: against the LM it starts from, against LM
training's settings it has no use for, and against the run it resumes."""

from __future__ import annotations

from typing import Any

import ml_collections

from lmscale.config import ConfigError
from lmscale.finetuning import layer_rates
from lmscale.finetuning.head import check_head_settings
from lmscale.finetuning.truncated import check_grad_tokens
from lmscale.training.restore import TrainedLM
from lmscale.transfer.labeled import label_columns


def check_task_settings(ft: ml_collections.ConfigDict) -> None:
    """Refuses ``config.finetune`` settings of the task and head that no LM can take
    (``num_classes``, ``multilabel`` with one label column, ``pooling``, ``head_hidden``,
    ``head_activation``, ``head_dropout``), naming the setting, before any data is read or
    folder made."""
    if ft.multilabel and len(label_columns(ft.label_column)) == 1:  # labels [N]: a [B, B] sigmoid loss
        raise ConfigError(f"finetune.multilabel=true needs two or more 0/1 label columns, and "
                          f"finetune.label_column={ft.label_column!r} names one; for one binary "
                          f"label leave finetune.multilabel=false (a softmax over classes 0 and 1)")
    if not ft.multilabel and (ft.num_classes < 0 or ft.num_classes == 1):  # multi-label: unused
        raise ConfigError(f"finetune.num_classes={ft.num_classes}: classification needs 2 or "
                          f"more classes (0 = the largest train label + 1)")
    check_head_settings(ft)


def check_lm_settings(config: ml_collections.ConfigDict, lm: TrainedLM) -> None:
    """Refuses fine-tuning settings this LM cannot take (``state``, ``grad_tokens``,
    ``layer_lr_decay``, ``unfreeze_every``), naming the setting."""
    ft, layers = config.finetune, config.model.layers
    check_head_settings(ft, lm.model().feature_states)
    check_grad_tokens(ft.grad_tokens, lm.model().max_len, ft.aux_lm_weight)
    layer_rates.checked(ft.layer_lr_decay, layers)
    layer_rates.unfreeze_starts(ft.unfreeze_every, ft.freeze_steps, layers)


# Settings a resume may change (the saved state does not depend on them), said when it does.
RESUMABLE_CHANGES = ("finetune.grad_tokens", "finetune.layer_lr_decay")


def resumed_otherwise(saved: dict[str, Any] | None, config: ml_collections.ConfigDict,
                      step: int) -> list[str]:
    """Lines for the ``RESUMABLE_CHANGES`` a resumed fine-tune changes (config.json keeps the
    new values; the old record goes to history/)."""
    old = (saved or {}).get("config") or {}
    defaults = {"finetune.grad_tokens": 0, "finetune.layer_lr_decay": 1.0}
    notes = []
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        before, now = (old.get(section) or {}).get(name, defaults[key]), config[section][name]
        if before != now:
            notes.append(f"note: resumed at step {step} with {key}={now!r}; the steps before it "
                         f"trained with {key}={before!r}")
    return notes


# Training settings fine-tuning has no use for, with the value that means "off".
NOT_IN_FINE_TUNING = {"optim.name": "adam", "optim.lr_drop_epochs": "", "train.grad_accum_steps": 1,
                      "train.variable_bptt": False}


def check_used_in_fine_tuning(config: ml_collections.ConfigDict) -> None:
    """Refuses a setting of LM training that fine-tuning would ignore (its optimizer is Adam
    per part, its batches whole texts), rather than record it in config.json as if applied."""
    for key, off in NOT_IN_FINE_TUNING.items():
        section, name = key.split(".")
        if config[section][name] != off:
            raise ConfigError(f"{key}={config[section][name]!r} is a setting of language-model "
                              f"training that fine-tuning does not use (it trains with Adam, one "
                              f"rate per part, on whole texts); leave it at {off!r}")
