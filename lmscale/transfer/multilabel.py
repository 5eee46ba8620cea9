"""Multi-label transfer: one L1 logistic regression per label column on frozen-LM features.

For each label k (a 0/1 column, e.g. one emotion of SemEval-2018 E-c) and each C of the grid,
an L1 logistic regression is fitted on train; its validation probabilities get the threshold
that maximizes the label's F1 (as fine-tuning does), and the C whose tuned F1 is best is kept
(ties: the smaller C, sparser).
The K chosen models then predict val and test with their tuned thresholds, scored by the
same metrics as ``lmscale.finetune`` (macro/micro F1, Jaccard, per class), so the two compare
directly. A label with a single value in train gets a constant probability (its train rate).
On a train set of more than ``search_rows`` texts the Cs are tried on a random subsample of
that many (``search_subsample_multilabel``) and each label's chosen C is fitted again on all
rows, as ``classify.fit_l1`` does for one label.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from lmscale.transfer.metrics import classification_metrics, tune_thresholds
from lmscale.transfer.classify import C_GRID, SEARCH_ROWS, fit_many
from lmscale.transfer.labeled import constant_columns


@dataclasses.dataclass
class MultiLabelFit:
    """coef [K, F], intercept [K], thresholds [K]; C per label; metrics per split."""
    coef: np.ndarray
    intercept: np.ndarray
    thresholds: np.ndarray
    Cs: list[float | None]
    metrics: dict[str, dict[str, Any]]
    search_rows: int = 0  # training rows the C search fitted on (all of them, or a subsample)
    train_rows: int = 0
    threshold_metric: str = "f1"  # what the thresholds maximize on val (tune_thresholds)

    def probs(self, x: Any) -> np.ndarray:
        """Per-label probabilities [N, K] of (standardized) features x [N, F]."""
        return sigmoid(np.asarray(x @ self.coef.T) + self.intercept)

    def summary(self) -> dict[str, Any]:
        return {"C_per_label": self.Cs, "thresholds": self.thresholds.tolist(),
                "threshold_metric": self.threshold_metric,
                "nonzero_weights": int(np.count_nonzero(self.coef)),
                "search_rows": self.search_rows, "train_rows": self.train_rows, **self.metrics}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _tuned_f1(p: np.ndarray, y: np.ndarray) -> float:
    t = tune_thresholds(p[:, None], y[:, None])
    pred = p >= t[0]
    tp = float(np.sum(pred & (y == 1)))
    denom = float(np.sum(pred) + np.sum(y == 1))
    return 2 * tp / denom if denom else 0.0


def search_subsample_multilabel(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a random subsample of ``rows`` of the label rows y [N, K], plus for a
    label whose 0s or 1s it missed one row of each missing value (so every label that varies
    in train varies in the search), or None when the search takes every row (``rows`` 0 or
    N <= ``rows``)."""
    n = len(y)
    if rows == 0 or n <= rows:
        return None
    rng = np.random.default_rng(seed)
    picked = rng.permutation(n)[:rows]
    extra = [rng.choice(np.flatnonzero(y[:, j] == value))
             for j in range(y.shape[1]) for value in (0, 1)
             if np.any(y[:, j] == value) and not np.any(y[picked, j] == value)]
    return np.unique(np.concatenate([picked, np.asarray(extra, np.int64)]))


def fit_l1_multilabel(x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray,
                      x_test: Any = None, y_test: np.ndarray | None = None, *,
                      class_names: Sequence[str], Cs: Sequence[float] = C_GRID,
                      seed: int = 0, n_jobs: int | None = None,
                      search_rows: int = SEARCH_ROWS, threshold_metric: str = "f1"
                      ) -> MultiLabelFit:
    """Fits one L1 model per label column of ``y_train`` [N, K] and C (all of them at once,
    ``fit_many``; on a subsample of ``search_rows`` texts when there are more, then the
    chosen Cs on all of them); see the module docstring. The K models' val thresholds
    maximize ``threshold_metric`` (``tune_thresholds``; each label's C is chosen by its own
    tuned F1 whatever it is)."""
    y_train, y_val = np.asarray(y_train, np.int64), np.asarray(y_val, np.int64)
    k, f = y_train.shape[1], x_train.shape[1]
    coef, intercept = np.zeros((k, f)), np.zeros(k)
    chosen: list[float | None] = []
    constant = constant_columns(y_train)  # nothing to separate: the train rate
    separable = [j for j in range(k) if j not in constant]
    rows = search_subsample_multilabel(y_train, search_rows, seed)
    x_search, y_search = (x_train, y_train) if rows is None else (x_train[rows], y_train[rows])
    models = iter(fit_many(x_search, [(y_search[:, j], C) for j in separable for C in Cs],
                           seed, n_jobs))
    for j in range(k):
        if j not in separable:  # nothing to separate: the train rate
            rate = float(np.clip(y_train[:, j].mean(), 1e-6, 1 - 1e-6))
            intercept[j] = np.log(rate / (1 - rate))
            chosen.append(None)
            continue
        best = None
        for C in Cs:
            model = next(models)
            score = _tuned_f1(model.predict_proba(x_val)[:, 1], y_val[:, j])
            if best is None or score > best[0] or (score == best[0] and C < best[1]):
                best = (score, float(C), model)  # ties: the smaller C, whatever Cs' order
        _, C, model = best
        coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        chosen.append(C)
    if rows is not None:  # each label's chosen C on every row
        refits = fit_many(x_train, [(y_train[:, j], chosen[j]) for j in separable], seed, n_jobs)
        for j, model in zip(separable, refits):
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
    fit = MultiLabelFit(coef, intercept, np.full(k, 0.5), chosen, {},
                        search_rows=len(y_train) if rows is None else len(rows),
                        train_rows=len(y_train))
    # A label with one value in train has a constant probability, which a threshold tuned on
    # val puts on either side (its val F1 is best predicting it for every text): it keeps its
    # train value (0.5: the rate is 1e-6 or 1 - 1e-6), and the others are tuned around it.
    fit.thresholds = tune_thresholds(fit.probs(x_val), y_val, threshold_metric,
                                     fixed=constant)
    fit.threshold_metric = threshold_metric
    splits = {"train": (x_train, y_train), "val": (x_val, y_val)}
    if x_test is not None and y_test is not None:
        splits["test"] = (x_test, y_test)
    for name, (x, y) in splits.items():
        m = classification_metrics(fit.probs(x), y, True, list(class_names), fit.thresholds)
        fit.metrics[name] = m
    return fit
