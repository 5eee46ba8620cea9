"""Checks of the config's numbers (finite), the optimizer, the word-level data, AWD optimizer,
variable-BPTT, accumulation and CPU-parallel settings (``config.validate`` calls them), apart
from config.py's defaults and loading."""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from lmscale.config_values import (AVERAGING_OPTIMIZERS, LR_SCALINGS, OPTIMIZERS, SCHEDULES,
                                   WEIGHT_DECAY_ON, WEIGHT_DECAY_STYLES, ConfigError, bptt_max,
                                   parse_epochs)


def check_numbers(config: ml_collections.ConfigDict) -> None:
    """Refuses a NaN or infinite number in any field (``check_finite_numbers``) and a negative
    ``train.divergence_factor``."""
    check_finite_numbers(config)
    if config.train.get("divergence_factor", 0) < 0:
        raise ConfigError(f"train.divergence_factor must be >= 0 (0: stop only on a loss that "
                          f"is not finite), got {config.train.divergence_factor!r}")


def check_finite_numbers(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Refuses a NaN or infinite number in any field: ``--config.optim.lr=nan`` passed the
    checks written as ``lr <= 0`` (False for NaN), trained, and stopped on parameters that
    were not finite, advising a lower optim.lr."""
    for key, value in config.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            check_finite_numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key} must be a finite number, got {value!r}")


def check_step_counts(config: ml_collections.ConfigDict) -> None:
    """The compiled step counts steps in int32: optim.decay_steps=3e9 (meant as "no decay"),
    or a train.steps no train.epochs bounds, stopped the first step with an OverflowError."""
    counts = {"optim.warmup_steps": config.optim.warmup_steps,
              "optim.decay_steps": config.optim.decay_steps,
              **({} if config.train.epochs else {"train.steps": config.train.steps})}
    instead = {"optim.decay_steps": " (optim.schedule='constant' does not decay)",
               "train.steps": " (a train.epochs bounds a large train.steps)"}
    for key, value in counts.items():
        if value >= 2**31:
            raise ConfigError(f"{key}={value} is more steps than a run counts (at most "
                              f"2**31 - 1: the step counter is int32); use a smaller value"
                              f"{instead.get(key, '')}")


def refuse_init_from(config: ml_collections.ConfigDict) -> None:
    """``init_from`` belongs to fine-tuning; an LM run given it trained from random weights."""
    if config.get("init_from"):
        raise ConfigError(f"init_from={config.init_from!r} is read by lmscale.finetune (the LM a "
                          f"classifier starts from); an LM run trains on from its --workdir's "
                          f"checkpoint: to train those weights further, pass their workdir (or a "
                          f"copy of it) as --workdir, or start a new run from them with "
                          f"--config.train.start_from={config.init_from}, and drop init_from")


def refuse_finetune_settings(config: ml_collections.ConfigDict,
                             defaults: ml_collections.ConfigDict) -> None:
    """``finetune.*`` belongs to fine-tuning; an LM run given them (``lmscale.train`` with a
    fine-tuning config) trained an LM on ``data.train`` and recorded them as if applied."""
    moved = [f"finetune.{k}={v!r}" for k, v in config.get("finetune", {}).items()
             if k in defaults.finetune and v != defaults.finetune[k]]
    if moved:
        more = f" (and {len(moved) - 3} more)" if len(moved) > 3 else ""
        raise ConfigError(f"{', '.join(moved[:3])}{more}: finetune.* settings are read by "
                          f"lmscale.finetune (with --config.init_from=LM_WORKDIR); an LM run "
                          f"trains on data.train={config.data.train!r} and does not use them: "
                          f"run a fine-tuning config with lmscale.finetune, or drop them")


def check_document_resets(config: ml_collections.ConfigDict) -> None:
    """``data.reset_every_documents``: a count >= 0, not beside ``reset_on_documents`` (N = 1)."""
    every = config.data.get("reset_every_documents", 0)
    if every < 0:
        raise ConfigError(f"data.reset_every_documents must be >= 0 (0: off), got {every}")
    if config.data.reset_on_documents and every > 1:
        raise ConfigError(f"data.reset_on_documents resets at every document and "
                          f"data.reset_every_documents={every} at the start of every {every} "
                          f"documents: set one")


def validate_awd(config: ml_collections.ConfigDict) -> None:
    """Word-level data, AWD optimizers and variable BPTT settings."""
    d, o, t = config.data, config.optim, config.train
    if not isinstance(d.word_min_count, int) or d.word_min_count < 1:
        raise ConfigError(f"data.word_min_count must be a positive integer, got {d.word_min_count!r}")
    if not isinstance(d.word_vocab_size, int) or d.word_vocab_size < 0 or 0 < d.word_vocab_size <= 3:
        raise ConfigError(f"data.word_vocab_size must be 0 (no cap) or > 3, got {d.word_vocab_size!r}")
    if o.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name must be one of {list(OPTIMIZERS)}, got {o.name!r}")
    parse_epochs(o.lr_drop_epochs)
    if not 0 < o.lr_drop_factor <= 1:
        raise ConfigError(f"optim.lr_drop_factor must be in (0, 1], got {o.lr_drop_factor}")
    if not isinstance(o.ntasgd_nonmono, int) or o.ntasgd_nonmono < 0:
        raise ConfigError(f"optim.ntasgd_nonmono must be an integer >= 0, got {o.ntasgd_nonmono!r}")
    if not isinstance(t.bptt_bucket, int) or t.bptt_bucket < 1:
        raise ConfigError(f"train.bptt_bucket must be a positive integer, got {t.bptt_bucket!r}")
    if not isinstance(t.bptt_max, int) or t.bptt_max < 0 or (t.bptt_max and t.bptt_max < t.seq_len):
        raise ConfigError(f"train.bptt_max must be 0 (seq_len + 15) or >= train.seq_len={t.seq_len}, "
                          f"got {t.bptt_max!r}")
    if t.variable_bptt:
        from lmscale.data.variable_bptt import MIN_LEN
        shortest = -(-MIN_LEN // t.bptt_bucket) * t.bptt_bucket  # lengths are multiples of it
        if shortest > bptt_max(t):
            raise ConfigError(f"train.bptt_bucket={t.bptt_bucket}: every length would be a "
                              f"multiple of it, {shortest} or more, above the longest "
                              f"train.bptt_max={bptt_max(t)}; use a bucket of at most "
                              f"{bptt_max(t)}")
    if o.name in AVERAGING_OPTIMIZERS and not t.eval_every and not t.eval_every_epochs > 0:
        what = "switches to averaging" if o.name == "ntasgd" else "decides when to stop"
        raise ConfigError(f"optim.name={o.name!r} {what} on the validation passes every "
                          f"train.eval_every steps (or train.eval_every_epochs): set one > 0")
    if config.data.sp_model and config.data.tokenizer != "sentencepiece":
        raise ConfigError(f"data.sp_model is for data.tokenizer=sentencepiece, not "
                          f"data.tokenizer={config.data.tokenizer!r} (it would be ignored)")
    if not isinstance(t.grad_accum_steps, int) or t.grad_accum_steps < 1:
        raise ConfigError(f"train.grad_accum_steps must be a positive integer, got {t.grad_accum_steps!r}")
    if t.grad_accum_steps > 1 and t.variable_bptt:
        raise ConfigError("train.grad_accum_steps > 1 and train.variable_bptt cannot be combined "
                          "(accumulated segments have one fixed length)")
    if config.parallel.cpu_devices < 0:
        raise ConfigError(f"parallel.cpu_devices must be >= 0 (0 = one per core), got "
                          f"{config.parallel.cpu_devices}")
    if not isinstance(config.parallel.cpu_huge_pages, bool):
        raise ConfigError(f"parallel.cpu_huge_pages must be True or False, got "
                          f"{config.parallel.cpu_huge_pages!r}")


def check_longest_drawn(config: ml_collections.ConfigDict, kind: Any) -> None:
    """Variable BPTT: the model kind's own validation at every length a step may draw (a
    kind with a length bound, or another rule on lengths, failed at the step that drew one)."""
    from lmscale.data.variable_bptt import length_bounds
    bucket = config.train.bptt_bucket
    shortest, longest = length_bounds(bptt_max(config.train), bucket)
    drawn = config.train.copy_and_resolve_references()
    for length in range(longest, shortest - 1, -bucket):
        drawn.seq_len = length
        try:
            kind.validate(config.model, drawn)
        except ValueError as e:  # the kind names the length it checked as train.seq_len
            why = str(e).replace(f"train.seq_len={length}", f"a drawn length of {length}")
            raise ConfigError(f"train.variable_bptt draws sequences of {shortest} to {longest} "
                              f"tokens (train.bptt_max={bptt_max(config.train)}, in steps of "
                              f"train.bptt_bucket={bucket}): {why}") from None


def validate_optim(o: ml_collections.ConfigDict) -> None:
    """The ``optim`` fields that training and fine-tuning share: schedule, rate, clipping,
    batch scaling, Adam's b1, b2 and eps, and weight decay."""
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {list(SCHEDULES)}, got {o.schedule!r}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if o.warmup_steps < 0 or o.decay_steps < 0 or o.clip < 0:
        raise ConfigError("optim.warmup_steps, optim.decay_steps and optim.clip must be >= 0")
    if o.decay_epochs < 0:
        raise ConfigError(f"optim.decay_epochs must be >= 0, got {o.decay_epochs}")
    if o.lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"optim.lr_scaling must be one of {list(LR_SCALINGS)}, got {o.lr_scaling!r}")
    if o.base_batch_size < 1 or o.lr_max < 0:
        raise ConfigError("optim.base_batch_size must be >= 1 and optim.lr_max >= 0")
    if o.stlr_ratio < 1 or not 0 < o.stlr_cut_frac < 1:
        raise ConfigError("optim.stlr_ratio must be >= 1 and optim.stlr_cut_frac in (0, 1)")
    if o.schedule == "slanted_triangular" and o.warmup_steps:
        # It has no warmup, and the horizon was stretched past the warmup: a 600-step run with
        # warmup_steps=1000 ended at 60 % of its triangle, never back down.
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} does not apply to the "
                          f"slanted_triangular schedule (it rises over optim.stlr_cut_frac of "
                          f"its horizon): set it to 0")
    for key in ("b1", "b2"):  # b1 = 1.5 ran, and the run then stopped on "not finite" params
        if not 0 <= o[key] < 1:
            raise ConfigError(f"optim.{key} (Adam's moment decay) must be in [0, 1), got {o[key]!r}")
    if not o.eps > 0:
        raise ConfigError(f"optim.eps must be > 0, got {o.eps!r}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.weight_decay_style not in WEIGHT_DECAY_STYLES:
        raise ConfigError(f"optim.weight_decay_style must be one of {list(WEIGHT_DECAY_STYLES)}, "
                          f"got {o.weight_decay_style!r}")
    if o.weight_decay_on not in WEIGHT_DECAY_ON:
        raise ConfigError(f"optim.weight_decay_on must be one of {list(WEIGHT_DECAY_ON)}, got "
                          f"{o.weight_decay_on!r}")


def refuse_none(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                prefix: str = "") -> None:
    """A field left None (``null`` in a config.json, ``= None`` in a config file: ml_collections
    takes None for a field of any type) was a TypeError traceback at its first comparison."""
    for key, default in defaults.items():
        if key not in config:
            continue
        if isinstance(default, ml_collections.ConfigDict):
            if isinstance(config[key], (dict, ml_collections.ConfigDict)):
                refuse_none(config[key], default, f"{prefix}{key}.")
        elif config[key] is None and default is not None:
            raise ConfigError(f"{prefix}{key} is None (null); it takes a value of type "
                              f"{type(default).__name__} (default {default!r})")
