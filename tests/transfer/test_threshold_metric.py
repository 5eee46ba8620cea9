"""Multi-label thresholds tuned for the metric reported: each label's F1 (the default,
sentiment-discovery's automatic thresholding), or on from there to the best per-text Jaccard
(SemEval-2018 E-c's score) or micro F1 of all labels together; and the per-label Jaccard
(sentiment-discovery's "jacc"). Checked against scikit-learn's metrics and NumPy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmscale.config import ConfigError
from lmscale.data.errors import DataError
from lmscale.finetuning.classifier import load_classifier
from lmscale.finetuning.settings import check_task_settings
from lmscale.transfer.labeled import load_labeled
from lmscale.transfer.metrics import classification_metrics, tune_thresholds
from lmscale.transfer.run import run_transfer
from lmscale.training.restore import load_trained
from tests.conftest import shared_data, tiny_config

NAMES = ["a", "b", "c", "d"]


def _task(seed: int = 0, n: int = 80):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(NAMES))) < [0.5, 0.3, 0.15, 0.05]).astype(np.int64)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1)
    return probs, labels


@pytest.mark.parametrize("metric", ["jaccard", "micro_f1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_thresholds_tuned_for_a_metric_beat_the_f1_ones_and_no_single_change_beats_them(
        metric, seed):
    """Every threshold between two of a label's probabilities (or past either end), tried
    one label at a time with scikit-learn's metric: none scores higher than the tuned set."""
    probs, labels = _task(seed)
    score = lambda t: _reference(metric, probs >= t, labels.astype(bool))
    assert score(np.full(4, 0.5)) == pytest.approx(
        classification_metrics(probs, labels, True, NAMES, np.full(4, 0.5))[metric], abs=1e-12)
    tuned = tune_thresholds(probs, labels, metric)
    assert score(tuned) >= score(tune_thresholds(probs, labels)) - 1e-12
    for k in range(len(NAMES)):
        values = np.unique(probs[:, k])
        for t in np.concatenate([[values[0] / 2], (values[1:] + values[:-1]) / 2,
                                 [(values[-1] + 1) / 2]]):
            other = tuned.copy()
            other[k] = t
            assert score(other) <= score(tuned) + 1e-12, (k, t)


def _reference(metric: str, pred: np.ndarray, y: np.ndarray) -> float:
    """Per-text Jaccard (1 for a text with no label and none predicted) or micro F1, from
    their definitions, one text at a time."""
    if metric == "jaccard":
        return float(np.mean([1.0 if not (p | t).any() else (p & t).sum() / (p | t).sum()
                              for p, t in zip(pred, y)]))
    tp = (pred & y).sum()
    return float(2 * tp / (2 * tp + (pred & ~y).sum() + (~pred & y).sum()))


def test_f1_thresholds_are_unchanged_and_a_bad_metric_is_refused():
    probs, labels = _task()
    np.testing.assert_array_equal(tune_thresholds(probs, labels, "f1"),
                                  tune_thresholds(probs, labels))
    with pytest.raises(ValueError, match=r"threshold metric must be one of \['f1', 'jaccard', "
                                         r"'micro_f1'\], got 'acc'"):
        tune_thresholds(probs, labels, "acc")


def test_the_per_label_jaccard_is_tp_over_tp_fp_fn_averaged_over_labels():
    probs, labels = _task()
    pred = probs >= 0.5
    y = labels.astype(bool)
    tp, fp, fn = ((pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0))
    per_label = np.where(tp + fp + fn == 0, 0.0, tp / np.maximum(tp + fp + fn, 1))
    m = classification_metrics(probs, labels, True, NAMES)
    assert m["label_jaccard"] == pytest.approx(per_label.mean(), abs=1e-12)
    assert "label_jaccard" not in classification_metrics(
        np.eye(2)[labels[:, 0]], labels[:, 0], False, ["0", "1"])


def test_a_transfer_tunes_for_the_metric_given_and_its_classifier_applies_them(sst_run,
                                                                                tmp_path):
    sem = shared_data("semeval2018_ec")
    for name in ("train", "val"):
        lines = Path(f"{sem}/{name}.csv").read_text(encoding="utf-8").splitlines()[:161]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train, val = str(tmp_path / "train.csv"), str(tmp_path / "val.csv")
    kw = dict(lm=load_trained(sst_run), text_column="Tweet", label_column="anger,joy,fear",
              baseline="none", Cs=[1.0], features_dir="")
    f1 = run_transfer(sst_run, train, val, output=str(tmp_path / "f1"), **kw)
    jac = run_transfer(sst_run, train, val, output=str(tmp_path / "jac"),
                       threshold_metric="jaccard", **kw)
    assert (f1["all_features"]["threshold_metric"], jac["all_features"]["threshold_metric"]) == (
        "f1", "jaccard")
    assert jac["all_features"]["val"]["jaccard"] >= f1["all_features"]["val"]["jaccard"]
    saved = json.loads((tmp_path / "jac" / "classifier.json").read_text())
    assert saved["threshold_metric"] == "jaccard"
    assert saved["thresholds"] == jac["all_features"]["thresholds"]
    texts = load_labeled(val, text_column="Tweet", label_column="anger,joy,fear")
    probs, predicted = load_classifier(str(tmp_path / "jac")).predict(texts.texts)
    np.testing.assert_array_equal(predicted, probs >= np.asarray(saved["thresholds"]))
    m = classification_metrics(probs, texts.labels, True, ["anger", "joy", "fear"],
                               np.asarray(saved["thresholds"]))
    assert m["jaccard"] == pytest.approx(jac["all_features"]["val"]["jaccard"], abs=1e-9)
    with pytest.raises(DataError, match="threshold_metric='jaccard' tunes the thresholds of "
                                        "a multi-label task \\(several label columns\\)"):
        run_transfer(sst_run, train, val, output=str(tmp_path / "x"),
                     threshold_metric="jaccard", **{**kw, "label_column": "anger"})


def test_fine_tuning_refuses_a_threshold_metric_it_cannot_use():
    config = tiny_config("python_stdlib")
    with config.unlocked():
        config.finetune.threshold_metric = "jaccard"
    with pytest.raises(ConfigError, match="finetune.threshold_metric='jaccard' tunes the "
                                          "thresholds of a multi-label task"):
        check_task_settings(config.finetune)
    with config.unlocked():
        config.finetune.threshold_metric = "acc"
    with pytest.raises(ConfigError, match="finetune.threshold_metric must be one of"):
        check_task_settings(config.finetune)


def test_a_label_can_be_switched_off_past_a_probability_of_exactly_one():
    """float32 sigmoids give 1.0: the candidate "above the highest" was (1 + 1) / 2 = 1.0,
    which still predicted those rows (a reviewer's case: Jaccard 0.5 where 1.0 was there)."""
    probs = np.array([[1.0, 0.2], [1.0, 0.8], [0.3, 0.9]], np.float32)
    labels = np.array([[0, 1], [0, 1], [0, 1]])
    tuned = tune_thresholds(probs, labels, "jaccard")
    assert tuned[0] > 1.0
    assert classification_metrics(probs, labels, True, ["a", "b"], tuned)["jaccard"] == 1.0
