"""The L1 path against scikit-learn called directly, in worker processes as in this one, and the
neuron search on planted data."""

from __future__ import annotations

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.classify import (C_GRID, PARALLEL_MIN_VALUES, fit_l1, fit_many,
                                      inverse_strengths, neuron_summary, ranked_units,
                                      top_k_sweep)

# Pure L1 as this scikit-learn spells it: l1_ratio=1 from 1.8 (where `penalty` is deprecated);
# before 1.8, l1_ratio is ignored unless penalty="elasticnet", so it is penalty="l1".
_SKLEARN = tuple(int(v) for v in sklearn.__version__.split(".")[:2])
PURE_L1 = {"l1_ratio": 1.0} if _SKLEARN >= (1, 8) else {"penalty": "l1"}


def planted(n=600, f=40, unit=7, seed=0):
    """Features where unit ``unit`` carries the label (negatively), a few others weakly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, f)).astype(np.float32)
    x[:, unit] -= 2.0 * (y - 0.5) * 2
    x[:, 3] += 0.4 * (y - 0.5)
    return x, y


def test_fit_l1_matches_sklearn_called_directly():
    x, y = planted()
    xtr, ytr, xva, yva, xte, yte = x[:300], y[:300], x[300:450], y[300:450], x[450:], y[450:]
    fit = fit_l1(xtr, ytr, xva, yva, xte, yte)
    # By hand: every C of the grid, the best validation accuracy (first on ties).
    best = None
    for C in C_GRID:
        m = LogisticRegression(C=C, solver="liblinear", random_state=0, max_iter=300,
                               **PURE_L1).fit(xtr, ytr)
        acc = m.score(xva, yva)
        assert fit.val_accuracy_by_C[C] == acc
        if best is None or acc > best[1]:
            best = (C, acc, m)
    C, acc, m = best
    assert fit.C == C and fit.val_accuracy == acc
    np.testing.assert_array_equal(fit.coef, m.coef_[0])
    assert fit.test_accuracy == m.score(xte, yte) and fit.train_accuracy == m.score(xtr, ytr)
    assert fit.nonzero == np.count_nonzero(m.coef_)
    assert fit.nonzero < x.shape[1]  # L1 zeroes most of the noise units


def test_neuron_is_the_planted_unit_with_its_sign():
    x, y = planted(unit=7)
    fit = fit_l1(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    assert ranked_units(fit, x[:400], y[:400])[0] == 7
    neuron = neuron_summary(fit, x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    assert neuron["index"] == 7 and neuron["sign"] == -1 and neuron["selected_by"] == "weight"
    assert neuron["test_accuracy"] > 0.9
    sweep = top_k_sweep(fit, x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    assert [s["k"] for s in sweep][:3] == [1, 2, 4] and sweep[0]["units"] == [7]


def test_a_fit_that_kept_no_unit_names_the_unit_most_correlated_with_the_label():
    """A penalty so strong that every weight is 0 (here the only C tried): the neuron is not
    unit 0 by the ranking's ties, but the planted unit, with its sign, by correlation."""
    x, y = planted(unit=7)
    fit = fit_l1(x[:400], y[:400], x[400:500], y[400:500], Cs=[1e-4])
    assert fit.nonzero == 0
    neuron = neuron_summary(fit, x[:400], y[:400], x[400:500], y[400:500], Cs=[1e-4, 1.0])
    assert neuron["index"] == 7 and neuron["sign"] == -1 and neuron["weight"] == 0.0
    assert neuron["selected_by"] == "correlation" and neuron["val_accuracy"] > 0.9
    assert list(ranked_units(fit, x[:400], y[:400])[:2]) == [7, 3]


def test_c_grid_from_strings_and_its_errors():
    assert inverse_strengths(["0.5", "2e-3", 4]) == (0.5, 0.002, 4.0)
    assert inverse_strengths(C_GRID) == C_GRID
    for bad, message in ((["x"], "C must be a number, got 'x'"), ([-1.0], "> 0, got -1.0"),
                         ([0], "> 0, got 0"), (["0.0"], "> 0, got '0.0'"),
                         (["nan"], "> 0, got 'nan'"), ([], "the C grid is empty")):
        with pytest.raises(DataError, match=message.replace("(", r"\(")):
            inverse_strengths(bad)


def test_fits_in_worker_processes_equal_fits_one_after_another():
    """Two labelings x four Cs, in 2 worker processes (the largest C first) and in this one:
    the same models bit for bit, in task order."""
    x, y = planted(n=2000, f=64)
    assert x.size >= PARALLEL_MIN_VALUES  # large enough to go to the workers
    tasks = [(labels, C) for labels in (y, 1 - y) for C in (0.01, 2.0, 0.1, 0.5)]
    here = fit_many(x, tasks, n_jobs=1)
    workers = fit_many(x, tasks, n_jobs=2)
    for (labels, C), a, b in zip(tasks, here, workers):
        assert a.C == b.C == C
        np.testing.assert_array_equal(a.coef_, b.coef_)
        np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert not np.array_equal(here[0].coef_, here[1].coef_)  # the Cs differ: so do the models


def test_the_neuron_sign_is_its_own_not_its_weight_among_all_units():
    """In an all-features fit a unit may correct the others and take the weight sign opposite
    to its own (seen on a tiny SST LM: weight -0.96, alone +0.15, correlation +0.05). The
    reported sign is the unit's own, what its heatmap and a held value in generation mean;
    the fit's is kept as sign_in_fit. Here the fit's weights are turned around to stand for
    such a fit."""
    x, y = planted(unit=7)
    fit = fit_l1(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    fit.model.coef_ = -fit.model.coef_
    neuron = neuron_summary(fit, x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])
    assert neuron["index"] == 7 and neuron["sign"] == -1 and neuron["sign_in_fit"] == 1
    assert neuron["weight"] > 0


def test_a_tie_on_val_goes_to_the_smaller_C_whatever_the_order_of_the_grid():
    """The docstring says ties go to the smaller C (sparser); the first C of the list won, so
    --C=2,1,0.5 and --C=0.5,1,2 gave different classifiers."""
    from lmscale.transfer.multilabel import fit_l1_multilabel
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 40)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    x[:, 2] += 6.0 * (y - 0.5)  # separable: every C below scores 1.0 on val
    for Cs in [(2.0, 1.0, 0.5), (0.5, 1.0, 2.0), (1.0, 2.0, 0.5)]:
        fit = fit_l1(x[:60], y[:60], x[60:], y[60:], Cs=Cs)
        assert set(fit.val_accuracy_by_C.values()) == {1.0} and fit.C == 0.5, Cs
        ys = np.stack([y, y], 1)
        multi = fit_l1_multilabel(x[:60], ys[:60], x[60:], ys[60:], class_names=["a", "b"], Cs=Cs)
        assert multi.Cs == [0.5, 0.5], Cs


def test_a_fit_that_keeps_no_unit_ranks_by_correlation_not_covariance():
    """The L1 fit kept no weight: units were ranked by x.T @ (y - mean y), a covariance, so on
    raw features (standardize=False, OpenAI's setup) a wide unit unrelated to the label
    outranked the one that tracks it, said to be "the unit most correlated with the label"."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3))
    x[:, 1] *= 100
    y = (x[:, 0] + 3 * rng.standard_normal(400) > 0).astype(int)
    fit = fit_l1(x[:300], y[:300], x[300:], y[300:], Cs=[1e-4])
    assert fit.nonzero == 0
    assert ranked_units(fit, x[:300], y[:300])[0] == 0
    assert neuron_summary(fit, x[:300], y[:300], x[300:], y[300:], Cs=[1e-4])["index"] == 0


def test_a_fit_that_keeps_no_unit_ranks_by_correlation_whatever_a_units_mean():
    """The correlation is with y - mean y: raw features (standardize=False) with a unit far
    from 0 and unrelated to the label scored its mean times the positives, and it ranked first."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3))
    x[:, 1] += 50
    y = (x[:, 0] + 3 * rng.standard_normal(400) > 0).astype(int)
    fit = fit_l1(x[:300], y[:300], x[300:], y[300:], Cs=[1e-4])
    assert fit.nonzero == 0
    assert ranked_units(fit, x[:300], y[:300])[0] == 0


def _signed_units(n: int = 400, seed: int = 0):
    """Features [n, 4]: unit 2 tracks the label negatively (the strongest), unit 0 positively
    (weaker), units 1 and 3 noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4))
    x[:, 2] -= 3.0 * (2 * y - 1)
    x[:, 0] += 1.0 * (2 * y - 1)
    return x, y


def test_neuron_summary_rank_sign_and_sign_in_fit():
    """The top unit is rank 0, a named unit its place in the order; a negatively tracking
    unit's sign and sign_in_fit are -1 (mutants: rank + 1, sign_in_fit of |weight|)."""
    from lmscale.transfer.classify import neuron_summary, ranked_units
    x, y = _signed_units()
    xv, yv = _signed_units(seed=1)
    fit = fit_l1(x, y, xv, yv, Cs=(0.1, 1.0))
    top = neuron_summary(fit, x, y, xv, yv, Cs=(0.1, 1.0))
    assert (top["index"], top["rank"], top["sign"], top["sign_in_fit"]) == (2, 0, -1, -1)
    order = ranked_units(fit, x, y)
    second = neuron_summary(fit, x, y, xv, yv, Cs=(0.1, 1.0), unit=int(order[1]))
    assert second["index"] == 0 and second["rank"] == 1 and second["sign"] == 1


def test_top_k_sweep_stops_below_the_feature_count():
    """k = 1, 2, ... below the feature count: the all-features fit is the last point of the
    curve, not refitted as k = F (a mutant ran k <= F)."""
    from lmscale.transfer.classify import top_k_sweep
    x, y = _signed_units()
    xv, yv = _signed_units(seed=1)
    fit = fit_l1(x, y, xv, yv, Cs=(0.1, 1.0))
    assert [r["k"] for r in top_k_sweep(fit, x, y, xv, yv, Cs=(0.1, 1.0))] == [1, 2]


def test_search_subsample_gives_the_largest_remainders_the_extra_rows():
    """Classes of 5, 3 and 2 rows, 5 drawn: quotas 2.5, 1.5, 1.0 -> 2, 1, 1 and the one row
    left to the largest remainder (the first of the tied 0.5s): 3, 1, 1."""
    from lmscale.transfer.classify import search_subsample
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    rows = search_subsample(y, 5)
    assert np.bincount(y[rows], minlength=3).tolist() == [3, 1, 1]


def test_openai_grid_is_utils_train_with_reg_cv():
    """OpenAI's utils.py searches C = 2^-8 ... 2^0."""
    from lmscale.transfer.classify import OPENAI_C_GRID
    assert OPENAI_C_GRID == tuple(2.0 ** k for k in range(-8, 1))


def test_fits_stopped_at_the_iteration_limit_are_one_note_naming_their_C(capfd):
    """liblinear cycles on some small bags of words (100 tweets, C=8: still at 3000
    iterations): scikit-learn's ConvergenceWarning, raw, advised more iterations, which no
    setting gives and which do not help; now one note names the Cs."""
    import csv
    import warnings

    from sklearn.feature_extraction.text import CountVectorizer

    from lmscale.transfer.classify import MAX_ITER
    from tests.conftest import shared_data
    with open(shared_data("semeval2018_ec", "train.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:100]
    x = CountVectorizer(ngram_range=(1, 2), binary=True).fit_transform([r["Tweet"] for r in rows])
    y = np.array([int(r["joy"]) for r in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning
        models = fit_many(x, [(y, C) for C in (1.0, 8.0)])
    assert [int(np.max(m.n_iter_)) >= MAX_ITER for m in models] == [False, True]
    assert capfd.readouterr().err == (
        "note: liblinear stopped at its 300-iteration limit in 1 of 2 L1 fits (C=8): such a fit "
        "may be a little off its optimum, and the search compares it on validation as it is\n")
