"""A full disk while saving the best weights (checkpoint.keep_best): one line, the previous
best kept (was a page of tensorstore traceback)."""

import json
import os

import jax.numpy as jnp
import pytest

from lmscale.training.best import BestKeeper
from lmscale.training.checkpoints import CheckpointError


def test_best_save_on_full_disk_is_one_line_and_keeps_previous(tmp_path, monkeypatch):
    keeper = BestKeeper(str(tmp_path), enabled=True)
    params = {"w": jnp.ones((4,))}
    assert keeper.offer(1, 2.0, params, averaged=False)

    def full(*args, **kwargs):  # what tensorstore raises on ENOSPC (seen on a 30 MB tmpfs)
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
                         f'"{tmp_path}/best/2.orbax-checkpoint-tmp/params": Failed to write 141282 '
                         "bytes to file 42: No space left on device [os_error_code='28']")

    monkeypatch.setattr(keeper.manager, "save", full)
    with pytest.raises(CheckpointError, match=r"best weights of step 2 could not be written .*"
                                              r"the disk is full; the previous best weights "
                                              r"\(step 1\) stay"):
        keeper.offer(2, 1.0, params, averaged=False)
    assert json.load(open(os.path.join(tmp_path, "best.json")))["step"] == 1
    assert sorted(keeper.manager.all_steps()) == [1]
    keeper.close()


def test_a_first_best_save_on_a_full_disk_says_none_is_kept(tmp_path, monkeypatch):
    keeper = BestKeeper(str(tmp_path), enabled=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keeper.manager, "save", full)
    with pytest.raises(CheckpointError, match=r"best weights of step 1 could not be written .*"
                                              r"the disk is full; no best weights are kept yet"):
        keeper.offer(1, 2.0, {"w": jnp.ones((4,))}, averaged=False)
    assert not os.path.exists(os.path.join(tmp_path, "best.json"))
    keeper.close()


def test_weights_orbax_cannot_save_are_not_called_a_failed_write(tmp_path):
    """Any ValueError of the save was "could not be written ...: free some space" (a leaf
    orbax has no handler for, say); only a write that failed is, as the checkpointer's."""
    keeper = BestKeeper(str(tmp_path), enabled=True)
    with pytest.raises(ValueError, match="Unsupported type") as e:
        keeper.offer(1, 2.0, {"w": object()}, averaged=False)
    assert not isinstance(e.value, CheckpointError)
    keeper.close()


@pytest.mark.parametrize("error,why", [
    # tensorstore's ENOSPC naming no save folder (another write of the save)
    ("RESOURCE_EXHAUSTED: Failed to write 141282 bytes to file 42: No space left on device",
     "the disk is full"),
    # a write below the save's folder that failed otherwise (a read-only remount)
    ('PERMISSION_DENIED: Error writing "w/0" at local file "{dir}/best/1.orbax-checkpoint-tmp/'
     'params": Permission denied', "PERMISSION_DENIED"),
])
def test_a_failed_write_said_either_way_is_one_line(tmp_path, monkeypatch, error, why):
    """Each of the two signs of a failed write (no space left; the save's own folder named)
    makes one line on its own."""
    keeper = BestKeeper(str(tmp_path), enabled=True)

    def failed(*args, **kwargs):
        raise ValueError(error.format(dir=tmp_path))

    monkeypatch.setattr(keeper.manager, "save", failed)
    with pytest.raises(CheckpointError, match=r"best weights of step 1 could not be written .*"
                                              + why):
        keeper.offer(1, 2.0, {"w": jnp.ones((4,))}, averaged=False)
    keeper.close()


def test_a_best_save_cut_short_is_removed_when_the_run_resumes(tmp_path):
    """A kill mid-save of the best weights leaves best/<step>.orbax-checkpoint-tmp (a copy of
    the parameters, up to the whole save): the run's checkpoints/ had its own removed at the
    next start, best/ kept it for good unless the resumed run happened to save that step."""
    import shutil
    keeper = BestKeeper(str(tmp_path), enabled=True)
    assert keeper.offer(2, 2.0, {"w": jnp.ones((4,))}, averaged=False)
    keeper.close()
    best = tmp_path / "best"
    shutil.copytree(best / "2", best / "3.orbax-checkpoint-tmp")  # step 3's save, killed
    keeper = BestKeeper(str(tmp_path), enabled=True)  # the resumed run
    assert sorted(os.listdir(best)) == ["2"]
    assert keeper.offer(4, 1.0, {"w": jnp.ones((4,))}, averaged=False)
    assert sorted(os.listdir(best)) == ["4"]
    keeper.close()


def test_an_os_error_of_the_save_is_a_failed_write(tmp_path, monkeypatch):
    """An OSError (a read-only remount, a folder gone) naming neither a full disk nor the
    save's folder is a failed write too, as the checkpointer's."""
    keeper = BestKeeper(str(tmp_path), enabled=True)

    def failed(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(keeper.manager, "save", failed)
    with pytest.raises(CheckpointError, match=r"best weights of step 1 could not be written "):
        keeper.offer(1, 2.0, {"w": jnp.ones((4,))}, averaged=False)
    keeper.close()
