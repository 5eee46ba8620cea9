"""L1-regularized logistic regression on features, the search for the sentiment neuron, and
the fitted classifier saved as plain arrays (``save_transfer_classifier``; read back by
``lmscale.finetuning.classifier.load_classifier``).

After Radford et al. (2017): fit an L1 logistic regression for each C of a log grid, keep
the C with the best validation accuracy; the L1 penalty makes most weights zero, and
ranking units by |weight| finds the few that carry the label. The top unit is the
"sentiment neuron"; re-fitting on the top k units for k = 1, 2, 4, ... shows how much of
the accuracy a handful of units hold. scikit-learn does the fitting (liblinear). Where it
departs from OpenAI's utils.py (``train_with_reg_cv``): the pipeline standardizes the
features first (``run_transfer(standardize=False)`` fits them raw, as OpenAI did), the
default grid runs to 2^1 (OpenAI's: 2^-8 ... 2^0, ``OPENAI_C_GRID``), and the neuron is the
top unit of this fit (OpenAI's demo plots its model's unit 2388 by index; an imported
model's recorded unit is reported beside it, ``neuron_summary(unit=...)``).

On a large train set (100k texts: minutes per fit) the C search runs on a stratified
subsample of ``SEARCH_ROWS`` rows and only the chosen C is fitted on all rows
(``search_rows``); a train set at or below that size is searched whole, as before.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lmscale.atomic import atomic_write, write_json
from lmscale.data.errors import DataError

if TYPE_CHECKING:  # imported where fitted: scikit-learn takes ~0.8 s to import, and
    # classify of a fine-tuned run imports this module for its file names alone
    from sklearn.linear_model import LogisticRegression

C_GRID: tuple[float, ...] = tuple(float(c) for c in 2.0 ** np.arange(-8, 2))  # 2^-8 ... 2^1
OPENAI_C_GRID: tuple[float, ...] = C_GRID[:-1]  # 2^-8 ... 2^0: utils.py's train_with_reg_cv
# Below this many feature values (rows x features, or a sparse matrix's stored ones) the fits
# run in this process: starting and feeding worker processes cost more than they save.
PARALLEL_MIN_VALUES = 100_000
# The C search's rows (a stratified subsample; 0: all; see fit_l1). On 100k x 1024 synthetic
# features the search on 20k rows chose the C of the search on all rows (the same model) in
# a quarter of the time: 52 s against 219 s on 2 cores.
SEARCH_ROWS = 20_000


def inverse_strengths(Cs: Sequence[float | str]) -> tuple[float, ...]:
    """The C grid as floats (numbers or strings such as "0.5", "2e-3"), checked: at least one,
    each finite and > 0."""
    out = []
    for c in Cs:
        try:
            value = float(c)
        except (TypeError, ValueError):
            raise DataError(f"C must be a number, got {c!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise DataError(f"C must be finite and > 0, got {c!r}")
        out.append(value)
    if not out:
        raise DataError("the C grid is empty: give at least one C")
    return tuple(out)


def l1_logistic_regression(C: float, seed: int = 0) -> LogisticRegression:
    """An unfitted L1 logistic regression (liblinear), spelled for old and new scikit-learn."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # `penalty` is deprecated from 1.8: l1_ratio=1 is pure L1
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed,
                                  max_iter=MAX_ITER)
    return LogisticRegression(C=C, penalty="l1", solver="liblinear", random_state=seed,
                              max_iter=MAX_ITER)


def search_subsample(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a stratified random subsample of ``rows`` of the labels y [N] (each
    class in proportion, at least one row each), or None when the search takes every row
    (``rows`` is 0 or N <= ``rows``)."""
    y = np.asarray(y)
    n = len(y)
    if rows < 0:
        raise DataError(f"search_rows must be >= 0 (0: all rows), got {rows}")
    if rows == 0 or n <= rows:
        return None
    classes, inverse = np.unique(y, return_inverse=True)
    if rows < len(classes):
        raise DataError(f"search_rows={rows} cannot hold one row of each of the "
                        f"{len(classes)} classes")
    counts = np.bincount(inverse)
    exact = rows * counts / n
    take = np.maximum(1, np.floor(exact).astype(np.int64))
    for c in np.argsort(-(exact - np.floor(exact)), kind="stable"):  # largest remainders
        if take.sum() >= rows:
            break
        take[c] += 1
    while take.sum() > rows:  # the at-least-one rule overshot: trim the largest class
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)]
    return np.sort(np.concatenate(picked))


MAX_ITER = 300  # liblinear's iterations per fit (fits seen reaching it cycled: more did not help)


def _fit_one(x: Any, y: np.ndarray, C: float, seed: int) -> LogisticRegression:
    """One fit, scikit-learn's ConvergenceWarning taken (it advises more iterations, which no
    setting gives and which did not help: seen cycling at 3000 on 200 tweets' bag of words);
    ``unconverged_note`` says it once for all the fits instead."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return l1_logistic_regression(C, seed).fit(x, y)


def unconverged_note(models: Sequence[LogisticRegression]) -> str | None:
    """A note naming the Cs of fits that stopped at ``MAX_ITER``, or None."""
    stopped = sorted({float(m.C) for m in models if int(np.max(m.n_iter_)) >= MAX_ITER})
    if not stopped:
        return None
    return (f"note: liblinear stopped at its {MAX_ITER}-iteration limit in "
            f"{sum(int(np.max(m.n_iter_)) >= MAX_ITER for m in models)} of {len(models)} L1 "
            f"fits (C={', '.join(f'{c:g}' for c in stopped)}): such a fit may be a little off "
            f"its optimum, and the search compares it on validation as it is")


def fit_many(x: Any, tasks: Sequence[tuple[np.ndarray, float]], seed: int = 0,
             n_jobs: int | None = None) -> list[LogisticRegression]:
    """One L1 model per (labels [N], C) task on features x [N, F], in task order.

    liblinear is single-threaded, so the tasks run in worker processes (joblib), one per
    core this process may use (``n_jobs``: at most that many; ``LOKY_MAX_CPU_COUNT`` too), the
    largest C (the slowest fit) first. Each process seeds liblinear as this one would, so
    the models equal those fitted one after another, bit for bit (threads would share
    liblinear's random state and differ from run to run). Small problems
    (``PARALLEL_MIN_VALUES``) and one core run here."""
    import joblib  # scikit-learn's own dependency
    workers = min(len(tasks), n_jobs or joblib.cpu_count())  # affinity and cgroups counted
    if workers < 2 or x.size < PARALLEL_MIN_VALUES:  # a sparse x: its stored values
        out = [_fit_one(x, y, C, seed) for y, C in tasks]
    else:
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1])
        fitted = joblib.Parallel(n_jobs=workers)(
            joblib.delayed(_fit_one)(x, tasks[i][0], tasks[i][1], seed) for i in order)
        out = [None] * len(tasks)
        for i, model in zip(order, fitted):
            out[i] = model
    note = unconverged_note(out)
    if note:
        print(note, file=sys.stderr)
    return out


@dataclasses.dataclass
class Fit:
    """The chosen model and its accuracies (fractions in [0, 1]; None without that split)."""
    C: float
    model: LogisticRegression
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float | None
    nonzero: int
    val_accuracy_by_C: dict[float, float]
    search_rows: int = 0  # training rows the C search fitted on (all of them, or a subsample)
    train_rows: int = 0

    @property
    def coef(self) -> np.ndarray:
        """Weights [F] (binary task)."""
        return self.model.coef_[0]

    def summary(self) -> dict[str, Any]:
        return {"C": self.C, "train_accuracy": self.train_accuracy,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "nonzero_weights": self.nonzero,
                "val_accuracy_by_C": {f"{c:g}": a for c, a in self.val_accuracy_by_C.items()},
                "search_rows": self.search_rows, "train_rows": self.train_rows}

    @property
    def subsampled(self) -> bool:
        """Whether the C search ran on a subsample (then ``val_accuracy_by_C`` is of its
        models, and the chosen C was refitted on all ``train_rows``)."""
        return self.search_rows < self.train_rows


def fit_l1(x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray,
           x_test: Any = None, y_test: np.ndarray | None = None, *,
           Cs: Sequence[float] = C_GRID, seed: int = 0, n_jobs: int | None = None,
           search_rows: int = SEARCH_ROWS) -> Fit:
    """Fits one model per C on train (``fit_many``), keeps the best on val (ties: the smaller
    C, sparser).

    With more than ``search_rows`` training rows (0: no limit) the C models are fitted on a
    stratified subsample of that many rows (``search_subsample``) and the chosen C is then
    fitted once on all rows: fits cost superlinearly in rows, and the search needs only the
    ranking of the Cs. At or below it, every row, as before (the same models bit for bit)."""
    n = x_train.shape[0]
    rows = search_subsample(y_train, search_rows, seed)
    x_search, y_search = (x_train, y_train) if rows is None else (x_train[rows], y_train[rows])
    best, by_c = None, {}
    models = fit_many(x_search, [(y_search, C) for C in Cs], seed, n_jobs)
    for C, model in zip(Cs, models):
        acc = float(model.score(x_val, y_val))
        by_c[float(C)] = acc
        if best is None or acc > best[1] or (acc == best[1] and C < best[0]):  # whatever Cs' order
            best = (float(C), acc, model)
    C, val_acc, model = best
    if rows is not None:  # the chosen C on every row
        model = fit_many(x_train, [(y_train, C)], seed, 1)[0]
        val_acc = float(model.score(x_val, y_val))
    test_acc = None if x_test is None else float(model.score(x_test, y_test))
    return Fit(C=C, model=model, train_accuracy=float(model.score(x_train, y_train)),
               val_accuracy=val_acc, test_accuracy=test_acc,
               nonzero=int(np.count_nonzero(model.coef_)), val_accuracy_by_C=by_c,
               search_rows=n if rows is None else len(rows), train_rows=n)


def ranked_units(fit: Fit, x_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Unit indices by decreasing |weight| (ties by index); when the fit kept no unit (every
    weight 0: the strongest L1 penalty won on validation), by decreasing |covariance| of each
    (standardized) unit with the label on train instead (``selected_by``)."""
    return _by_magnitude(_unit_scores(fit, x_train, y_train))


def _by_magnitude(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.abs(scores), kind="stable")  # ties by index


def selected_by(fit: Fit) -> str:
    """How ``ranked_units`` ranks: "weight" (the L1 fit's), or "correlation" (it kept none)."""
    return "weight" if np.any(fit.coef) else "correlation"


def _unit_scores(fit: Fit, x_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    if selected_by(fit) == "weight":
        return fit.coef
    y, x = np.asarray(y_train, np.float64), np.asarray(x_train, np.float64)
    # correlation, not covariance: raw features (standardize=False) differ in scale, and a wide
    # unit unrelated to the label outranked the one that tracks it (a constant unit scores 0)
    std = x.std(axis=0)
    return (x.T @ (y - y.mean())) / np.where(std > 0, std, np.inf)


def top_k_sweep(fit: Fit, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                y_val: np.ndarray, x_test: np.ndarray | None = None,
                y_test: np.ndarray | None = None, *, Cs: Sequence[float] = C_GRID,
                seed: int = 0, max_k: int = 512,
                search_rows: int = SEARCH_ROWS) -> list[dict[str, Any]]:
    """Refits on the top k units by |weight|, k = 1, 2, 4, ... below the feature count
    (and up to ``max_k``; the all-features fit is the last point of the curve); each k's C
    search as ``fit_l1``'s (``search_rows``)."""
    order = ranked_units(fit, x_train, y_train)
    results, k = [], 1
    while k < x_train.shape[1] and k <= max_k:
        units = order[:k]
        sub = fit_l1(x_train[:, units], y_train, x_val[:, units], y_val,
                     None if x_test is None else x_test[:, units], y_test, Cs=Cs, seed=seed,
                     search_rows=search_rows)
        results.append({"k": k, "units": [int(u) for u in units], **sub.summary()})
        k *= 2
    return results


def neuron_summary(fit: Fit, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                   y_val: np.ndarray, x_test: np.ndarray | None = None,
                   y_test: np.ndarray | None = None, *, Cs: Sequence[float] = C_GRID,
                   seed: int = 0, search_rows: int = SEARCH_ROWS,
                   unit: int | None = None) -> dict[str, Any]:
    """The top unit (``ranked_units``; or ``unit``, e.g. a model's known sentiment unit, with
    its ``rank`` there, 0 = the top): index, its sign, and the accuracy of a classifier on it
    alone.

    ``sign`` is the unit's own direction: that of the classifier on it alone (of its
    covariance with the label when that kept no weight) — what its heatmap and a neuron held
    at a value in generation mean. The all-features fit's weight (``weight``, its sign
    ``sign_in_fit``) can point the other way: there a unit may correct the others."""
    scores = _unit_scores(fit, x_train, y_train)
    order = _by_magnitude(scores)
    unit = int(order[0]) if unit is None else int(unit)
    alone = fit_l1(x_train[:, [unit]], y_train, x_val[:, [unit]], y_val,
                   None if x_test is None else x_test[:, [unit]], y_test, Cs=Cs, seed=seed,
                   search_rows=search_rows)
    y = np.asarray(y_train, np.float64)
    own = [float(alone.coef[0]), float(np.asarray(x_train[:, unit], np.float64) @ (y - y.mean())),
           float(scores[unit])]
    sign = int(np.sign(next((v for v in own if v != 0), 0.0)))
    return {"index": unit, "rank": int(np.flatnonzero(order == unit)[0]), "sign": sign,
            "sign_in_fit": int(np.sign(scores[unit])),
            "weight": float(fit.coef[unit]), "selected_by": selected_by(fit),
            **{k: v for k, v in alone.summary().items() if k != "val_accuracy_by_C"}}


TRANSFER_FILES = ("classifier.json", "classifier.npz")  # what save_transfer_classifier writes


def save_transfer_classifier(folder: str, coef: np.ndarray, intercept: np.ndarray, scaler: Any,
                             classes: Sequence[Any], info: dict[str, Any]) -> None:
    """Writes fitted logistic regression(s) and their standardization as plain arrays
    (classifier.npz: coef [K, F], intercept [K], mean [F], scale [F] (0 and 1 for a scaler
    fitted with_mean=False, with_std=False: raw features); K = 1 for a binary task,
    one row per label for multi-label) + classifier.json (classes, and for multi-label
    ``"multilabel": true`` and the tuned ``thresholds``). The old json goes first: a failure
    between the two files (a full disk) left a new npz read with another fit's settings."""
    if os.path.exists(os.path.join(folder, "classifier.json")):
        os.remove(os.path.join(folder, "classifier.json"))  # the pair is whole once it is back
    width = np.asarray(coef).shape[-1]
    with atomic_write(os.path.join(folder, "classifier.npz"), "wb") as f:
        np.savez(f, coef=np.asarray(coef, np.float64), intercept=np.asarray(intercept, np.float64),
                 mean=np.zeros(width) if scaler.mean_ is None else scaler.mean_.astype(np.float64),
                 scale=np.ones(width) if scaler.scale_ is None else scaler.scale_.astype(np.float64))
    record = {"kind": "transfer_logistic_regression",
              "classes": [c if isinstance(c, str) else int(c) for c in classes], **info}
    if "lm_workdir" in info:  # also from here: the two move together (WORKDIR/transfer)
        record["lm_workdir_from_here"] = os.path.relpath(os.path.abspath(info["lm_workdir"]),
                                                         os.path.abspath(folder))
    write_json(os.path.join(folder, "classifier.json"), record, indent=2)
