"""kill -9 at 10 random moments of one run (some during checkpoint writes), each followed by a
re-run of the same command: the final metrics equal an uninterrupted run's bit for bit."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from lmscale.training.metrics import read_metrics
from tests.conftest import REPO, tiny_train_command

COMPARED = ("step", "split", "loss", "bpc", "lr", "grad_norm")
STEPS = 60


def command(workdir, data) -> list[str]:
    """Checkpoints every 3 steps (so kills often land in a write), evaluation every 20."""
    return tiny_train_command(workdir, data, **{
        "train.steps": STEPS, "train.log_every": 1, "train.eval_every": 20,
        "train.eval_batch_size": 4, "train.eval_steps": 2, "checkpoint.every": 3,
        "checkpoint.keep": 2})


def records(workdir) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in read_metrics(str(workdir))]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_equals_uninterrupted(tmp_path):
    """About 3 minutes on 2 CPU cores (10 restarts, each importing jax and compiling)."""
    from tests.conftest import write_corpus
    corpus = write_corpus(tmp_path / "corpus")
    full = tmp_path / "full"
    done = subprocess.run(command(full, corpus), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "run"
    rng = random.Random(0)
    metrics = run / "metrics.jsonl"
    for kill in range(10):
        proc = subprocess.Popen(command(run, corpus), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # wait until it trains (past start-up), then a random moment: mid-step, mid-save, mid-eval
        deadline = time.monotonic() + 120
        start = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        while time.monotonic() < deadline and proc.poll() is None and (
                not metrics.exists() or len(metrics.read_text().splitlines()) <= start):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.kill()  # SIGKILL
        proc.wait()
    done = subprocess.run(command(run, corpus), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert records(run) == records(full)
    assert not [d for d in os.listdir(run / "checkpoints") if "tmp" in d]
