"""Unreadable checkpoints: the newest damaged is one line naming its folder and, with
``checkpoint.fallback``, set aside for the one before (one warning); every one damaged names
the way to start afresh; a checkpoint rotated away while read is skipped; a Ctrl-C while one is
read is a KeyboardInterrupt, nothing on disk touched."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lmscale.training.checkpoints import Checkpointer, UnreadableCheckpointError
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.restore import load_trained
from tests.conftest import REPO, tiny_config, tiny_train_command
from tests.training.conftest import BASE, copy_run, steps_on_disk


def test_unreadable_latest_checkpoint_is_one_line_and_fallback_resumes(base_run, tmp_path):
    corpus, workdir = copy_run(base_run, tmp_path)
    state = os.path.join(workdir, "checkpoints", "4", "state")
    os.remove(os.path.join(state, "manifest.ocdbt"))  # a checkpoint folder with a missing file
    config = tiny_config(corpus, **{**BASE, "train.steps": 6})
    with pytest.raises(UnreadableCheckpointError) as error:
        train(config, workdir)
    message = str(error.value)
    assert "\n" not in message and os.path.join(workdir, "checkpoints", "4") in message
    assert "config.checkpoint.fallback = True" in message and "step 2" in message
    with pytest.raises(UnreadableCheckpointError, match="checkpoints/4 is unreadable"):
        load_trained(workdir)
    train(tiny_config(corpus, **{**BASE, "train.steps": 6, "checkpoint.fallback": True}), workdir)
    assert steps_on_disk(workdir) == [2, 4, 6]  # 4 retrained from 2
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == list(range(1, 7))
    assert os.listdir(os.path.join(workdir, "unreadable_checkpoints"))[0].startswith("4-")


def test_ctrl_c_while_a_checkpoint_is_read_is_a_keyboard_interrupt(base_run, tmp_path,
                                                                    monkeypatch):
    """orbax wraps whatever its reads raise in an Exception: a notebook's Ctrl-C in load_lm
    said "checkpoints/4 is unreadable", and a resume with checkpoint.fallback moved the newest
    checkpoint aside and trained from the one before it."""
    from orbax.checkpoint._src.serialization import serialization

    async def interrupted_read(**_):
        raise KeyboardInterrupt  # Ctrl-C as the shard is read

    if not hasattr(serialization, "_read_shard"):  # orbax's internal read of one shard
        pytest.skip("this orbax reads its shards otherwise")
    corpus, workdir = copy_run(base_run, tmp_path)
    monkeypatch.setattr(serialization, "_read_shard", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        load_trained(workdir)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(corpus, **{**BASE, "train.steps": 6, "checkpoint.fallback": True}),
              workdir)
    assert steps_on_disk(workdir) == [2, 4]
    assert not os.path.exists(os.path.join(workdir, "unreadable_checkpoints"))
    monkeypatch.undo()
    assert load_trained(workdir).step == 4  # nothing was damaged


def test_a_keyboard_interrupt_a_read_error_was_raised_in_is_raised_as_it_is(base_run, tmp_path):
    """Ctrl-C while orbax handled it: the Exception raised in its ``except`` (implicitly
    chained, ``__context__``) is the KeyboardInterrupt, not an unreadable checkpoint."""
    _, workdir = copy_run(base_run, tmp_path)
    reader = Checkpointer(workdir, read_only=True)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ValueError("read failed")  # noqa: B904 (the implicit chain is the point)
    except ValueError as e:
        assert isinstance(reader._unreadable(4, e), KeyboardInterrupt)
        assert isinstance(reader._unreadable(4, ValueError("x")), UnreadableCheckpointError)
    finally:
        reader.close()


def test_every_checkpoint_unreadable_names_the_way_to_start_afresh(base_run, tmp_path):
    """checkpoint.fallback set aside the newest and then stopped at the oldest with its error
    alone: no way on was named."""
    corpus, workdir = copy_run(base_run, tmp_path)
    for step in (2, 4):
        os.remove(os.path.join(workdir, "checkpoints", str(step), "state", "manifest.ocdbt"))
    with pytest.raises(UnreadableCheckpointError) as error:
        train(tiny_config(corpus, **{**BASE, "train.steps": 6, "checkpoint.fallback": True}),
              workdir)
    message = str(error.value)
    assert os.path.join(workdir, "checkpoints", "2") in message and "\n" not in message
    assert message.endswith("; no checkpoint is left before it, and none after it reads either "
                            "(left in place): config.resume = False starts the run afresh (its "
                            "files moved to archive/)"), message
    # Every checkpoint failing is more likely the environment's doing (a library's version)
    # than the files': all but the oldest were moved to unreadable_checkpoints/ before.
    assert steps_on_disk(workdir) == [2, 4]
    assert not os.path.exists(os.path.join(workdir, "unreadable_checkpoints"))


def test_fallback_past_two_damaged_checkpoints_moves_both_aside(base_run, tmp_path):
    """The checkpoints newer than the one that reads are all moved aside, not the newest
    alone: one left in place was in the way of the step retrained to it."""
    corpus, workdir = copy_run(base_run, tmp_path)
    train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)
    for step in (4, 6):
        os.remove(os.path.join(workdir, "checkpoints", str(step), "state", "manifest.ocdbt"))
    train(tiny_config(corpus, **{**BASE, "train.steps": 8, "checkpoint.fallback": True}),
          workdir)
    aside = sorted(os.listdir(os.path.join(workdir, "unreadable_checkpoints")))
    assert [name.split("-")[0] for name in aside] == ["4", "6"], aside
    assert load_trained(workdir).step == 8


def test_fallback_past_a_damaged_checkpoint_prints_one_warning(base_run, tmp_path):
    """The CLI's output: one warning line, not tensorstore's spec nor the tens of "Event loop
    is closed" tracebacks of the failed restore's late callbacks (printed before)."""
    corpus, workdir = copy_run(base_run, tmp_path)
    os.remove(os.path.join(workdir, "checkpoints", "4", "state", "manifest.ocdbt"))
    proc = subprocess.run(tiny_train_command(workdir, corpus, **{**BASE, "train.steps": 6,
                                                                  "checkpoint.fallback": "true"}),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    (warning,) = [line for line in output.splitlines() if "is unreadable" in line]
    assert "falling back to step 2" in warning and "tensorstore_spec" not in warning
    assert "Traceback" not in output and "Event loop is closed" not in output, output[-3000:]
    assert steps_on_disk(workdir) == [2, 4, 6]


def test_a_checkpoint_rotated_away_while_read_is_skipped(base_run, tmp_path, monkeypatch):
    """A training run with keep=N removes its oldest checkpoint as it saves: a reader that
    listed it as the newest finds it gone mid-read ("unreadable" before). Here the removal
    is done by hand at the moment of the read."""
    _, workdir = copy_run(base_run, tmp_path)
    original = Checkpointer.read_meta

    def rotated_while_read(self, step=None):
        if step == 4 and os.path.isdir(self.path(4)):
            shutil.rmtree(self.path(4))  # what the training run's rotation does
        return original(self, step)

    monkeypatch.setattr(Checkpointer, "read_meta", rotated_while_read)
    assert load_trained(workdir).step == 2  # the newest still there
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    shutil.copytree(os.path.join(base_run[1], "checkpoints"), os.path.join(workdir, "checkpoints"))
    with pytest.raises(FileNotFoundError, match=r"checkpoints/4 was removed while being read .a "
                       r"training run in .* keeps its newest 3.; its steps are now \[2\]"):
        load_trained(workdir, step=4)
