"""Fine-tuning settings checked before a run: against the LM it starts from, against LM
training's settings it has no use for, against a workdir that is a language model's, and
against the run it resumes (a run begun before fine-tuning applied weight decay goes on
without it: ``optim_as_begun``)."""

from __future__ import annotations

import os
import sys
from typing import Any, Collection

import jax
import ml_collections

from lmscale.config import ConfigError, default_config, load_config
from lmscale.finetuning import layer_rates
from lmscale.finetuning.head import check_head_settings
from lmscale.finetuning.data import BATCH_ORDER
from lmscale.finetuning.truncated import check_grad_tokens
from lmscale.messages import for_caller
from lmscale.models.registry import feature_dropouts, is_dropout_field
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.restore import TrainedLM
from lmscale.training.resume import recorded_with_home
from lmscale.transfer.labeled import label_columns


def check_task_settings(ft: ml_collections.ConfigDict) -> None:
    """Refuses ``config.finetune`` settings of the task and head that no LM can take
    (``num_classes``, ``multilabel`` with one label column, ``pooling``, ``head_hidden``,
    ``head_activation``, ``head_dropout``, ``pos_weights`` without ``multilabel``) or none (a
    negative count, rate or weight), naming the setting, before any data is read or folder
    made."""
    if ft.multilabel and len(label_columns(ft.label_column)) == 1:  # labels [N]: a [B, B] sigmoid loss
        raise ConfigError(f"finetune.multilabel=true needs two or more 0/1 label columns, and "
                          f"finetune.label_column={ft.label_column!r} names one; for one binary "
                          f"label leave finetune.multilabel=false (a softmax over classes 0 and 1)")
    if not ft.multilabel and (ft.num_classes < 0 or ft.num_classes == 1):  # multi-label: unused
        raise ConfigError(f"finetune.num_classes={ft.num_classes}: classification needs 2 or "
                          f"more classes (0 = the largest train label + 1)")
    for key in ("max_val_texts", "head_lr", "freeze_steps", "aux_lm_weight"):
        if ft[key] < 0:
            raise ConfigError(f"finetune.{key} must be >= 0, got {ft[key]!r}")
    if ft.bucket_width < 1:
        raise ConfigError(f"finetune.bucket_width must be >= 1 (tokens a batch's width is "
                          f"rounded up to), got {ft.bucket_width!r}")
    from lmscale.transfer.metrics import threshold_metric_problem
    problem = threshold_metric_problem(ft.threshold_metric, ft.multilabel,
                                       "finetune.threshold_metric")
    if problem:
        raise ConfigError(problem)
    if str(ft.pos_weights).strip() and not ft.multilabel:
        raise ConfigError(f"finetune.pos_weights={ft.pos_weights!r} weighs the positive labels of "
                          f"a multi-label task (finetune.multilabel=true); a single-label task "
                          f"weighs its classes with finetune.class_weights")
    check_head_settings(ft)


def check_lm_settings(config: ml_collections.ConfigDict, lm: TrainedLM) -> None:
    """Refuses fine-tuning settings this LM cannot take (``state``, ``grad_tokens``,
    ``layer_lr_decay``, ``unfreeze_every``, ``lm_dropout``), naming the setting."""
    ft, layers, model = config.finetune, config.model.layers, lm.model()
    check_head_settings(ft, model.feature_states)
    check_lm_dropout(ft.lm_dropout, lm)
    check_grad_tokens(ft.grad_tokens, model.max_len, ft.aux_lm_weight, lm.carries_state())
    layer_rates.checked(ft.layer_lr_decay, layers)
    layer_rates.unfreeze_starts(ft.unfreeze_every, ft.freeze_steps, layers)


def check_same_start(meta: dict[str, Any], config: ml_collections.ConfigDict, lm_step: int,
                     workdir: str, fingerprints: dict[str, str] | None = None) -> None:
    """Refuses to resume a fine-tune from another start than it was begun with (the LM
    workdir, its step, ``finetune.lm_init``), on other training texts or batches, or choosing
    its best checkpoint otherwise (``best_metric``, ``max_val_texts``: the best so far would be
    compared with another score), naming the field: the run's weights and config.json would
    otherwise say different things. ``fingerprints``: the train/val data's
    (``Labeled.fingerprint``); where the run recorded them they decide, not the paths' text."""
    old_config, old = meta.get("config") or {}, meta.get("derived") or {}
    recorded, fingerprints = old.get("texts_fingerprint") or {}, fingerprints or {}
    compared = [split for split in ("train", "val") if split in recorded and split in fingerprints]
    for split in compared:
        if recorded[split] != fingerprints[split]:
            raise CheckpointMismatchError(
                f"{workdir} was fine-tuned on other texts or labels than finetune.{split}="
                f"{config.finetune[split]!r} holds now (the file was edited or replaced); "
                f"resuming on them is refused (the steps so far, and the best checkpoint's "
                f"score, come from the old ones); restore the file, use a new --workdir, or "
                f"--config.resume=false to start afresh (the old run is archived)")
    ft, train = config.finetune, config.train
    now = {"init_from": os.path.abspath(config.init_from), "lm_step": lm_step,
           "finetune.lm_init": ft.lm_init, "finetune.train": ft.train,
           "train.batch_size": train.batch_size, "finetune.best_metric": ft.best_metric,
           "finetune.max_val_texts": ft.max_val_texts, "finetune.val": ft.val,
           "finetune.threshold_metric": ft.get("threshold_metric", "f1"), "seed": config.seed}
    section = lambda key: (old_config.get(key.split(".")[0]) or {}).get(key.split(".")[1])
    before = {"init_from": old.get("init_from"), "lm_step": old.get("lm_step"),
              "finetune.lm_init": old.get("lm_init"),
              **{key: section(key) for key in now if key.startswith(("finetune.", "train."))
                 and key != "finetune.lm_init"}, "seed": old_config.get("seed")}
    if old_config.get("finetune") and before["finetune.threshold_metric"] is None:
        before["finetune.threshold_metric"] = "f1"  # a run from before the setting: all it had
    devices = old.get("devices")
    why = {"finetune.best_metric": " (the best checkpoint so far was chosen by it)",
           "finetune.max_val_texts": " (the best checkpoint so far was scored on those texts)",
           "finetune.val": " (the best checkpoint so far was scored on those texts)",
           "finetune.threshold_metric": " (the best checkpoint so far was scored with thresholds "
                                        "tuned for it)",
           "lm_step": f" (the LM run {config.init_from} has trained on since: a fine-tune starts "
                      f"from its newest checkpoint)",
           "seed": " (each epoch's order of the training texts is drawn from it: another would "
                   "read some of this epoch's texts twice and some never)",
           "train.batch_size": " (a step's texts follow from the step and the batch: another "
                               "would read others from here on"
                               + (f"; with train.per_device_batch_size={train.per_device_batch_size}"
                                  f" the device count sets it, {devices} then"
                                  if train.per_device_batch_size and devices else "") + ")"}
    for key, value in now.items():
        if key in [f"finetune.{split}" for split in compared]:
            continue  # the same data (checked above), whatever path names it now
        if (before[key] is not None and before[key] != value
                and not recorded_with_home(before[key], value)):
            what = "the LM's checkpoint step" if key == "lm_step" else key
            same = ("" if key == "lm_step" else  # no setting chooses it: the LM's newest
                    "use the same value, ")
            raise CheckpointMismatchError(
                f"{workdir} was fine-tuned with {what}={before[key]!r}; resuming it with "
                f"{value!r} is refused{why.get(key, '')}; {same}a new --workdir, or "
                f"--config.resume=false to start afresh (the old run is archived)")


# Settings a resume may change (the saved state does not depend on them), said when it does.
RESUMABLE_CHANGES = ("finetune.grad_tokens", "finetune.layer_lr_decay", "finetune.lm_dropout",
                     "finetune.class_weights", "finetune.pos_weights")


def resumed_otherwise(saved: dict[str, Any] | None, config: ml_collections.ConfigDict,
                      step: int) -> list[str]:
    """Lines for the ``RESUMABLE_CHANGES`` a resumed fine-tune changes (config.json keeps the
    new values; the old record goes to history/)."""
    old, defaults = (saved or {}).get("config") or {}, default_config()
    notes = []
    for key in RESUMABLE_CHANGES:  # a record from before a field existed: its default
        section, name = key.split(".")
        before = (old.get(section) or {}).get(name, defaults[section][name])
        now = config[section][name]
        if before != now:
            notes.append(f"note: resumed at step {step} with {key}={now!r}; the steps before it "
                         f"trained with {key}={before!r}")
    recorded = (saved or {}).get("derived")  # every run's checkpoint records its derived values
    texts = ((recorded or {}).get("texts") or {}).get("train")
    per_epoch = (recorded or {}).get("steps_per_epoch")
    if (recorded is not None and (recorded.get("batch_order") or 1) < BATCH_ORDER
            # the orders differ only where an epoch leaves texts out, and from a step inside it
            and not (texts and texts % config.train.batch_size == 0)
            and not (per_epoch and step % per_epoch == 0)):
        notes.append(f"note: resumed at step {step} a fine-tune begun by an older lmscale, whose "
                     f"epochs left out the longest texts of their last pool; from here each "
                     f"epoch leaves out random ones (this epoch's order differs from step {step} "
                     f"on: some of its texts are read twice, others not)")
    return notes


# Settings of LM training that fine-tuning has no use for (each must keep its default_config
# value), with what fine-tuning does instead; every data.* setting is one too.
NOT_IN_FINE_TUNING = {
    "optim.name": "it trains with Adam, one rate per part",
    "optim.lr_drop_epochs": "it trains with Adam, one rate per part",
    "train.grad_accum_steps": "each step reads one batch of whole texts",
    "train.seq_len": "it reads whole texts; finetune.grad_tokens bounds the back-propagation "
                     "through long ones",
    "train.variable_bptt": "it reads whole texts",
    "train.bptt_max": "it reads whole texts",
    "train.bptt_bucket": "it reads whole texts; finetune.bucket_width rounds the batch widths",
    "train.eval_steps": "it validates on whole texts; finetune.max_val_texts bounds the "
                        "validation during training",
    "train.start_from": "the classifier's LM starts from init_from's parameters",
    "train.divergence_factor": "a fine-tune stops only on a loss or probabilities that are not "
                               "finite",
    "checkpoint.keep_best": "it always keeps the checkpoint of the best finetune.best_metric "
                            "in WORKDIR/best",
    "optim.ntasgd_nonmono": "it trains with Adam, one rate per part",
    "optim.lr_drop_factor": "it trains with Adam, one rate per part",
}
DATA_NOTE = "it reads finetune.train/val/test with the LM's own tokenizer"


def check_used_in_fine_tuning(config: ml_collections.ConfigDict, given: Collection[str] = ()
                              ) -> None:
    """Refuses a setting of LM training that fine-tuning would ignore (set to another value
    than its default, or named in ``given``: the fields the caller set), rather than record
    it in config.json as if applied, naming it and what fine-tuning does instead."""
    defaults = default_config()
    keys = [*NOT_IN_FINE_TUNING, *(f"data.{name}" for name in defaults.data)]
    for key in keys:
        section, name = key.split(".")
        value, off = config[section][name], defaults[section][name]
        if value != off or key in given:
            raise ConfigError(f"{key}={value!r} is a setting of language-model training that "
                              f"fine-tuning does not use ({NOT_IN_FINE_TUNING.get(key, DATA_NOTE)}); "
                              + (f"leave it at {off!r}" if value != off else "leave it unset"))


def check_model_from_lm(config: ml_collections.ConfigDict, lm: TrainedLM,
                        given: Collection[str] = ()) -> None:
    """Refuses a ``model.*`` setting that differs from the LM's where it differs from its
    default or is named in ``given`` (fields the caller set, e.g. the CLI's ``--config.*``
    flags: ``model.hidden=4096``, the default, on a 64-unit LM): the model is ``init_from``'s
    LM (``resolve_config``), so the setting would be recorded, not applied."""
    defaults, lm_model = default_config().model, lm.config.model
    for name, value in config.model.items():
        if (name in lm_model and value != lm_model[name]
                and (value != defaults[name] or f"model.{name}" in given)):
            dropout = (" (fine-tuning applies the LM's own dropouts times "
                       "finetune.lm_dropout; finetune.head_dropout regularizes the head)"
                       if is_dropout_field(name) else "")
            raise ConfigError(f"model.{name}={value!r}: a fine-tune's model is init_from's LM, "
                              f"whose model.{name} is {lm_model[name]!r}; leave it unset{dropout}")


def check_lm_dropout(factor: float, lm: TrainedLM) -> None:
    """Refuses a negative ``finetune.lm_dropout``, one that would scale a rate to 1 or more,
    and one for an LM without dropout in its states (it would change nothing)."""
    if factor < 0:
        raise ConfigError(f"finetune.lm_dropout must be >= 0 (a multiple of the LM's own dropout "
                          f"rates), got {factor!r}")
    drops = feature_dropouts(lm.config.model)
    if factor > 0 and not drops:
        raise ConfigError(f"finetune.lm_dropout={factor!r} scales the LM's own dropout rates that "
                          f"reach its states, and this LM has none (output_dropout, the "
                          f"decoder's, does not); use finetune.head_dropout")
    for name, rate in drops.items():  # each is scaled (with_dropouts_scaled)
        if rate * factor >= 1:
            raise ConfigError(f"finetune.lm_dropout={factor!r} makes model.{name}={rate} a rate of "
                              f"{rate * factor:g}; rates must stay below 1")


def lm_dropout_note(lm: TrainedLM, factor: float) -> str | None:
    """A start-up note when the LM was trained with dropout: what fine-tuning applies of it
    (``finetune.lm_dropout``; none by default, which an AWD-LSTM user may not expect)."""
    drops = feature_dropouts(lm.config.model)
    if not drops:
        return None
    trained = ", ".join(f"model.{k}={v:g}" for k, v in drops.items())
    if factor > 0:
        return (f"note: the LM's dropouts ({trained}) apply in training steps times "
                f"finetune.lm_dropout={factor:g}")
    return (f"note: the LM was trained with dropout ({trained}); fine-tuning reads the texts "
            "without it (finetune.lm_dropout=0.5 applies half of each rate, ULMFiT's classifier "
            "recipe; finetune.head_dropout regularizes the head)")


def check_not_a_language_model_run(workdir: str, init_from: str) -> None:
    """Refuses a fine-tuning workdir that is the LM's (``init_from``) or holds another
    language-model training run: its checkpoints would be taken for a classifier's (a
    "different model" refusal), and ``--config.resume=false`` would archive the LM."""
    if init_from and os.path.abspath(workdir) == os.path.abspath(init_from):
        raise ConfigError(f"--workdir={workdir} is the language model's own workdir "
                          f"(init_from): give the fine-tuning run a workdir of its own")
    config_path = os.path.join(workdir, "config.json")
    if os.path.isfile(config_path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
        _, derived = load_config(config_path)
        if "class_names" not in derived:
            raise ConfigError(f"{workdir} holds a language-model training run (lmscale.train), "
                              f"not a fine-tuning run: fine-tune into another --workdir "
                              f"(--config.init_from={workdir} starts from that LM)")


def optim_as_begun(config: ml_collections.ConfigDict, saved: dict[str, Any] | None,
                   workdir: str) -> ml_collections.ConfigDict:
    """``config.optim``, or, resuming a fine-tune begun before fine-tuning applied weight decay
    (its record has no ``optim.weight_decay_style``) with the same ``optim.weight_decay``,
    that setting off as it trained (a note says so): its checkpoints have no decay step."""
    old = ((saved or {}).get("config") or {}).get("optim") or {}
    applied = ((saved or {}).get("derived") or {}).get("weight_decay")  # recorded since
    began_without = "weight_decay_style" not in old or applied == 0.0
    if (saved is None or not began_without or config.optim.weight_decay <= 0
            or old.get("weight_decay") != config.optim.weight_decay):
        return config.optim
    if jax.process_index() == 0:
        print(for_caller(f"note: {workdir} began before fine-tuning applied optim.weight_decay "
                         f"(it was recorded, not applied): it goes on without it, as it "
                         f"trained (--config.resume=false starts afresh with it)"),
              file=sys.stderr, flush=True)
    optim = ml_collections.ConfigDict(config.optim.to_dict())
    optim.weight_decay = 0.0
    return optim


def as_applied(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint record's config with the weight decay its run applied (``derived``), which
    a run continued from one begun before fine-tuning applied it does not (``optim_as_begun``)."""
    config, applied = meta.get("config") or {}, (meta.get("derived") or {}).get("weight_decay")
    if applied is None or "optim" not in config:
        return config
    return {**config, "optim": {**config["optim"], "weight_decay": applied}}
