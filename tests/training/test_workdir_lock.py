"""The workdir a run writes into (training/workdir_lock.py): made, locked, or refused in one
line when it cannot be a run's folder."""

from __future__ import annotations

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
