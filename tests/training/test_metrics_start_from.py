"""A train.start_from run killed before its first checkpoint logs its step-0 validation once."""

from __future__ import annotations

import os
import shutil

from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import tiny_config
from tests.training.test_metrics import read_events


def test_a_start_from_restart_logs_step_0_once(tmp_path, corpus):
    source = str(tmp_path / "source")
    train(tiny_config(corpus, **{"train.steps": 4, "train.eval_every": 0}), source)
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 4, "train.eval_every": 0, "checkpoint.every": 100,
                "train.start_from": source}
    train(tiny_config(corpus, **settings), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # a kill -9 before the only save
    train(tiny_config(corpus, **settings), workdir)
    val_steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "val"]
    assert val_steps == [0, 4]  # was [0, 0, 4]
    # What TensorBoard shows: each file in order, a SessionLog START at s dropping steps >= s.
    shown = []
    for name in sorted(os.listdir(os.path.join(workdir, "tb"))):
        for event in read_events(os.path.join(workdir, "tb", name)):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                shown = [s for s in shown if s < event.step]
            shown += [event.step for v in event.summary.value if v.tag == "val/loss"]
    assert shown == [0, 4]  # was [0, 0, 4]


def test_a_finished_rerun_drops_the_lost_steps_from_tensorboard(tmp_path, corpus):
    from tests.training.test_metrics import visible_scalars
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 8, "train.eval_every": 0, "checkpoint.every": 4,
                "train.log_every": 2}
    train(tiny_config(corpus, **settings), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))  # a kill -9 before the last save
    assert train(tiny_config(corpus, **{**settings, "train.steps": 4}), workdir)["already_trained"]
    shown = visible_scalars(os.path.join(workdir, "tb"), "train/loss")
    assert sorted(shown) == [2, 4]  # showed 6 and 8 of the lost run
