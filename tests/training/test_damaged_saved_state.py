"""Hand-edited or torn files of a run: one error naming the file, never a traceback."""
import json

import numpy as np
import pytest

from lmscale.config import ConfigError, config_from_record, default_config


def test_config_json_wrong_type_and_non_section_name_the_key(tmp_path):
    record = default_config().to_dict()
    record["model"]["hidden"] = "big"
    with pytest.raises(ConfigError, match=r"model.hidden is 'big' \(str\); it takes a value of type int"):
        config_from_record(record, "run/config.json")
    record = default_config().to_dict()
    record["model"] = 5
    with pytest.raises(ConfigError, match="model is a JSON int"):
        config_from_record(record, "run/config.json")
    record = default_config().to_dict()
    record["derived"] = [1]  # generate read derived.get(...): an AttributeError traceback
    with pytest.raises(ConfigError, match="derived is a JSON list"):
        config_from_record(record, "run/config.json")


def test_damaged_best_json_is_one_error(tmp_path):
    from lmscale.training.best import read_best
    from lmscale.training.checkpoints import CheckpointError
    (tmp_path / "best.json").write_text('{"step": 2')
    with pytest.raises(CheckpointError, match="best.json is damaged"):
        read_best(str(tmp_path))


@pytest.mark.parametrize("damage", ["npz_empty", "npz_cut", "json_cut", "json_key", "npz_key"])
def test_damaged_transfer_classifier_files_are_one_error(tmp_path, damage):
    from lmscale.finetuning.classifier import _read_transfer_files
    from lmscale.training.checkpoints import CheckpointError
    info = {"classes": [0, 1], "state": "cell", "pooling": "last", "all_layers": False,
            "lm_workdir": "lm", "lm_step": 2}
    arrays = {k: np.zeros((1, 3)) for k in ("mean", "scale", "coef", "intercept")}
    if damage == "json_key":
        del info["pooling"]
    if damage == "npz_key":
        del arrays["coef"]
    (tmp_path / "classifier.json").write_text(json.dumps(info))
    np.savez(tmp_path / "classifier.npz", **arrays)
    npz = tmp_path / "classifier.npz"
    if damage == "npz_empty":
        npz.write_bytes(b"")
    if damage == "npz_cut":
        npz.write_bytes(npz.read_bytes()[:100])
    if damage == "json_cut":
        (tmp_path / "classifier.json").write_text(json.dumps(info)[:20])
    with pytest.raises(CheckpointError, match=r"classifier\.(json|npz)"):
        _read_transfer_files(str(tmp_path))


@pytest.fixture
def best_run(tmp_path):
    """8 steps that improve with best/ kept (best.json names the last validated step)."""
    from lmscale.training.loop import train
    from tests.conftest import tiny_config, write_corpus
    corpus = write_corpus(tmp_path / "corpus")
    workdir = str(tmp_path / "run")
    settings = {"train.eval_every": 4, "checkpoint.every": 4, "checkpoint.keep_best": True}
    train(tiny_config(corpus, **settings, **{"train.steps": 8}), workdir)
    worse = tiny_config(corpus, **settings, **{"train.steps": 12, "optim.lr": 50.0,
                                               "train.divergence_factor": 0.0,
                                               "optim.warmup_steps": 0})
    return workdir, worse


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_best_weights_outlive_a_lost_best_json(best_run, damage, capfd):
    """best.json gone (or torn) and a resume that validates worse: the best weights were
    deleted for the worse ones (the record's loss read as inf), silently; a torn file was a
    JSONDecodeError traceback."""
    import os

    from lmscale.training.loop import train
    workdir, worse = best_run
    path = os.path.join(workdir, "best.json")
    before = json.load(open(path))
    if damage == "missing":
        os.remove(path)
    else:
        open(path, "w").write('{"step": 8, "lo')
    capfd.readouterr()
    train(worse, workdir)
    after = json.load(open(path))
    assert after["step"] == before["step"] == 8
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-6)
    assert sorted(os.listdir(os.path.join(workdir, "best"))) == ["8"]
    err = capfd.readouterr().err
    assert f"note: {path} was {'missing' if damage == 'missing' else 'damaged'}; the best " \
           f"weights kept (step 8" in err, err
    if damage == "torn":
        assert open(path + ".damaged").read() == '{"step": 8, "lo'  # kept, not lost


def test_a_checkpoint_folder_copied_to_another_step_is_not_resumed_from(best_run):
    """checkpoints/4 copied to checkpoints/99: the resume went back to step 4 silently (and
    rotated the real checkpoints away); eval, generate and transfer read step 4's weights as
    step 99's. It names the folder, and checkpoint.fallback moves it aside and resumes from
    the real latest."""
    import os
    import shutil

    from lmscale.training.checkpoints import UnreadableCheckpointError
    from lmscale.training.loop import train
    from lmscale.training.restore import load_trained
    from tests.conftest import tiny_config
    workdir, worse = best_run
    ckpts = os.path.join(workdir, "checkpoints")
    shutil.copytree(os.path.join(ckpts, "4"), os.path.join(ckpts, "99"))
    with pytest.raises(UnreadableCheckpointError,
                       match=r"holds the state of step 4, not 99 .*--step=8 reads the one before"):
        load_trained(workdir)
    assert load_trained(workdir, step=8).step == 8
    corpus = worse.data.train
    more = tiny_config(corpus, **{"train.steps": 12, "train.eval_every": 4, "checkpoint.every": 4})
    with pytest.raises(UnreadableCheckpointError, match=r"holds the state of step 4, not 99"):
        train(more, workdir)
    assert sorted(os.listdir(ckpts), key=int) == ["4", "8", "99"]  # nothing rotated away
    result = train(tiny_config(corpus, **{"train.steps": 12, "train.eval_every": 4,
                                          "checkpoint.every": 4, "checkpoint.fallback": True}),
                   workdir)
    assert result["step"] == 12
    assert "99" not in os.listdir(ckpts)


def test_a_damaged_dataset_is_named_by_eval_and_by_prepare(best_run):
    """A truncated shard of the run's dataset: eval said "the files there differ from the
    ones it trained on (prepared again?)"; a torn metadata.json: prepare said only "is not a
    prepared dataset". Each now says what is wrong with which file."""
    import glob
    import os

    from lmscale.data.errors import DataError
    from lmscale.data.prepare import prepare_dataset
    from lmscale.training.evaluate_trained import run_dataset
    from lmscale.training.restore import load_trained
    workdir, worse = best_run
    data = os.path.join(workdir, "data")
    shard = sorted(glob.glob(os.path.join(data, "**", "*.bin"), recursive=True))[0]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 2)
    with pytest.raises(FileNotFoundError, match=r"the dataset it trained on is damaged: .*"
                       + os.path.basename(shard)):
        run_dataset(load_trained(workdir))
    with open(os.path.join(data, "metadata.json"), "w") as f:
        f.write('{"vocab')
    with pytest.raises(DataError, match=r"is not a prepared dataset \(.*metadata\.json"):
        prepare_dataset(worse.data.train, data, split=(8, 1, 1), progress=False)


def test_a_line_of_metrics_jsonl_that_is_no_record_is_kept_aside_not_dropped(tmp_path, capfd):
    """A hand-edited or damaged line mid-file: a resume dropped it silently (its step read as
    past every step), and read_metrics raised JSONDecodeError. The torn last line of a crash is
    still dropped; a last record without its newline gets one (the next was glued to it)."""
    import os

    from lmscale.training.metrics import read_metrics, truncate_metrics
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    lines = [json.dumps(r) + "\n" for r in records]
    path.write_text(lines[0] + "not json, typed by hand\n" + lines[1] + lines[2] + lines[3]
                    + '{"step": 5, "spl')
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
    assert "line(s) 2 are not JSON records" in capfd.readouterr().err
    assert truncate_metrics(str(path), after_step=3) is True
    assert path.read_text() == lines[0] + lines[1] + lines[2]
    assert (tmp_path / "metrics.jsonl.damaged").read_text() == "not json, typed by hand\n"
    assert "moved to " + str(path) + ".damaged" in capfd.readouterr().err
    path.write_text(lines[0] + lines[1].rstrip("\n"))  # a whole record, unterminated
    assert truncate_metrics(str(path), after_step=3) is False
    assert path.read_text() == lines[0] + lines[1]
    assert os.path.getsize(tmp_path / "metrics.jsonl.damaged") == len("not json, typed by hand\n")


def test_an_unreadable_checkpoint_that_cannot_be_moved_aside_is_one_error(best_run):
    """checkpoint.fallback where unreadable_checkpoints/ cannot be made (a file there): a
    FileExistsError traceback (with several processes, the others waited at a barrier)."""
    import os
    import shutil

    from lmscale.training.checkpoints import CheckpointError
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    workdir, worse = best_run
    ckpts = os.path.join(workdir, "checkpoints")
    shutil.copytree(os.path.join(ckpts, "4"), os.path.join(ckpts, "99"))
    open(os.path.join(workdir, "unreadable_checkpoints"), "w").close()
    with pytest.raises(CheckpointError, match=r"cannot move the unreadable checkpoint .*99 aside "
                                              r"\(checkpoint.fallback\): "):
        train(tiny_config(worse.data.train, **{"train.steps": 12, "checkpoint.fallback": True}),
              workdir)
    assert sorted(os.listdir(ckpts), key=int) == ["4", "8", "99"]


def test_best_weights_whose_validation_was_never_logged_are_replaced_by_the_next(best_run, capfd):
    """A stop between saving best/<step> and writing best.json, on a run's first offer (its
    validation record is written after the offer): the resume goes on, said, and the next
    validation replaces those weights, as before best.json could be rebuilt."""
    import os

    from lmscale.training.loop import train
    workdir, worse = best_run
    os.remove(os.path.join(workdir, "best.json"))
    path = os.path.join(workdir, "metrics.jsonl")
    lines = [line for line in open(path) if not ('"val"' in line and '"step": 8' in line)]
    open(path, "w").writelines(lines)
    capfd.readouterr()
    train(worse, workdir)
    assert "metrics.jsonl holds no validation of the best weights kept (step 8)" in capfd.readouterr().err
    assert json.load(open(os.path.join(workdir, "best.json")))["step"] == 12


def test_best_weights_of_an_attempt_that_left_no_checkpoint_are_not_the_new_runs(best_run, capfd):
    """A run killed (kill -9, the OOM killer) after a validation and before its first
    checkpoint, run again as another model: a start at step 0, its metrics dropped, but the
    killed attempt's best.json (a lower loss) stayed the new run's best, so the new run never
    recorded its own, and ``eval --best`` read the other model's weights (a shape traceback;
    with the same shapes, silently the wrong weights)."""
    import os
    import shutil

    from lmscale.api import load_lm
    from lmscale.training.loop import train
    from lmscale.training.metrics import read_metrics
    from tests.conftest import tiny_config
    workdir, _ = best_run
    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # what the kill left: no checkpoint
    corpus = json.load(open(os.path.join(workdir, "config.json")))["data"]["train"]
    other = tiny_config(corpus, **{"model.hidden": 16, "train.steps": 4, "train.eval_every": 2,
                                   "checkpoint.keep_best": True, "optim.lr": 1e-4})
    capfd.readouterr()
    train(other, workdir)
    vals = [r for r in read_metrics(workdir) if r["split"] == "val"]
    lowest = min(vals, key=lambda r: r["loss"])
    best = json.load(open(os.path.join(workdir, "best.json")))
    assert (best["step"], best["loss"]) == (lowest["step"], lowest["loss"]), (best, vals)
    assert load_lm(workdir, best=True).hidden == 16
    assert "the best weights kept before it moved to" in capfd.readouterr().err
    archived = os.listdir(os.path.join(workdir, "archive"))
    assert len(archived) == 1, archived
    moved = os.listdir(os.path.join(workdir, "archive", archived[0]))
    assert sorted(moved) == ["best", "best.json"], moved


def test_a_fresh_start_sets_aside_every_file_of_the_best_weights_before(tmp_path, capfd):
    """best/, best.json and a damaged best.json kept beside it all belong to the weights of
    before: all three move to archive/<time>/, none left to the new run."""
    import os

    from lmscale.training.best import set_aside_stale_best
    (tmp_path / "best").mkdir()
    (tmp_path / "best.json").write_text('{"step": 3}')
    (tmp_path / "best.json.damaged").write_text("{")
    set_aside_stale_best(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["archive"]
    (moved,) = os.listdir(tmp_path / "archive")
    assert sorted(os.listdir(tmp_path / "archive" / moved)) == [
        "best", "best.json", "best.json.damaged"]
    assert "the best weights kept before it moved to" in capfd.readouterr().err
