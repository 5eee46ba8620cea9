"""Fine-tuning in reduced precision: the rates logged after float16's skipped steps, and a
bfloat16 run's classifier."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from tests.finetune.conftest import ft_config


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


def test_a_fine_tune_resumed_in_another_precision_starts_its_loss_scale(sst_run, data, tmp_path,
                                                                         capsys):
    """lmscale.train restarts the loss scale on a precision change; a fine-tune kept the
    checkpoint's: float32 -> float16 trained at scale 1 (small float16 gradients underflow,
    unsaid), float16 -> float32 logged float16's leftover scale."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    base = {"train.log_every": 1, "train.eval_every": 0, "checkpoint.every": 2}
    run = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **base, **{"train.steps": 2}), run)
    capsys.readouterr()
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **base, **{
        "train.steps": 4, "precision.compute": "float16"}), run)
    assert ("note: resuming in float16 (the checkpoint trained in float32): its loss scale "
            "starts at 4.29497e+09") in capsys.readouterr().err
    scales = {r["step"]: r["loss_scale"] for r in read_metrics(run) if r["split"] == "train"}
    assert scales[3] >= 2.0 ** 20, scales  # from 2^32 (one overflow at most halves it)
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **base, **{"train.steps": 6}), run)
    scales = {r["step"]: r["loss_scale"] for r in read_metrics(run) if r["split"] == "train"}
    assert scales[5] == scales[6] == 1.0, scales


def test_a_float16_fine_tune_skipping_every_step_stops_instead_of_saving_nan(sst_run, data,
                                                                             tmp_path):
    """Every step overflowing at loss scale 1 ran to the end, exited 0 and kept a classifier
    whose float16 probabilities were NaN (classify then said class 0 for every text); it
    stops as lmscale.train does (exit 3)."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.diverged import DivergedError
    from lmscale.training.precision import STUCK_STEPS
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": STUCK_STEPS + 20, "train.log_every": 10, "train.eval_every": 0,
        "checkpoint.every": 1000, "precision.compute": "float16",
        "precision.loss_scale_init": 2.0, "optim.lr": 1000.0, "finetune.head_lr": 1000.0})
    with pytest.raises(DivergedError, match="float16: the last .* steps were all skipped"):
        finetune(config, str(tmp_path / "boom"))


def test_probabilities_that_are_not_finite_are_refused_not_read_as_class_0():
    from lmscale.data.errors import DataError
    from lmscale.transfer.metrics import predict_labels, tune_thresholds
    probs = np.array([[0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    with pytest.raises(DataError, match="1 of 3 texts' class probabilities are not finite"):
        predict_labels(probs, False)
    with pytest.raises(DataError, match="not finite"):
        tune_thresholds(probs, np.array([[0, 1], [1, 0], [1, 0]]))
    assert list(predict_labels(probs[[0, 2]], False)) == [1, 0]


def test_a_float16_validation_that_overflows_stops_the_fine_tune(sst_run, data, tmp_path):
    """Finite weights whose float16 forward overflows gave NaN validation probabilities: kept
    as "best" (NaN compares as nothing) and argmax-ed to class 0; now a DivergedError naming
    the step and the way on (exit 3)."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.diverged import DivergedError
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 10, "train.log_every": 5, "train.eval_every": 5,
        "checkpoint.every": 1000, "precision.compute": "float16",
        "precision.loss_scale_init": 2.0, "optim.lr": 1000.0, "finetune.head_lr": 1000.0})
    with pytest.raises(DivergedError, match="validation probabilities are not finite at step 5 "
                                            r"\(the weights are: the float16 forward overflows\)"):
        finetune(config, str(tmp_path / "boom"))
