"""Fine-tuning's train records: the throughput leaves out every step that compiles (each batch
width's first); a record is the mean of its window; the start-up notes."""

from __future__ import annotations

import pytest

from tests.conftest import lowered_programs
from tests.finetune.conftest import ft_config


def test_every_compiling_step_is_left_out_of_the_rates(sst_run, data, tmp_path):
    """Each batch width (bucket) compiles the step anew; only the first step and the
    unfreezing one were set apart, so a 10-step run's rate counted 4 compiles (0.23 steps/s).
    With a record per step, exactly the steps whose program was lowered have no rate."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    run = str(tmp_path / "ft")
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 8, "train.log_every": 1, "train.eval_every": 0, "checkpoint.every": 100,
        "finetune.bucket_width": 16, "finetune.freeze_steps": 3})
    with lowered_programs() as built:
        finetune(config, run)
    steps = [name for name in built if name == "jit(step)"]  # the fine-tuning step's programs
    records = [r for r in read_metrics(run) if r["split"] == "train"]
    untimed = [r["step"] for r in records if r.get("steps_per_s") is None]
    assert len(steps) >= 3, built  # several widths, frozen and not
    assert len(untimed) == len(steps), (untimed, steps)
    assert all(r["first_step_s"] > 0 for r in records if r["step"] in untimed)


def test_a_train_record_is_the_mean_of_its_window_and_counts_texts_per_step(sst_run, data,
                                                                            tmp_path, capsys):
    """log_every=2's record at step 2 is the mean of log_every=1's at steps 1 and 2 (loss,
    aux LM loss, accuracy: a fraction); texts/s is steps/s times the batch; the start-up notes
    (grad_tokens longer than every training text, the head's rate as given) are said."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    records = {}
    for every in (1, 2):
        config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
            "train.steps": 3, "train.log_every": every, "train.eval_every": 0,
            "checkpoint.every": 100, "finetune.aux_lm_weight": 0.5, "finetune.bucket_width": 512,
            "finetune.grad_tokens": 100_000, "train.per_device_batch_size": 16})
        finetune(config, str(tmp_path / f"ft{every}"))
        records[every] = [r for r in read_metrics(str(tmp_path / f"ft{every}"))
                          if r["split"] == "train"]
    err = capsys.readouterr().err
    assert "note: finetune.grad_tokens=100000 is not shorter than the longest training text" in err
    assert ("note: global batch 16 (16 per device x 1 devices), learning rate 0.003; the head's "
            "finetune.head_lr=0.01, as given (not scaled)") in err
    (whole, _), (one, two, _) = records[2], records[1]
    for key in ("loss", "aux_lm_loss", "accuracy"):
        assert whole[key] == pytest.approx((one[key] + two[key]) / 2, rel=1e-5), key
    assert 0.0 <= whole["accuracy"] <= 1.0 and whole["aux_lm_loss"] > 0
    timed = [r for r in records[1] + records[2] if r.get("steps_per_s")]
    assert timed and all(r["texts_per_s"] == pytest.approx(16 * r["steps_per_s"]) for r in timed)


def test_a_validation_inside_the_first_window_keeps_its_first_step_s(sst_run, data, tmp_path):
    """Validating every 2 steps, logging every 4: the validation at step 2 restarts the
    window's timing, which dropped the compiling first step's seconds (no first_step_s)."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    run = str(tmp_path / "ft")
    config = ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 4, "train.log_every": 4, "train.eval_every": 2, "checkpoint.every": 100,
        "finetune.bucket_width": 512, "finetune.freeze_steps": 0})
    finetune(config, run)
    (record,) = [r for r in read_metrics(run) if r["split"] == "train"]
    assert record["step"] == 4 and record["first_step_s"] > 0, record
