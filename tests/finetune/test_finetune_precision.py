"""Fine-tuning in reduced precision: the rates logged after float16's skipped steps, and a
bfloat16 run's classifier."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from tests.finetune.test_finetune import ft_config


def test_the_logged_rates_are_those_applied_when_float16_skips_steps(sst_run, data, tmp_path):
    """A skipped step (loss-scale overflow) applies no update and advances no schedule; the
    log computed the rates from the step number (the audit's 40-step float16 fine-tune: 15
    skipped, the logged head rate 5.8e-4 against 4.6e-3 applied). Read from the optimizer's
    counts now: each record's rates are the schedules at (step - skipped - 1)."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    from lmscale.training.optimizer import make_finetune_optimizer
    run = str(tmp_path / "fp16")
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 10, "train.log_every": 1, "train.eval_every": 0, "checkpoint.every": 100,
        "precision.compute": "float16", "precision.loss_scale_factor": 2.0 ** 8,
        "optim.schedule": "linear", "optim.warmup_steps": 3, "finetune.freeze_steps": 2})
    finetune(config, run)
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert 0 < records[-1]["skipped"] < 10, records[-1]  # some steps skipped, not all
    _, schedules = make_finetune_optimizer(config.optim, 10, lr=config.optim.lr,
                                           head_lr=config.finetune.head_lr, freeze_steps=2)
    for r in records:
        applied = r["step"] - r["skipped"]  # updates the optimizer applied so far
        assert r["lr"] == pytest.approx(float(schedules["head"](max(applied - 1, 0))), rel=1e-6), r
        lm = 0.0 if applied <= 2 else float(schedules["lm"](applied - 2 - 1))
        assert r["lm_lr"] == pytest.approx(lm, rel=1e-6, abs=1e-12), r


def test_a_classifier_fine_tuned_in_bfloat16_predicts_as_it_was_validated(sst_run, data, tmp_path):
    """load_classifier ran every fine-tuned run in float32: a bfloat16 fine-tune's thresholds
    and reported metrics came from bfloat16 probabilities, which its classifier did not give
    (up to 5.6e-4 apart here). It computes in the run's precision.compute now."""
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    run = str(tmp_path / "bf16")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 4, "precision.compute": "bfloat16"}), run)
    saved = list(csv.DictReader(open(os.path.join(run, "val_predictions.csv"))))
    texts = [r["sentence"] for r in csv.DictReader(open(data["sst_val"]))]
    probs = load_classifier(run, batch_size=32).predict_proba(texts)[:, 1]
    np.testing.assert_allclose(probs, [float(r["p_1"]) for r in saved], atol=1e-6)
