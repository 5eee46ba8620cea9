"""The divergence stop: a training loss that is not finite, or far above a uniform guess's
(train.divergence_factor x ln V), at a log or a save, stops the run unsaved."""

from __future__ import annotations

import math
import os

import pytest

from lmscale.training.loop import train
from tests.conftest import tiny_config


def steps_on_disk(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if os.path.isdir(folder) else []


def test_a_loss_far_above_a_uniform_guess_stops_the_run_before_it_saves(tmp_path, corpus):
    """lr 100 without clipping: a finite loss ~20x a uniform guess's, exit 0, and the rotated
    checkpoints all held the diverged weights."""
    from lmscale.training.loop import DivergedError
    from lmscale.training.metrics import read_metrics
    kw = {"train.steps": 40, "optim.lr": 100.0, "optim.clip": 0.0, "optim.warmup_steps": 0,
          "optim.schedule": "constant", "checkpoint.every": 2, "train.eval_every": 0}
    workdir = str(tmp_path / "run")
    with pytest.raises(DivergedError, match=r"the training loss is [0-9.e+]+ nats a token, "
                                            r"above 3 x the 5.55 of a uniform guess over the "
                                            r"257 tokens at step (\d+): the run diverged") as e:
        train(tiny_config(corpus, **kw), workdir)
    stopped = e.value.step
    logged = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert logged[-1]["step"] == stopped and logged[-1]["loss"] > 3 * math.log(257)
    assert all(s < stopped for s in steps_on_disk(workdir))  # its weights were not saved
    train(tiny_config(corpus, **{**kw, "train.divergence_factor": 0.0}), str(tmp_path / "on"))
    # A save between two logs checks the steps since the last one (it saved diverged, finite
    # weights over the good ones, then advised resuming from them).
    with pytest.raises(DivergedError, match=r"above 3 x the 5.55 .* at step 2: the run diverged "
                                            r"and is stopped unsaved; no checkpoint was written"):
        train(tiny_config(corpus, **{**kw, "train.log_every": 30}), str(tmp_path / "saves"))
    assert steps_on_disk(str(tmp_path / "saves")) == []
