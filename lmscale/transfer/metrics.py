"""Classification metrics (scikit-learn) and per-class decision thresholds for multi-label.

``classification_metrics`` gives accuracy (multi-label: subset accuracy, every label of a
text right, and ``label_accuracy``, the fraction of labels right), per-class
precision / recall / F1 / support, macro and micro F1, and the Jaccard index (multi-label:
per-text |true ∩ predicted| / |true ∪ predicted| averaged over texts, SemEval-2018 E-c's
official metric, 1 when both are empty; single-label: macro over classes), plus the mean
log loss of the probabilities. ``tune_thresholds`` picks, per class, the threshold on the
validation probabilities that maximizes that class's F1 (sentiment-discovery's automatic
thresholding).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, f1_score, jaccard_score,
                             precision_recall_curve, precision_recall_fscore_support)

METRICS = ("accuracy", "macro_f1", "micro_f1", "jaccard", "loss")


def predict_labels(probs: np.ndarray, multilabel: bool, thresholds: np.ndarray | None = None
                   ) -> np.ndarray:
    """Single-label: argmax [N]; multi-label: probs >= threshold per class (0.5 if none), 0/1 [N, K]."""
    if not multilabel:
        return np.argmax(probs, axis=-1)
    t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    return (probs >= t[None, :]).astype(np.int64)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class k, the threshold t (predict p >= t) maximizing F1 of column k on these
    probabilities [N, K] and 0/1 labels [N, K]; among ties the largest F1's lowest threshold.
    t lies halfway between the lowest probability predicted positive and the next lower one,
    so the same texts scored again (other hardware, float rounding) get the same labels.
    A class with no positive example keeps 0.5."""
    labels = np.asarray(labels).astype(np.int64)
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        if labels[:, k].sum() == 0:
            continue
        precision, recall, thresholds = precision_recall_curve(labels[:, k], probs[:, k])
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        t = float(thresholds[int(np.argmax(f1[:-1]))])  # the last point has no threshold
        below = probs[:, k][probs[:, k] < t]
        out[k] = (t + float(below.max())) / 2 if below.size else t / 2
    return out


def classification_metrics(probs: np.ndarray, labels: np.ndarray, multilabel: bool,
                           class_names: Sequence[str], thresholds: np.ndarray | None = None
                           ) -> dict[str, Any]:
    """All metrics of probabilities [N, K] against labels ([N] ids or [N, K] 0/1)."""
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
    else:
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
        jaccard = float(jaccard_score(labels, pred, average="macro", labels=classes, zero_division=0))
    label_accuracy = {"label_accuracy": float(np.mean(labels == pred))} if multilabel else {}
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        **label_accuracy,
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=classes, zero_division=0)),
        "micro_f1": float(f1_score(labels, pred, average="micro", labels=classes, zero_division=0)),
        "jaccard": jaccard,
        "loss": loss,
        "texts": int(len(labels)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(class_names)},
    }


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
                     f"loss {m['loss']:.4f}  ({m['texts']} texts)")
        width = max(len(n) for n in m["per_class"])
        lines.append(f"  {'class':<{width}}  precision  recall     F1  support")
        for name, c in m["per_class"].items():
            lines.append(f"  {name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  "
                         f"{c['f1']:.4f}  {c['support']:7d}")
    return "\n".join(lines)
