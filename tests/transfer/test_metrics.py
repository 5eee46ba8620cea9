"""transfer/metrics.py: per-class thresholds and the metrics against scikit-learn; Matthews'
correlation against NumPy written from its definitions: binary
(TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)), Gorodkin's K-class form
(c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)), and multi-label the mean of each label's
binary MCC (sentiment-discovery's "mcc"); 0 where a denominator is 0."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from lmscale.transfer.metrics import METRICS, classification_metrics, format_table


def binary_mcc(y: np.ndarray, p: np.ndarray) -> float:
    tp, tn = np.sum((y == 1) & (p == 1)), np.sum((y == 0) & (p == 0))
    fp, fn = np.sum((y == 0) & (p == 1)), np.sum((y == 1) & (p == 0))
    d = float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if d == 0 else float(tp * tn - fp * fn) / np.sqrt(d)


def k_class_mcc(y: np.ndarray, p: np.ndarray, k: int) -> float:
    s, c = len(y), np.sum(y == p)
    t_k, p_k = np.bincount(y, minlength=k), np.bincount(p, minlength=k)
    d = (s ** 2 - np.sum(p_k ** 2)) * (s ** 2 - np.sum(t_k ** 2))
    return 0.0 if d == 0 else float(c * s - np.sum(p_k * t_k)) / np.sqrt(float(d))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_single_label_mcc_matches_the_definition(k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 300)
    logits = rng.normal(size=(300, k)) + 1.5 * np.eye(k)[labels]  # better than chance
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(probs, labels, False, [str(i) for i in range(k)])
    want = k_class_mcc(labels, probs.argmax(1), k)
    assert 0.2 < want < 1 and m["mcc"] == pytest.approx(want, abs=1e-12)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, probs.argmax(1)), abs=1e-12)
    if k == 2:
        assert m["mcc"] == pytest.approx(binary_mcc(labels, probs.argmax(1)), abs=1e-12)
    assert f"MCC {want:.4f}" in format_table({"val": m}) and "mcc" in METRICS


def test_multilabel_mcc_is_the_mean_of_each_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (200, 4))
    probs = np.clip(0.6 * labels + 0.5 * rng.random((200, 4)), 0, 1)
    probs[:, 3] = 0.1  # never predicted: that label's MCC is 0
    labels[:, 2] = 0  # never true (scikit-learn warns where it is also never predicted)
    thresholds = np.array([0.5, 0.4, 1.0, 0.5])  # label 2: never predicted either
    m = classification_metrics(probs, labels, True, list("abcd"), thresholds)
    pred = (probs >= thresholds).astype(int)
    per_label = [binary_mcc(labels[:, j], pred[:, j]) for j in range(4)]
    assert per_label[2:] == [0, 0] and min(per_label[:2]) > 0.2
    assert m["mcc"] == pytest.approx(np.mean(per_label), abs=1e-12)


def test_thresholds_maximize_f1_and_metrics_match_sklearn():
    from sklearn.metrics import f1_score

    from lmscale.transfer.metrics import tune_thresholds
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < [0.1, 0.5, 0.8]).astype(int)
    probs = np.clip(labels * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
    t = tune_thresholds(probs, labels)
    for k in range(3):
        best = max(f1_score(labels[:, k], probs[:, k] >= c) for c in np.unique(probs[:, k]))
        assert f1_score(labels[:, k], probs[:, k] >= t[k]) == pytest.approx(best)
    m = classification_metrics(probs, labels, True, ["a", "b", "c"], t)
    pred = (probs >= t).astype(int)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(labels, pred, average="micro"))
    from sklearn.metrics import accuracy_score
    # Two accuracies, each named: every label of a text right, and the fraction of labels right.
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["label_accuracy"] == pytest.approx(accuracy_score(labels.ravel(), pred.ravel()))
    from lmscale.transfer.metrics import format_table
    assert format_table({"val": m}).startswith(
        f"val: subset accuracy {m['accuracy']:.4f}  label accuracy {m['label_accuracy']:.4f}  ")


def test_tied_f1_takes_the_lowest_threshold():
    """F1 2/3 at threshold 0.5 (5 predicted, 3 right) and at 0.7 (2 predicted, both right):
    equal fractions, while 2PR/(P+R) rounds them apart (0.6666666666666665 and ...666), so a
    float argmax took 0.7; the documented tie-break is the lowest threshold (0.4, between 0.3
    and 0.5)."""
    from lmscale.transfer.metrics import tune_thresholds
    p = np.array([0.1, 0.0, 0.6, 0.3, 0.8, 0.7, 0.3, 0.5, 0.5])
    y = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1])
    t = tune_thresholds(np.c_[p, p], np.c_[y, y])
    assert t[0] == pytest.approx(0.4) and t[1] == pytest.approx(0.4)


def test_threshold_is_inclusive_and_loss_finite_at_zero_and_one():
    """A probability equal to the threshold predicts the label (p >= t, 0.5 by default), and
    the log loss of probabilities of exactly 0 and 1 against the other label is finite
    (clipped at 1e-7), as float32 sigmoids give them."""
    from lmscale.transfer.metrics import predict_labels
    probs = np.array([[0.5, 0.0], [1.0, 0.25]])
    assert predict_labels(probs, True).tolist() == [[1, 0], [1, 0]]
    assert predict_labels(probs, True, np.array([0.5, 0.25])).tolist() == [[1, 0], [1, 1]]
    labels = np.array([[0, 1], [0, 1]])
    m = classification_metrics(probs, labels, True, ["a", "b"])
    assert np.isfinite(m["loss"]) and m["loss"] == pytest.approx(
        -np.mean(np.log([0.5, 1e-7, 1e-7, 0.25])), rel=1e-6)


def test_better_loss_is_lower():
    from lmscale.transfer.metrics import better
    assert better("loss", 0.1, 0.2) and not better("loss", 0.3, 0.2)
    assert better("accuracy", 0.3, 0.2) and not better("accuracy", 0.1, 0.2)
    assert better("loss", 5.0, None)


def test_each_threshold_maximizes_its_class_f1_over_every_cut():
    """Every cut of a class's probabilities scored by scikit-learn: the tuned threshold's F1 is
    the best of them (a count of the texts predicted taken as p > t, not p >= t, chose predicting
    every text over a better cut)."""
    from sklearn.metrics import f1_score
    from lmscale.transfer.metrics import tune_thresholds
    probs = np.array([[0.3, 0.0], [0.0, 0.8], [0.9, 0.6], [0.7, 0.5], [0.9, 0.8], [0.0, 0.9],
                      [0.0, 0.7]])
    labels = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [0, 0], [1, 0], [0, 0]])
    t = tune_thresholds(probs, labels)
    for k in range(2):
        best = max(f1_score(labels[:, k], probs[:, k] >= c) for c in np.unique(probs[:, k]))
        assert f1_score(labels[:, k], probs[:, k] >= t[k]) == pytest.approx(best)
    assert t[0] == pytest.approx(0.15)  # 0.3 and up: F1 3/4 (every text: 8/11)


def test_a_class_with_no_positive_example_keeps_one_half():
    """No positive in val: every threshold's F1 is 0, and the lowest would predict it for
    every text; it keeps 0.5."""
    from lmscale.transfer.metrics import tune_thresholds
    probs = np.array([[0.1, 0.2], [0.8, 0.3], [0.6, 0.9]])
    labels = np.array([[0, 0], [1, 0], [1, 0]])
    assert tune_thresholds(probs, labels)[1] == 0.5


def test_the_ascent_keeps_a_threshold_that_ties_with_a_lower_one():
    """One class, Jaccard per text: the cuts 0.2 and 0.8 both score 2/3; started at 0.8 the
    ascent keeps it (it moves only for a strictly better score), not the first best."""
    from lmscale.transfer.metrics import _ascend
    probs, labels = np.array([[0.1], [0.3], [0.6]]), np.array([[False], [True], [False]])
    assert _ascend(probs, labels, np.array([0.8]), "jaccard")[0] == 0.8


@pytest.mark.parametrize("metric", ["jaccard", "micro_f1"])
def test_ascended_thresholds_lie_between_probabilities(metric):
    """A threshold equal to a probability flips on a rounding of that text's score; the
    candidates lie halfway between two, or below the lowest (half of it), or above the top."""
    from lmscale.transfer.metrics import tune_thresholds
    probs = np.array([[0.3, 0.8, 0.5], [0.8, 0.9, 0.9], [0.8, 0.3, 0.9], [0.2, 0.3, 0.6],
                      [0.7, 0.1, 0.3], [0.4, 0.8, 0.0], [0.9, 0.3, 0.6]])
    labels = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 0],
                       [1, 1, 1]])
    rng = np.random.default_rng(0)
    more = rng.random((40, 3)).round(2), (rng.random((40, 3)) < 0.5).astype(int)
    for p, y in ((probs, labels), more):
        t = tune_thresholds(p, y, metric)
        assert not np.any(p == t[None, :]), t
