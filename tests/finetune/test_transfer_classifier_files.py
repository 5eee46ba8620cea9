"""A transfer output's classifier.json / classifier.npz damaged or hand-edited: one
CheckpointError naming the file and the way out (``finetuning.classifier``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import lmscale
from lmscale.training.checkpoints import CheckpointError, CheckpointMismatchError

AGAIN = "it is written by lmscale.transfer: restore it, or re-run lmscale.transfer"


def test_a_classifier_json_not_an_object_says_so(tmp_path):
    (tmp_path / "classifier.json").write_text(json.dumps([0, 1]))
    (tmp_path / "classifier.npz").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        lmscale.load_classifier(str(tmp_path))
    assert str(e.value) == f"{tmp_path / 'classifier.json'} is not a JSON object; {AGAIN}"


def _transfer_files(folder, lm_workdir="/nowhere", lm_step=1, **info):
    """A transfer output's two files as lmscale.transfer writes them (a 4-feature classifier)."""
    folder.mkdir(exist_ok=True)
    info = {"kind": "transfer_logistic_regression", "classes": [0, 1], "state": "cell",
            "pooling": "last", "all_layers": False, "lm_workdir": str(lm_workdir),
            "lm_step": lm_step, "compute": "float32", **info}
    (folder / "classifier.json").write_text(json.dumps(info))
    np.savez(folder / "classifier.npz", mean=np.zeros(4), scale=np.ones(4),
             coef=np.ones((1, 4)), intercept=np.zeros(1))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "classifier.json").write_text('{"classes": [0,'),
     r"classifier\.json is not valid JSON \(Expecting value: line 1 column 16"),
    (lambda f: (f / "classifier.json").write_text('{"classes": [0, 1]}'),
     r"classifier\.json lacks state, pooling, all_layers, lm_workdir, lm_step; "),
    (lambda f: (f / "classifier.npz").write_bytes(b"PK\x03\x04 torn"),
     r"classifier\.npz is damaged \(BadZipFile: "),
    (lambda f: np.savez(f / "classifier.npz", mean=np.zeros(4)),
     r"classifier\.npz lacks the arrays scale, coef, intercept; "),
])
def test_a_damaged_transfer_file_is_one_error_naming_it(tmp_path, damage, message):
    """Read before the LM is looked for: a torn or hand-edited file is named (was a
    traceback), with the way out."""
    _transfer_files(tmp_path / "t")
    damage(tmp_path / "t")
    with pytest.raises(CheckpointError, match=message + ".*" + re.escape(AGAIN)):
        lmscale.load_classifier(str(tmp_path / "t"))


def test_a_classifier_fit_on_other_weights_of_its_lm_is_refused(sst_run, tmp_path):
    """The LM's checkpoint at the step it was fit on now holds other weights (retrained, or
    replaced): its features would not be the classifier's; said, not predicted from."""
    from lmscale.training.restore import load_trained, weights_fingerprint
    lm = load_trained(sst_run)
    _transfer_files(tmp_path / "t", sst_run, lm.step, lm_weights="0" * 32)
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"fit on the features of other weights than {sst_run} now holds at step {lm.step}")):
        lmscale.load_classifier(str(tmp_path / "t"))
    _transfer_files(tmp_path / "t", sst_run, lm.step, lm_weights=weights_fingerprint(lm))
    with pytest.raises(CheckpointMismatchError, match="this classifier takes 4 features"):
        lmscale.load_classifier(str(tmp_path / "t")).predict(["a fine film"])  # 32 here
