"""The dataset a run's evaluation reads by default (``run_dataset``): the one it trained on,
found by its recorded fingerprint, also when the run was copied or moved."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.evaluate_trained import evaluate_data, run_dataset
from lmscale.training.restore import load_trained
from tests.conftest import tiny_config, write_corpus


def test_a_copied_run_evaluates_its_own_data_not_the_originals_retrained_one(tmp_path):
    """``eval`` of a copy read the original workdir's data/ by its recorded absolute path, which
    a later run there had prepared from other text: a BPC of the wrong text, unsaid."""
    first = write_corpus(tmp_path / "first", lines=300)
    other = write_corpus(tmp_path / "other", files=2, lines=500)
    original, copy = str(tmp_path / "original"), str(tmp_path / "copy")
    train(tiny_config(first, **{"train.steps": 4}), original)
    shutil.copytree(original, copy)
    assert load_trained(copy).derived["dataset"] == os.path.join(original, "data")
    again = tiny_config(other, **{"train.steps": 4})
    again.resume = False  # archives the first run and prepares the other text in data/
    train(again, original)
    lm = load_trained(copy)
    assert run_dataset(lm) == os.path.join(copy, "data")
    logged = [r for r in read_metrics(copy) if r["split"] == "val"][-1]
    assert evaluate_data(lm, run_dataset(lm))["bpc"] == logged["bpc"]
    shard = next((tmp_path / "original" / "data" / "train").glob("*.bin"))
    shard.unlink()  # the original's data damaged: a raw FileNotFoundError hid the copy's own
    assert run_dataset(load_trained(copy)) == os.path.join(copy, "data")
    shutil.rmtree(original)  # moved, not copied: "records no prepared training dataset" before
    assert run_dataset(load_trained(copy)) == os.path.join(copy, "data")
    with open(os.path.join(copy, "data", "metadata.json"), "a") as f:
        f.write(" ")  # its files are no longer the ones it trained on
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{copy}: the dataset it trained on is no longer at {os.path.join(copy, 'data')} "
            f"(the files there differ from the ones it recorded: prepared again?); pass --data")):
        run_dataset(load_trained(copy))


def test_a_resume_names_the_same_prepared_dataset_any_way(tmp_path, monkeypatch):
    """``data.train=prep`` resumed from another directory as ``../prep`` (or by its absolute
    path, or a symlink) was refused as "trained on the other"; the same files are the same
    data (its recorded fingerprint), and another dataset is still refused."""
    from lmscale.data.prepare import prepare_dataset
    from lmscale.training.checkpoints import CheckpointMismatchError
    prepare_dataset(write_corpus(tmp_path / "text"), str(tmp_path / "prep"), split=(8, 1, 1),
                    progress=False)
    prepare_dataset(write_corpus(tmp_path / "text2", files=2, lines=500), str(tmp_path / "prep2"),
                    split=(8, 1, 1), progress=False)
    os.symlink(tmp_path / "prep", tmp_path / "link")
    (tmp_path / "elsewhere").mkdir()
    run = str(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    train(tiny_config("prep", **{"train.steps": 2}), run)
    monkeypatch.chdir(tmp_path / "elsewhere")
    for steps, spelled in ((4, "../prep"), (6, str(tmp_path / "prep")), (8, "../link")):
        assert train(tiny_config(spelled, **{"train.steps": steps}), run)["step"] == steps
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            "was trained with data.train='../link'; resuming it with data.train='../prep2' is refused")):
        train(tiny_config("../prep2", **{"train.steps": 10}), run)
    from lmscale.data.errors import DataError
    next((tmp_path / "prep" / "train").glob("*.bin")).unlink()  # a shard gone: named, not raw
    with pytest.raises(DataError, match="is missing"):
        train(tiny_config("../link", **{"train.steps": 10}), run)


def test_a_path_recorded_with_a_tilde_resumes_under_its_expansion(tmp_path):
    """Runs recorded "~/corpus" as given (the tools expand it now): the same command would be
    refused as other data."""
    from lmscale.training.resume import check_resumable
    old = tiny_config("~/corpus/*.txt")
    new = tiny_config(os.path.expanduser("~/corpus/*.txt"))
    check_resumable({"config": old.to_dict()}, new, "run")  # no CheckpointMismatchError


def test_a_dataset_without_validation_is_refused_where_a_setting_needs_it_and_noted_else(
        tmp_path, capsys):
    """A dataset prepared with no validation part trained with keep_best (an empty best/, and
    eval --best then said to set keep_best) or NT-ASGD (its switch never came), without a word."""
    from lmscale.data.errors import DataError
    corpus = write_corpus(tmp_path / "text", lines=200)
    for setting in ({"checkpoint.keep_best": True}, {"optim.name": "ntasgd"}):
        config = tiny_config(corpus, **{"data.split": "4,0,0", "train.steps": 4}, **setting)
        with pytest.raises(DataError, match="has no validation split, and "
                                            f"{re.escape(next(iter(setting)))}.* needs one"):
            train(config, str(tmp_path / "refused"))
        assert not os.path.exists(tmp_path / "refused" / "checkpoints")
    capsys.readouterr()
    train(tiny_config(corpus, **{"data.split": "4,0,0", "train.steps": 4,
                                 "train.eval_every": 2}), str(tmp_path / "noted"))
    assert "has no validation split: this run reports no validation loss" in capsys.readouterr().err
    assert not [r for r in read_metrics(str(tmp_path / "noted")) if r["split"] == "val"]


def test_the_no_validation_note_names_the_setting_that_schedules_validation(corpus):
    """With train.eval_every_epochs > 0 (train.eval_every ignored) the note names it; with
    neither, only the end would validate: no note."""
    from lmscale.training.evaluate import without_validation
    note = lambda **kw: without_validation(tiny_config(corpus, **kw), "DS")
    assert "(train.eval_every_epochs=0.5 finds nothing" in note(**{
        "train.eval_every": 0, "train.eval_every_epochs": 0.5})
    assert "(train.eval_every_epochs=2 finds nothing" in note(**{
        "train.eval_every": 3, "train.eval_every_epochs": 2.0})
    assert "(train.eval_every=3 finds nothing" in note(**{"train.eval_every": 3})
    assert note(**{"train.eval_every": 0}) is None
