"""Training into a transfer output's folder (WORKDIR/transfer: classifier.json, results.json)
is refused, as a fine-tuned classifier's is: it made the folder an LM run as well, and
load_lm then read that new LM instead of naming the transfer output."""

from __future__ import annotations

import json
import os

import pytest

from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.loop import train
from tests.conftest import tiny_config


def test_training_into_a_transfer_output_is_refused(tmp_path, corpus):
    out = tmp_path / "run" / "transfer"
    out.mkdir(parents=True)
    (out / "classifier.json").write_text(json.dumps({"lm_workdir": str(tmp_path / "run")}))
    (out / "results.json").write_text("{}")
    with pytest.raises(CheckpointMismatchError, match="holds a transfer output"):
        train(tiny_config(corpus, **{"train.steps": 2}), str(out))
    left = set(os.listdir(out)) - {".lock"}  # the workdir's lock file, if taken before
    assert left == {"classifier.json", "results.json"}


def test_training_into_a_fine_tuned_classifier_is_refused(tmp_path, corpus):
    """A fine-tune's folder (config.json naming its classes, checkpoints/): refused as what
    it is, naming the LM it started from, and left as it was."""
    run = tmp_path / "classifier"
    (run / "checkpoints").mkdir(parents=True)
    record = {"init_from": "lm", "derived": {"class_names": ["neg", "pos"],
                                             "init_from": str(tmp_path / "lm")}}
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointMismatchError, match=r"holds a fine-tuned classifier \(lmscale"
                                                      r"\.finetune\), not a language model's "
                                                      r"training run: .*started from .*lm\)"):
        train(tiny_config(corpus, **{"train.steps": 2}), str(run))
    assert json.loads((run / "config.json").read_text()) == record
    assert os.listdir(run / "checkpoints") == []
