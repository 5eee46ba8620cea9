"""Fine-tuning's throughput leaves out every step that compiles (each batch width's first)."""

from __future__ import annotations

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
