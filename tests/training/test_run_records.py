"""The train record of a logging window, its plain line, and a finished run's re-run."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tqdm

from lmscale.training.precision import LossScale
from lmscale.training.run_records import already_trained, show_train_record, train_record
from lmscale.training.step_timer import StepTimer


def _timed(steps: int) -> StepTimer:
    timer = StepTimer()
    for _ in range(steps):
        timer.after(False, None)
    return timer


def test_a_train_record_counts_bits_per_byte_and_chars_per_step_of_its_window():
    """Subword tokens: 30 targets of 120 bytes in a window of 3 steps of 10 tokens. bpc is per
    byte (not per token), chars/s per step's bytes (not the window's), the epoch as given."""
    acc = {"nats": np.float32(60.0), "bytes": np.float32(120.0), "count": np.float32(30.0),
           "steps": np.int32(3)}
    record = train_record(9, acc, {"lr": 0.5, "grad_norm": 2.0}, LossScale.create(False),
                          1.25, _timed(3), 10.0, word_level=False)
    assert record["loss"] == pytest.approx(2.0)
    assert record["bpc"] == pytest.approx(60.0 / 120.0 / math.log(2))
    assert record["bits_per_token"] == pytest.approx(2.0 / math.log(2))
    assert record["epoch"] == 1.25 and record["step"] == 9
    assert record["chars_per_s"] / record["tokens_per_s"] == pytest.approx(40.0 / 10.0)


def test_the_plain_line_gives_the_rate_in_chars_per_second(capsys):
    record = {"step": 4, "loss": 1.0, "bpc": 1.5, "lr": 0.01, "chars_per_s": 1234.0}
    with tqdm.tqdm(disable=True) as bar:
        show_train_record(record, 8, _timed(2), bar, plain=True)
    assert "step 4/8: loss 1.0000 bpc 1.5000 lr 1.000e-02 1.23e+03 chars/s" in \
        capsys.readouterr().err


def test_a_rerun_drops_the_records_logged_past_the_checkpoint(tmp_path, capsys):
    """A run killed after logging step 5 (log_every=1) but saving only step 4: its re-run
    drops step 5, as a resume would, and returns step 4's record."""
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in (3, 4, 5):
            f.write(json.dumps({"step": step, "split": "train", "loss": float(step)}) + "\n")
    last = already_trained(workdir, 4, 4, is_main=True)
    assert last["train"]["step"] == 4 and last["already_trained"]
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [3, 4]
    assert "is already trained to step 4 (train.steps=4)" in capsys.readouterr().err
