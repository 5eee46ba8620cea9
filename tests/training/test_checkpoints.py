"""Checkpoint writing on several devices: small replicated arrays are written whole from one
device (no per-shape slice programs at a process's first save), large ones still replica-
parallel, and checkpoints written by orbax's StandardSave (lmscale before 2026-12-03) restore."""

from __future__ import annotations

import os
import re

import pytest

from lmscale.training.checkpoints import CheckpointError
from tests.conftest import script_result, xla_flags

_FIRST_SAVE = r"""
import json, sys, tempfile
import jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
from lmscale.training import mesh as mesh_lib
from lmscale.training.checkpoints import Checkpointer, MIN_REPLICA_SLICE_BYTES
from lmscale.training.precision import LossScale
from lmscale.training.state import TrainState, zero_acc
from tests.conftest import lowered_programs

mesh = mesh_lib.make_mesh()
rep = mesh_lib.replicated(mesh)
big_rows = max(jax.device_count(), MIN_REPLICA_SLICE_BYTES * jax.device_count() // (4 * 8))  # slices of the floor

def state(params):
    s = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), carry=(),
                   rng=jax.random.PRNGKey(0), acc=zero_acc(), loss_scale=LossScale.create(dynamic=False))
    return jax.device_put(s, rep)

out = {}
# Shapes no other program here uses, so that nothing is in the process's jit caches.
small = state({"w": jnp.arange(37 * 12, dtype=jnp.float32).reshape(37, 12), "b": jnp.ones((26,))})
big = state({"w": jnp.arange(big_rows * 8, dtype=jnp.float32).reshape(big_rows, 8)})
for name, s in (("small", small), ("big", big)):
    d = tempfile.mkdtemp()
    ck = Checkpointer(d, async_save=False)
    with lowered_programs() as built:
        ck.save(s, {"signature": {}})
    back = ck.restore(s, jax.tree.map(lambda _: rep, s))
    ck.close()
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(back)))
    out[name] = {"programs": len(built), "restored": same}

# Written as lmscale wrote checkpoints before (orbax's StandardSave), read by Checkpointer.
d = tempfile.mkdtemp()
manager = ocp.CheckpointManager(d + "/checkpoints", item_names=("state", "meta"))
manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(small),
                                         meta=ocp.args.JsonSave({"format": 2})))
manager.wait_until_finished(); manager.close()
ck = Checkpointer(d, async_save=False)
back = ck.restore(small, jax.tree.map(lambda _: rep, small))
params = ck.restore_params(small.params, rep, 0)
ck.close()
out["standard_save"] = all(np.array_equal(np.asarray(a), np.asarray(b))
                           for a, b in zip(jax.tree.leaves((small, small.params)), jax.tree.leaves((back, params))))
print(json.dumps(out))
"""


def test_first_save_slices_only_large_arrays_and_reads_standard_save_checkpoints():
    out = script_result(_FIRST_SAVE, XLA_FLAGS=xla_flags(4))
    # orbax's default cut the small state's [37, 12] matrix once per device: 4 programs.
    assert out["small"] == {"programs": 0, "restored": True}, out
    # A slice of at least MIN_REPLICA_SLICE_BYTES is still written by every device in parallel.
    assert out["big"]["restored"] and out["big"]["programs"] >= 4, out
    assert out["standard_save"], out


def test_a_full_disk_is_one_error_naming_the_checkpoint(small_disk, corpus, capfd):
    """A save into a full disk printed 512 lines (orbax's threads' tracebacks, then the
    interpreter's shutdown noise); one CheckpointError names the checkpoint and the latest
    complete one, which a re-run resumes from."""
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    config = tiny_config(corpus, **{"model.hidden": 64, "train.steps": 200, "train.log_every": 10,
                                    "train.eval_every": 0, "checkpoint.every": 10})
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=r"^checkpoint (\d+) could not be written in .*: "
                                              r"the disk is full; the latest complete checkpoint "
                                              r"is (\d+) ") as raised:
        train(config, str(small_disk / "run"))
    failed, latest = map(int, re.findall(r"checkpoint (?:is )?(\d+)", str(raised.value)))
    assert failed > latest, raised.value
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("the disk is full") == 1, err  # said at once


def test_an_emptied_step_folder_is_removed_quietly(tmp_path, corpus, capfd):
    """A kill while orbax deleted an old checkpoint left checkpoints/N/ empty; every later
    start logged "Metadata file does not exist" for it (audit)."""
    import os

    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    run = tmp_path / "run"
    settings = {"train.eval_every": 0, "checkpoint.every": 2}
    train(tiny_config(corpus, **{**settings, "train.steps": 4}), str(run))
    os.mkdir(run / "checkpoints" / "3")
    capfd.readouterr()
    train(tiny_config(corpus, **{**settings, "train.steps": 6}), str(run))
    assert "Metadata file does not exist" not in capfd.readouterr().err
    assert not (run / "checkpoints" / "3").exists() and (run / "checkpoints" / "6").is_dir()


@pytest.mark.parametrize("small_disk", ["600k"], indirect=True)
def test_a_full_disk_before_any_checkpoint_says_there_is_none(small_disk, corpus):
    """It said "the latest complete checkpoint is None (re-run to resume from it)"."""
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    config = tiny_config(corpus, **{"model.hidden": 64, "train.steps": 200, "train.log_every": 10,
                                    "train.eval_every": 0, "checkpoint.every": 10})
    with pytest.raises(CheckpointError, match=r"the disk is full; no checkpoint is complete yet "
                                              r"\(a re-run starts afresh"):
        train(config, str(small_disk / "run"))


def test_loading_a_run_while_it_rotates_its_checkpoints(tmp_path, corpus, caplog):
    """A notebook loading the LM of a run still training: orbax reads each step folder as it
    lists them, and the run deletes its oldest meanwhile — a raw FileNotFoundError (1 % of
    loads while a run saved every step) or an unreadable half-deleted checkpoint, and
    "Metadata file does not exist" lines. Here a thread rotates real checkpoints of a finished
    run (a new one appears by a rename, as orbax's do; the oldest is deleted file by file)."""
    import os
    import shutil
    import threading
    import time

    from lmscale.training.loop import train
    from lmscale.training.restore import load_trained
    from tests.conftest import tiny_config
    last = 40
    stash = tmp_path / "stash"  # every step's checkpoint, each holding its own step's state
    train(tiny_config(corpus, **{"train.eval_every": 0, "checkpoint.every": 1,
                                 "checkpoint.keep": last, "train.steps": last}), str(stash))
    run = tmp_path / "run"
    shutil.copytree(stash, run)
    folder = run / "checkpoints"
    for step in range(4, last + 1):
        shutil.rmtree(folder / str(step))

    def rotate() -> None:  # keeps the newest 3, as a run does; each one deleted over ~0.2 s
        for step in range(4, last + 1):
            shutil.copytree(stash / "checkpoints" / str(step), folder / f"{step}.tmp")
            os.rename(folder / f"{step}.tmp", folder / str(step))
            for root, dirs, files in os.walk(folder / str(step - 3), topdown=False):
                for name in files:
                    os.remove(os.path.join(root, name))
                    time.sleep(0.01)
                for name in dirs:
                    os.rmdir(os.path.join(root, name))
            os.rmdir(folder / str(step - 3))

    caplog.set_level("WARNING")
    thread = threading.Thread(target=rotate, daemon=True)
    thread.start()
    steps = []
    while thread.is_alive():
        steps.append(load_trained(str(run)).step)
    thread.join()
    assert len(steps) >= 10 and steps == sorted(steps) and steps[-1] <= last, steps
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]


def test_a_failed_saves_uncollected_write_errors_are_not_logged_at_exit(caplog):
    """orbax leaves a failed save's write tasks uncollected: asyncio logged each when it was
    collected (at exit), "Task exception was never retrieved" and a traceback, after the
    one-line error of a full disk. Another task's error is still logged."""
    import asyncio
    import errno
    import gc

    from lmscale.training.orbax_logs import filter_disk_full_logs
    filter_disk_full_logs()

    def uncollected(error: BaseException) -> None:
        loop = asyncio.new_event_loop()
        loop.create_future().set_exception(error)  # dropped unread: asyncio logs it
        gc.collect()
        loop.close()

    uncollected(ValueError('RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database: '
                           '[OS error 28: No space left on device]'))
    uncollected(OSError(errno.ENOSPC, "No space left on device"))
    assert "never retrieved" not in caplog.text
    uncollected(ValueError("another failure"))
    assert "never retrieved" in caplog.text and "another failure" in caplog.text


def test_after_a_failed_save_its_threads_failing_at_exit_are_not_logged(monkeypatch):
    """A failed save is abandoned and its other threads fail as Python exits ("cannot
    schedule new futures after interpreter shutdown"): orbax logged each with a traceback
    after the one-line error. Before any failed save such an error is still logged."""
    import logging
    import sys

    from lmscale.training.orbax_logs import DiskFullLogs

    def logged(said: bool) -> bool:
        monkeypatch.setattr(DiskFullLogs, "said", said)
        try:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        except RuntimeError:
            record = logging.getLogger("absl").makeRecord(
                "absl", logging.ERROR, "future.py", 387, "_SignalingThread.run() raised an "
                "exception: %s", ("cannot schedule ...",), sys.exc_info())
        return DiskFullLogs().filter(record)

    assert logged(said=False)
    assert not logged(said=True)



_RUNS_AT_ONCE = r"""
import json, os, tempfile, threading, time
import jax, jax.numpy as jnp
from lmscale.training import mesh as mesh_lib
from lmscale.training.checkpoints import Checkpointer
from lmscale.training.precision import LossScale
from lmscale.training.state import TrainState, zero_acc

rep = mesh_lib.replicated(mesh_lib.make_mesh())
steps, runs = 6, 2
together = threading.Barrier(runs)
errors, saved = [], {}

def run(k):  # one run's saves, each step's at the same moment as the other run's
    try:
        ck = Checkpointer(tempfile.mkdtemp(), keep=steps)
        for step in range(1, steps + 1):
            s = TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((64, 8), k)},
                           opt_state=(), carry=(), rng=jax.random.PRNGKey(0), acc=zero_acc(),
                           loss_scale=LossScale.create(dynamic=False))
            together.wait(timeout=60)
            ck.save(jax.device_put(s, rep), {"signature": {}})
        ck.close()
        saved[k] = sorted(ck.steps())
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}"[:300])

threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(runs)]
for t in threads:
    t.start()
deadline = time.monotonic() + 90  # orbax waited 300 s for a signal the other run took
for t in threads:
    t.join(timeout=max(deadline - time.monotonic(), 0))
print(json.dumps({"errors": errors, "saved": [saved.get(k) for k in range(runs)],
                  "hung": sum(t.is_alive() for t in threads)}), flush=True)
os._exit(0)  # not joining a hung orbax thread
"""


def test_two_runs_in_one_process_save_at_once():
    # train() in two threads (a notebook, a server): each save's folders were made by a thread
    # that signalled the writers by orbax's one operation id a process; the runs took each
    # other's signals and failed (writing into folders not made yet, or after a 300 s wait).
    out = script_result(_RUNS_AT_ONCE)
    assert out == {"errors": [], "saved": [[1, 2, 3, 4, 5, 6]] * 2, "hung": 0}, out


def test_a_run_keeps_its_newest_checkpoints_only(tmp_path):
    """checkpoint.keep=2: the third save removes the first (orbax's preservation policy)."""
    import jax
    import jax.numpy as jnp

    from lmscale.training import mesh as mesh_lib
    from lmscale.training.checkpoints import Checkpointer
    from lmscale.training.precision import LossScale
    from lmscale.training.state import TrainState, zero_acc
    rep = mesh_lib.replicated(mesh_lib.make_mesh())
    ck = Checkpointer(str(tmp_path), keep=2)
    for step in range(1, 5):
        ck.save(jax.device_put(TrainState(
            step=jnp.asarray(step, jnp.int32), params={"w": jnp.ones((4, 2))}, opt_state=(),
            carry=(), rng=jax.random.PRNGKey(0), acc=zero_acc(),
            loss_scale=LossScale.create(dynamic=False)), rep), {"signature": {}})
    ck.close()
    assert ck.steps() == [4, 3]
    assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == ["3", "4"]


def test_loading_the_best_weights_while_a_run_replaces_them(tmp_path, corpus, monkeypatch):
    """``eval --best`` (``load_lm(best=True)``) on a run still validating: the run saves a
    new best, rewrites best.json and deletes the old best while it is read — a raw orbax
    traceback ("Checkpoint directory does not exist: .../best/N/params", 1 of 10 evals of a
    run validating every 5 steps). The run's replacing is done here by orbax's restore the
    first time it is called, in the order ``BestKeeper.offer`` does it."""
    import json
    import shutil

    import orbax.checkpoint as ocp

    from lmscale.training.loop import train
    from lmscale.training.restore import load_trained
    from tests.conftest import tiny_config
    run = tmp_path / "run"
    train(tiny_config(corpus, **{"train.eval_every": 2, "checkpoint.every": 2,
                                 "checkpoint.keep_best": True, "train.steps": 4}), str(run))
    old = json.load(open(run / "best.json"))["step"]
    new = old + 100  # the run's next best (the same weights, under a later step)
    restore = ocp.PyTreeCheckpointer.restore
    replaced = []

    def restore_while_replaced(self, directory, *args, **kwargs):
        if not replaced and f"{os.sep}best{os.sep}" in str(directory):
            replaced.append(True)
            shutil.copytree(run / "best" / str(old), run / "best" / str(new))
            (run / "best.json").write_text(json.dumps({"step": new, "loss": 1.0,
                                                       "averaged": False}))
            shutil.rmtree(run / "best" / str(old))
        return restore(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", restore_while_replaced)
    lm = load_trained(str(run), best=True)
    assert replaced and lm.best and lm.step == new
