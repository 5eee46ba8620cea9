"""A run whose only checkpoint is step 0 keeps the step-0 validation it logged."""

from __future__ import annotations

import os

from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.stop import StopSignal
from tests.conftest import tiny_config


def test_a_step_0_checkpoint_keeps_its_step_0_validation(tmp_path, corpus, monkeypatch):
    source = str(tmp_path / "source")
    train(tiny_config(corpus, **{"train.steps": 4, "train.eval_every": 0}), source)
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 4, "train.eval_every": 0, "checkpoint.every": 100,
                "train.start_from": source}
    real = StopSignal.should_stop

    def stop_at_once(self, step):  # a SIGTERM as the steps begin: checkpoint at step 0
        self.signal = 15
        return real(self, step)
    monkeypatch.setattr(StopSignal, "should_stop", stop_at_once)
    train(tiny_config(corpus, **settings), workdir)
    monkeypatch.setattr(StopSignal, "should_stop", real)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[:1] == ["0"]
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "val"] == [0]
    train(tiny_config(corpus, **settings), workdir)
    val_steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "val"]
    assert val_steps == [0, 4], val_steps
