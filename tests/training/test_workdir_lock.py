"""The workdir a run writes into (training/workdir_lock.py): made, locked, or refused in one
line when it cannot be a run's folder."""

from __future__ import annotations

import os

import pytest

from lmscale.training.checkpoints import CheckpointError
from lmscale.training.loop import train
from tests.conftest import tiny_config


@pytest.mark.parametrize("name, message", [
    ("", "the workdir is empty: name a folder"),
    ("afile", "is a file, not a folder"),
    ("afile/run", "cannot make the workdir .*afile/run: Not a directory"),
    ("/proc/lmscale_run", "cannot make the workdir /proc/lmscale_run"),
])
def test_a_workdir_that_cannot_be_a_folder_is_one_error(tmp_path, corpus, name, message):
    """These were tracebacks (FileExistsError, NotADirectoryError, PermissionError) or an
    errno line naming '' (audit)."""
    (tmp_path / "afile").write_text("not a folder")
    workdir = name if name in ("",) or name.startswith("/") else str(tmp_path / name)
    with pytest.raises(CheckpointError, match=message):
        train(tiny_config(corpus), workdir)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_workdir_too_deep_for_its_checkpoints_is_refused_before_training(tmp_path, corpus):
    """A workdir 4000 bytes deep trained every step up to its first checkpoint, then failed
    it, "File name too long" cut off the end of a 300-character line, and the steps lost."""
    deep = tmp_path
    while len(str(deep)) < 3800:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    workdir = deep / ("e" * (4000 - len(str(deep)) - 1))
    with pytest.raises(CheckpointError, match=r"path is 4000 bytes long .* \(PATH_MAX\)"):
        train(tiny_config(corpus), str(workdir))
    assert not workdir.exists()


def test_the_workdir_path_limit_is_in_bytes_of_the_absolute_path(tmp_path, monkeypatch):
    """A relative workdir counts from the current folder, a character by its UTF-8 bytes; a
    path is refused from 4096 - 160 bytes, the longest checkpoint file below it counted."""
    from lmscale.training.workdir_lock import make_workdir
    deep = tmp_path
    while len(os.fsencode(deep)) < 3700:
        deep = deep / ("é" * 100)
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    fits = "e" * (4096 - 160 - 1 - len(os.fsencode(deep)) - 1)  # 3935 bytes in all
    make_workdir(fits)
    assert os.path.isdir(fits)
    with pytest.raises(CheckpointError, match=r"path is 3936 bytes long"):
        make_workdir(fits + "e")
    assert not os.path.exists(fits + "e")


def test_a_checkpoint_errors_long_paths_are_shortened_not_its_cause():
    from lmscale.training.orbax_logs import short_error
    path = "/x/" + "d/" * 2000 + "checkpoints/3.orbax-checkpoint-tmp/state"
    error = OSError(f'Error writing "step/.zarray" at local file "{path}": Failed to open: '
                    f'"{path}/d/7446": File name too long [os_error_code=\'36\']')
    line = short_error(error)
    assert len(line) < 300 and line.endswith("File name too long [os_error_code='36']")
    assert '"step/.zarray"' in line and f'"{path[:30]}...' in line  # short quotes kept whole
    assert 'tmp/state/d/7446": File name too long' in line  # a path's end: the file it names


def test_a_workdir_through_a_link_and_dotdot_is_one_folder(tmp_path, corpus):
    """``link/../run``, ``link`` a symbolic link: the kernel follows the link, then goes up, but
    ``os.path.normpath``/``abspath`` drop ``link/..`` as text — the run's records went where
    the kernel put them, its prepared data and checkpoints beside the link; the run failed
    ("not a prepared dataset") and left folders in both places."""
    from lmscale.training.restore import load_trained
    elsewhere, here = tmp_path / "elsewhere" / "deep", tmp_path / "here"
    elsewhere.mkdir(parents=True)
    here.mkdir()
    (here / "link").symlink_to(elsewhere)
    workdir = f"{here}/link/../run"
    config = tiny_config(corpus)
    config.train.steps, config.checkpoint.every = 2, 2
    train(config, workdir)
    run = tmp_path / "elsewhere" / "run"  # where the kernel reads link/../run
    assert sorted(p.name for p in here.iterdir()) == ["link"]
    made = {p.name for p in run.iterdir()}
    assert {"checkpoints", "data", "config.json", "metrics.jsonl"} <= made, made
    assert load_trained(workdir).step == 2
