"""Bounded async dispatch (training/in_flight.py): long unsynchronized loops on a split CPU host."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from lmscale.training.in_flight import InFlight
from tests.conftest import REPO, xla_flags

COLLECTIVE_LIMITS = (" --xla_cpu_collective_call_warn_stuck_timeout_seconds=5"
                     " --xla_cpu_collective_call_terminate_timeout_seconds=5")


def test_keeps_at_most_depth_minus_one_outputs_after_each_add():
    in_flight = InFlight(depth=2)
    in_flight.add(jnp.ones(3))
    assert len(in_flight) == 1
    in_flight.add({"loss": jnp.zeros(())})
    assert len(in_flight) == 1  # the first was waited for
    deep = InFlight(depth=4)
    for _ in range(10):
        deep.add(jnp.ones(2))
    assert len(deep) == 3
    with pytest.raises(ValueError, match="depth must be >= 1"):
        InFlight(depth=0)


def test_training_without_intermediate_logging_runs_to_the_end_on_two_devices(tmp_path):
    # 400 steps with no sync in between (log_every = steps, no validation or checkpoint until
    # the end). Unbounded, JAX 0.10 queued the steps' all-reduces until XLA's rendezvous limit
    # (20 s stuck + 20 s) killed the process ("Termination timeout for `all reduce ...`", exit
    # -6): at 250 and 400 steps of this 64-unit model, not at 100. The queue's all-reduces
    # never meet, so a shorter limit (5 s + 5 s) only makes that failure come sooner.
    env = {**os.environ, "XLA_FLAGS": xla_flags(2) + COLLECTIVE_LIMITS}
    args = [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
            f"--workdir={tmp_path / 'run'}", "--config.model.hidden=64",
            "--config.train.seq_len=32", "--config.train.steps=400",
            "--config.train.log_every=400", "--config.train.eval_every=0",
            "--config.checkpoint.every=100000"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Termination timeout" not in done.stderr
    assert "step 400/400" in done.stderr + done.stdout
