"""Classification metrics (scikit-learn) and per-class decision thresholds for multi-label.

``classification_metrics`` gives accuracy (multi-label: subset accuracy, every label of a
text right, and ``label_accuracy``, the fraction of labels right), per-class
precision / recall / F1 / support, macro and micro F1, and the Jaccard index (multi-label:
per-text |true ∩ predicted| / |true ∪ predicted| averaged over texts, SemEval-2018 E-c's
official metric, 1 when both are empty; single-label: macro over classes), plus the mean
log loss of the probabilities, and Matthews' correlation ``mcc`` (single-label: of all
classes together, Gorodkin's K-class form; multi-label: each label's, averaged: sentiment-
discovery's "mcc"; 0 where one class is all that is true or all that is predicted); multi-label also
``label_jaccard`` (per class TP / (TP + FP + FN), averaged over classes: sentiment-discovery's
"jacc"). ``tune_thresholds``
picks, per class, the threshold on the validation probabilities that maximizes that class's
F1 (sentiment-discovery's automatic thresholding), or, for ``metric`` "jaccard" or
"micro_f1", goes on from there one class at a time to the thresholds that maximize that
metric of all classes together (coordinate ascent, as sentiment-discovery's --global-tweaks
does by random nudges).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lmscale.data.errors import DataError

METRICS = ("accuracy", "macro_f1", "micro_f1", "jaccard", "mcc", "loss")
THRESHOLD_METRICS = ("f1", "jaccard", "micro_f1")  # what tune_thresholds maximizes
_CANDIDATES = 256  # thresholds tried per class and pass of the coordinate ascent (at most)


def threshold_metric_problem(metric: str, multilabel: bool, name: str) -> str | None:
    """Why ``metric`` (the setting ``name``) cannot tune this task's thresholds, or None: it
    must be one of ``THRESHOLD_METRICS``, and other than "f1" only for a multi-label task (a
    single-label one takes its most probable class)."""
    if metric not in THRESHOLD_METRICS:
        return f"{name} must be one of {list(THRESHOLD_METRICS)}, got {metric!r}"
    if metric != "f1" and not multilabel:
        return (f"{name}={metric!r} tunes the thresholds of a multi-label task (several label "
                f"columns); a single-label task predicts its most probable class")
    return None


def check_finite_probs(probs: np.ndarray) -> None:
    """DataError unless every probability [N, K] is finite, counting the texts that are not."""
    bad = int(np.sum(~np.all(np.isfinite(probs), axis=-1)))
    if bad:
        raise DataError(f"{bad} of {len(probs)} texts' class probabilities are not finite (NaN "
                        f"or inf): the model's forward overflowed (in float16 compute its range "
                        f"is small: bfloat16 or float32 reads the same weights)")


def predict_labels(probs: np.ndarray, multilabel: bool, thresholds: np.ndarray | None = None
                   ) -> np.ndarray:
    """Single-label: argmax [N]; multi-label: probs >= threshold per class (0.5 if none), 0/1 [N, K].
    DataError where a probability is not finite (argmax took NaN rows as class 0, silently)."""
    check_finite_probs(probs)
    if not multilabel:
        return np.argmax(probs, axis=-1)
    t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    return (probs >= t[None, :]).astype(np.int64)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, metric: str = "f1",
                    fixed: Sequence[int] = ()) -> np.ndarray:
    """Per class k, the threshold t (predict p >= t) maximizing F1 of column k on these
    probabilities [N, K] and 0/1 labels [N, K]; among ties the largest F1's lowest threshold.
    t lies halfway between the lowest probability predicted positive and the next lower one,
    so the same texts scored again (other hardware, float rounding) get the same labels.
    A class with no positive example keeps 0.5. ``metric`` "jaccard" (per text, SemEval's) or
    "micro_f1": from those, :func:`_ascend` to the thresholds maximizing it over all classes.
    Classes in ``fixed`` keep 0.5 (a label constant in train: its probability is constant, and
    a threshold tuned on val would predict it for every text or none by val's rate)."""
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"threshold metric must be one of {list(THRESHOLD_METRICS)}, got {metric!r}")
    check_finite_probs(probs)
    labels = np.asarray(labels).astype(np.int64)
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        if labels[:, k].sum() == 0 or k in fixed:
            continue
        # F1 = 2 TP / (predicted + true) from integer counts: one rounding of an exact ratio,
        # so equal F1s are equal floats and argmax takes the lowest of tied thresholds
        values = np.unique(probs[:, k])  # ascending: each a threshold (predict p >= it)
        predicted = len(probs) - np.searchsorted(np.sort(probs[:, k]), values, side="left")
        positives = np.sort(probs[labels[:, k] == 1, k])
        tp = len(positives) - np.searchsorted(positives, values, side="left")
        t = float(values[int(np.argmax(2 * tp / (predicted + len(positives))))])
        below = probs[:, k][probs[:, k] < t]
        out[k] = (t + float(below.max())) / 2 if below.size else t / 2
    return out if metric == "f1" else _ascend(probs, labels.astype(bool), out, metric, fixed)


def _ascend(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, metric: str,
            fixed: Sequence[int] = (), passes: int = 10) -> np.ndarray:
    """Coordinate ascent on ``metric`` of all classes together: each class's threshold in
    turn set to the candidate (halfway between two of its distinct probabilities, or past
    either end; at most ``_CANDIDATES``, by quantile) that scores best with the others held,
    kept unless another scores strictly better (so the metric never falls); until a pass
    changes none."""
    t = thresholds.copy()
    for _ in range(passes):
        changed = False
        for k in (k for k in range(probs.shape[1]) if k not in fixed):
            pred, rest = probs >= t[None, :], np.delete(np.arange(probs.shape[1]), k)
            candidates = np.union1d(_candidates(probs[:, k]), [t[k]])  # the current one too
            on = probs[None, :, k] >= candidates[:, None]  # [C, N]
            y = labels[None, :, k]
            if metric == "jaccard":  # per text, 1 when both label sets are empty (as reported)
                inter = (pred[:, rest] & labels[:, rest]).sum(1)[None] + (on & y)
                union = (pred[:, rest] | labels[:, rest]).sum(1)[None] + (on | y)
                with np.errstate(invalid="ignore", divide="ignore"):
                    score = np.where(union == 0, 1.0, inter / union).mean(1)
            else:  # micro F1: 2 TP / (2 TP + FP + FN) over every class's decisions
                tp = (pred[:, rest] & labels[:, rest]).sum() + (on & y).sum(1)
                wrong = (pred[:, rest] != labels[:, rest]).sum() + (on != y).sum(1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    score = np.nan_to_num(2 * tp / (2 * tp + wrong))
            now = score[np.searchsorted(candidates, t[k])]
            best = int(np.argmax(score))
            if score[best] > now:
                changed |= candidates[best] != t[k]
                t[k] = candidates[best]
        if not changed:
            break
    return t


def _candidates(p: np.ndarray) -> np.ndarray:
    """Thresholds for one class's probabilities: halfway between consecutive distinct values,
    below the lowest (half of it) and above the highest (halfway to 1; past a probability of
    exactly 1, which float32 sigmoids give: none predicted); by quantile when more than
    ``_CANDIDATES``."""
    values = np.unique(p)
    if not values.size:
        return np.array([0.5])
    top = (values[-1] + 1) / 2 if values[-1] < 1 else np.nextafter(values[-1], np.inf)
    mids = np.concatenate([[values[0] / 2], (values[1:] + values[:-1]) / 2, [top]])
    if len(mids) > _CANDIDATES:
        mids = np.unique(mids[np.linspace(0, len(mids) - 1, _CANDIDATES).round().astype(int)])
    return mids


def classification_metrics(probs: np.ndarray, labels: np.ndarray, multilabel: bool,
                           class_names: Sequence[str], thresholds: np.ndarray | None = None
                           ) -> dict[str, Any]:
    """All metrics of probabilities [N, K] against labels ([N] ids or [N, K] 0/1)."""
    # here, not at the top: scikit-learn takes ~0.8 s to import, and classify, fine-tuning
    # and their refusals import this module without computing a metric
    from sklearn.metrics import (accuracy_score, f1_score, jaccard_score,
                                 precision_recall_fscore_support)
    labels = np.asarray(labels).astype(np.int64)
    pred = predict_labels(probs, multilabel, thresholds)
    k = probs.shape[1]
    classes = None if multilabel else list(range(k))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    eps = 1e-7
    if multilabel:
        q = np.clip(probs, eps, 1 - eps)
        loss = float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q)))
        jaccard = float(jaccard_score(labels, pred, average="samples", zero_division=1.0))
        mcc = float(np.mean([matthews(labels[:, j], pred[:, j], 2) for j in range(k)]))
    else:
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
        jaccard = float(jaccard_score(labels, pred, average="macro", labels=classes, zero_division=0))
        mcc = matthews(labels, pred, k)
    label_accuracy = {"label_accuracy": float(np.mean(labels == pred)),
                      "label_jaccard": float(jaccard_score(labels, pred, average="macro",
                                                           zero_division=0))} if multilabel else {}
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        **label_accuracy,
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=classes, zero_division=0)),
        "micro_f1": float(f1_score(labels, pred, average="micro", labels=classes, zero_division=0)),
        "jaccard": jaccard,
        "mcc": mcc,
        "loss": loss,
        "texts": int(len(labels)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(class_names)},
    }


def matthews(labels: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Matthews' correlation of class ids [N] (Gorodkin's K-class form, the binary one at K = 2):
    (c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)), c right of s, t_k and p_k the true and
    predicted counts of class k; 0 where a class is the only one true or predicted (where
    scikit-learn's matthews_corrcoef warns: one label column of a multi-label task does)."""
    s, c = len(labels), int(np.sum(labels == pred))
    t_k, p_k = np.bincount(labels, minlength=k), np.bincount(pred, minlength=k)
    d = float(s * s - np.sum(p_k * p_k)) * float(s * s - np.sum(t_k * t_k))
    return 0.0 if d == 0 else float(c * s - np.sum(p_k * t_k)) / float(np.sqrt(d))


def better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (loss: lower; others: higher)."""
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one block per split, summary line then per-class P/R/F1."""
    lines = []
    for split, m in results.items():
        accuracy = (f"subset accuracy {m['accuracy']:.4f}  label accuracy {m['label_accuracy']:.4f}"
                    if "label_accuracy" in m else f"accuracy {m['accuracy']:.4f}")
        lines.append(f"{split}: {accuracy}  macro F1 {m['macro_f1']:.4f}  "
                     f"micro F1 {m['micro_f1']:.4f}  Jaccard {m['jaccard']:.4f}  "
                     f"MCC {m['mcc']:.4f}  "
                     f"loss {m['loss']:.4f}  ({m['texts']} texts)")
        width = max(len(n) for n in m["per_class"])
        lines.append(f"  {'class':<{width}}  precision  recall     F1  support")
        for name, c in m["per_class"].items():
            lines.append(f"  {name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  "
                         f"{c['f1']:.4f}  {c['support']:7d}")
    return "\n".join(lines)
