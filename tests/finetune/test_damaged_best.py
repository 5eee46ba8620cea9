"""A fine-tuned run whose best.json is torn: classify read it with json.loads, a traceback;
it says so and reads the best checkpoint, whose predictions are the same."""

from __future__ import annotations

import os

import numpy as np

from tests.finetune.conftest import ft_config


def test_a_torn_best_json_still_classifies_with_the_best_weights(sst_run, data, tmp_path, capfd):
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    from lmscale.transfer.labeled import load_labeled
    run = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{"train.steps": 4, "train.eval_every": 2, "checkpoint.every": 2}), run)
    texts = load_labeled(data["sst_val"]).texts[:16]
    whole = load_classifier(run)
    before = whole.predict(texts)[0]
    path = os.path.join(run, "best.json")
    with open(path, "w") as f:
        f.write('{"step": ')
    capfd.readouterr()
    torn = load_classifier(run)
    assert f"note: {path} is unreadable" in capfd.readouterr().err
    assert torn.step == whole.step
    np.testing.assert_array_equal(torn.predict(texts)[0], before)
    # best.json gone (deleted, or a first best saved and then killed before best.json): the
    # best checkpoint still, not the latest training checkpoint read silently.
    os.remove(path)
    gone = load_classifier(run)
    assert gone.step == whole.step
    np.testing.assert_array_equal(gone.predict(texts)[0], before)
    # best.json naming a step best/ no longer holds (a kill between the best save, keep=1
    # having removed the old one, and best.json): its latest, with a note, not an orbax error.
    with open(path, "w") as f:
        f.write('{"step": %d, "metric": "accuracy", "value": 0.5}' % (whole.step - 1))
    capfd.readouterr()
    moved = load_classifier(run)
    assert f"names step {whole.step - 1}, which" in capfd.readouterr().err
    assert moved.step == whole.step


def test_a_fine_tune_not_yet_validated_classifies_with_its_latest_checkpoint(sst_run, data,
                                                                             tmp_path):
    """A fine-tune still running before its first validation (or stopped then) has
    checkpoints/ and an empty best/checkpoints/ (made at its start): classify said
    "RUN/best holds no checkpoint yet"; it reads the latest checkpoint, as documented."""
    import shutil

    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    from lmscale.transfer.labeled import load_labeled
    run = str(tmp_path / "ft")
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{"train.steps": 4, "train.eval_every": 2, "checkpoint.every": 2}), run)
    os.remove(os.path.join(run, "best.json"))
    best_ckpts = os.path.join(run, "best", "checkpoints")
    for name in os.listdir(best_ckpts):
        shutil.rmtree(os.path.join(best_ckpts, name))
    texts = load_labeled(data["sst_val"]).texts[:4]
    clf = load_classifier(run)
    assert clf.step == 4
    assert len(clf.predict(texts)[0]) == 4


def test_the_best_of_an_attempt_that_left_no_checkpoint_is_not_the_new_runs(sst_run, data,
                                                                             tmp_path, capfd):
    """A fine-tune killed after a validation and before its first checkpoint, run again: its
    best state (another head, maybe another LM's) was taken over by the run starting afresh."""
    import json
    import shutil
    from lmscale.finetuning.loop import finetune
    run, every = tmp_path / "ft", {"train.steps": 4, "train.eval_every": 2, "checkpoint.every": 2}
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **every), str(run))
    shutil.rmtree(run / "checkpoints")  # what the kill left: best/ and best.json, no checkpoint
    json.dump({"step": 4, "metric": "accuracy", "value": 1.0}, open(run / "best.json", "w"))
    capfd.readouterr()
    result = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                                **every, **{"optim.lr": 1e-5}), str(run))
    assert "the best weights kept before it moved to" in capfd.readouterr().err
    assert json.load(open(run / "best.json"))["value"] < 1.0 and result["best"]["value"] < 1.0
    (archived,) = os.listdir(run / "archive")
    assert sorted(os.listdir(run / "archive" / archived)) == ["best", "best.json"]


def test_best_weights_replaced_while_classify_reads_them_are_read_again(sst_run, data,
                                                                        tmp_path, monkeypatch):
    """classify of a fine-tune still running: the run saves a better checkpoint in best/,
    rewrites best.json and deletes the one being read — "checkpoint ... is unreadable"
    where the new best was there to read. Done here by orbax's restore on its first call
    into best/, in the order the fine-tune does it."""
    import json
    import shutil

    import orbax.checkpoint as ocp

    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    run = tmp_path / "ft"
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{"train.steps": 4, "train.eval_every": 2, "checkpoint.every": 2}),
             str(run))
    old = json.loads((run / "best.json").read_text())["step"]
    new = 6 - old  # the run's other checkpoint (steps 2 and 4), as the next best
    best = run / "best" / "checkpoints"
    restore, replaced = ocp.PyTreeCheckpointer.restore, []

    def restore_while_replaced(self, directory, *args, **kwargs):
        if not replaced and str(best / str(old)) in str(directory):
            replaced.append(True)
            shutil.copytree(run / "checkpoints" / str(new), best / str(new))
            record = json.loads((run / "best.json").read_text())
            (run / "best.json").write_text(json.dumps({**record, "step": new}))
            shutil.rmtree(best / str(old))
        return restore(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", restore_while_replaced)
    clf = load_classifier(str(run))
    assert replaced and clf.step == new
