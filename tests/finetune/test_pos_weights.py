"""``finetune.pos_weights``: a multi-label task's weight on each label's positive term (PyTorch's
``pos_weight``); the loss itself is checked against NumPy in test_head_reference.py."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from lmscale.config import ConfigError
from lmscale.data.errors import DataError
from tests.finetune.conftest import EMOTIONS, ft_config


def test_balanced_is_negatives_over_positives_and_numbers_are_checked():
    from lmscale.finetuning.data import pos_weights_from
    labels = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(pos_weights_from("balanced", labels), [2 / 2, 4 / 1, 1 / 3])
    np.testing.assert_allclose(pos_weights_from(" 2,0.5,1 ", labels), [2, 0.5, 1])
    assert pos_weights_from("", labels) is None
    for spec in ("1,2", "1,0,1", "1,-2,1", "1,nan,1"):
        with pytest.raises(DataError, match=re.escape(
                f"finetune.pos_weights has {len(spec.split(','))} values; the task has 3 labels "
                f"(each weight > 0), got {spec!r}")):
            pos_weights_from(spec, labels)
    with pytest.raises(DataError, match=re.escape(
            "finetune.pos_weights must be 'balanced' or 3 numbers, got 'heavy'")):
        pos_weights_from("heavy", labels)


def test_a_single_label_task_is_refused_by_name(sst_run, data, tmp_path):
    from lmscale.finetuning.loop import finetune
    with pytest.raises(ConfigError, match=re.escape(
            "finetune.pos_weights='balanced' weighs the positive labels of a multi-label task "
            "(finetune.multilabel=true); a single-label task weighs its classes with "
            "finetune.class_weights")):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                           **{"finetune.pos_weights": "balanced"}), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def _train_losses(workdir: str) -> list[float]:
    from lmscale.training.metrics import read_metrics
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


def test_multilabel_fine_tune_weighs_the_positives(sst_run, data, tmp_path):
    """Weights of 1 train as no weights (the optax loss); "balanced" trains otherwise and is
    recorded as the train split's negatives / positives; a resume with other weights says so."""
    from lmscale.finetuning.loop import finetune
    from lmscale.transfer.labeled import load_labeled
    kw = {"finetune.multilabel": True, "finetune.text_column": "Tweet",
          "finetune.label_column": EMOTIONS, "train.steps": 2, "train.log_every": 1,
          "train.eval_every": 2, "checkpoint.every": 2}
    runs = {name: str(tmp_path / name) for name in ("none", "ones", "balanced")}
    for name, spec in (("none", ""), ("ones", ",".join(["1"] * 11)), ("balanced", "balanced")):
        finetune(ft_config(sst_run, data["sem_train"], data["sem_val"],
                           **{**kw, "finetune.pos_weights": spec}), runs[name])
    none, ones, balanced = (_train_losses(runs[n]) for n in ("none", "ones", "balanced"))
    np.testing.assert_allclose(ones, none, rtol=1e-5)
    assert balanced[0] > none[0] * 1.5, (balanced, none)  # rare positives weigh up to ~20x
    labels = load_labeled(data["sem_train"], text_column="Tweet", label_column=EMOTIONS).labels
    positives = labels.sum(axis=0)
    derived = json.load(open(os.path.join(runs["balanced"], "config.json")))["derived"]
    np.testing.assert_allclose(derived["pos_weights"], (len(labels) - positives) / positives,
                               rtol=1e-6)
    assert json.load(open(os.path.join(runs["none"], "config.json")))["derived"]["pos_weights"] is None
    from lmscale.finetuning.settings import resumed_otherwise
    config = ft_config(sst_run, data["sem_train"], data["sem_val"], **{**kw, "finetune.pos_weights": "2"})
    saved = json.load(open(os.path.join(runs["none"], "config.json")))
    assert resumed_otherwise(saved, config, 2) == [
        "note: resumed at step 2 with finetune.pos_weights='2'; the steps before it trained with "
        "finetune.pos_weights=''"]
