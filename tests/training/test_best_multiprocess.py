"""checkpoint.keep_best in a two-process run (jax.distributed on 127.0.0.1, gloo on the CPU)
resumed after a stop in the middle of replacing its best weights: every process lists the best
steps before process 0 deletes the one best.json does not name (best.py's "lmscale: best steps
listed" barrier; orbax deletes on process 0, then waits for every process's own delete).

Process 1 of the resumed run lists the best steps a few seconds late (``late``), so that
without a barrier between listing and deleting, process 0 deletes the extra step before
process 1 lists it; process 1 then deletes nothing and process 0 waits for it in orbax's
delete barrier (a hang, here a process killed at the timeout). With orbax 0.12.8
CheckpointManager.__init__ itself lists the steps and then waits for every process
(save_root_metadata's barrier), so lmscale's own barrier is a second guard: the test fails
only without both."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import jax
import numpy as np

from tests.conftest import tiny_train_command, write_corpus
from tests.launch.test_agreement import run_two
from tests.launch.test_local import checkpoint_steps


def late(command: list[str], method: str, folder: str, process: int, seconds: float,
         say: str = "") -> list[str]:
    """``command`` (``python -m lmscale.train ...``) run so that on process ``process`` orbax's
    CheckpointManager ``method`` (a private method; without it, no delay) of the manager of
    ``folder`` ("best", "checkpoints") starts ``seconds`` late, printing ``say`` then."""
    script = f"""
import os, runpy, sys, time
from orbax.checkpoint import CheckpointManager as manager
original = getattr(manager, {method!r}, None)
def late(self, *args, **kwargs):
    if self.directory.name == {folder!r} and os.environ.get("LMSCALE_PROCESS_ID") == "{process}":
        time.sleep({seconds})
        if {say!r}:
            print({say!r}, file=sys.stderr, flush=True)
    return original(self, *args, **kwargs)
if original is not None:
    setattr(manager, {method!r}, late)
runpy.run_module("lmscale.train", run_name="__main__", alter_sys=True)
"""
    return [sys.executable, "-c", script, *command[command.index("lmscale.train") + 1:]]


# Process 1 of the resumed run lists the steps of best/ DELAY seconds late. The delay is taken
# in CheckpointManager's listing: orbax's constructor first waits for every process (its
# create_directory barrier), so a delay before the constructor would be waited out there and
# leave the race window milliseconds wide.
DELAY = 3


def command(workdir, corpus, steps: int) -> list[str]:
    """A 16-unit mLSTM validated every 2 steps (1 batch), checkpointed every 2, keeping its best."""
    return tiny_train_command(workdir, corpus, "--initialization_timeout=60", **{
        "model.hidden": 16, "train.steps": steps, "train.eval_every": 2, "train.eval_steps": 1,
        "train.eval_batch_size": 4, "train.log_every": 1, "optim.decay_steps": 200,
        "checkpoint.every": 2, "checkpoint.keep_best": True})


def best_steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(workdir / "best") if n.isdigit())


def best_json(workdir) -> dict:
    return json.loads((workdir / "best.json").read_text())


def val_losses(workdir) -> dict[int, float]:
    from lmscale.training.metrics import read_metrics
    return {r["step"]: r["loss"] for r in read_metrics(str(workdir)) if r["split"] == "val"}


def test_two_processes_resume_a_stop_mid_replacement_of_the_best_weights(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=200)
    run = tmp_path / "run"
    for status, err in run_two([command(run, corpus, 4)] * 2, timeout=240):
        assert status == 0, err[-3000:]
    first = best_json(run)
    assert best_steps(run) == [first["step"]] and checkpoint_steps(run) == [2, 4]
    old = first["step"]

    # The stop: at step 6 the run saved best/6 and was stopped before it wrote best.json (which
    # still names the old best) and before checkpoint 6. A copy of best/<old> stands for the
    # weights the stopped run saved; the resumed run starts from checkpoint 4.
    shutil.copytree(run / "best" / str(old), run / "best" / "6")
    assert best_steps(run) == [old, 6] and best_json(run)["step"] == old

    resume = command(run, corpus, 8)
    assert resume[1:3] == ["-m", "lmscale.train"]
    start = time.monotonic()
    results = run_two([resume, late(resume, "_load_checkpoint_infos", "best", 1, DELAY,
                                    "test: best steps listed late")], timeout=240)
    elapsed = time.monotonic() - start
    for status, err in results:  # a hang is a process killed at the timeout (-9)
        assert status == 0, (status, elapsed, err[-3000:])
    import orbax.checkpoint as ocp
    if hasattr(ocp.CheckpointManager, "_load_checkpoint_infos"):  # the delay took effect
        assert "test: best steps listed late" in results[1][1]

    record = best_json(run)
    assert best_steps(run) == [record["step"]]  # exactly the weights best.json names
    losses = val_losses(run)
    assert sorted(losses) == [2, 4, 6, 8]
    assert record["loss"] == min(losses.values())
    assert record["step"] == min(losses, key=losses.get)
    assert checkpoint_steps(run) == [4, 6, 8]  # orbax keeps the last 3

    from lmscale.training.restore import load_trained
    best = load_trained(str(run), best=True)
    same_step = load_trained(str(run), step=record["step"])  # not NT-ASGD: the same weights
    assert best.step == same_step.step == record["step"]
    assert len(jax.tree.leaves(best.params)) == len(jax.tree.leaves(same_step.params)) > 0
    for a, b in zip(jax.tree.leaves(best.params), jax.tree.leaves(same_step.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_best_weights_wait_for_a_checkpoint_still_being_finished(tmp_path):
    """Orbax finishes an async checkpoint save in a background thread with barriers named the
    same for every manager; the best weights' save entered the same barrier from the main
    thread while process 0 was still finishing the step-2 checkpoint: "Barrier
    ThreadSaveMultiHostValueHolder:set_value_start is already ongoing" (seen once in CI). The
    best weights now wait for the checkpoint first: with process 0 finishing each checkpoint
    8 s late (process 1 meanwhile validates at step 4 and saves its best weights), the run
    completes with its checkpoints and best weights (without the wait: both processes hung,
    killed at the timeout)."""
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=200)
    run = tmp_path / "run"
    cmd = command(run, corpus, 6)
    # process 0 finishes each async checkpoint save (orbax's finalize thread) 8 s late
    slow = late(cmd, "_finalize", "checkpoints", 0, 8)
    for status, err in run_two([slow, cmd], timeout=240):
        assert status == 0, err[-3000:]
    assert checkpoint_steps(run) == [2, 4, 6]
    assert best_steps(run) == [best_json(run)["step"]]
