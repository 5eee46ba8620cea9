"""The C search on a subsample of a large train set (``search_rows``): more rows than that are
searched on a stratified subsample and the chosen C refitted on all of them; a train set at or
below it gives the models of the search on every row, bit for bit (as before the option)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lmscale.data.errors import DataError
from lmscale.transfer import classify
from lmscale.transfer.classify import SEARCH_ROWS, fit_l1, search_subsample
from tests.transfer.conftest import write_labeled as _write
from tests.transfer.test_classify import PURE_L1, planted

CS = (2.0 ** -6, 2.0 ** -3, 0.5, 2.0)


def _by_hand(x, y, xv, yv, Cs=CS):
    """The search on every row, with scikit-learn called directly: {C: val accuracy}, the best
    C (ties: the smaller) and its model."""
    models = {C: LogisticRegression(C=C, solver="liblinear", random_state=0, max_iter=300,
                                    **PURE_L1).fit(x, y) for C in Cs}
    by_c = {C: m.score(xv, yv) for C, m in models.items()}
    best = max(sorted(Cs), key=lambda C: by_c[C])  # max keeps the first (smallest) of ties
    return by_c, best, models[best]


@pytest.mark.parametrize("n,search_rows", [(400, SEARCH_ROWS), (400, 400), (400, 0)])
def test_at_or_below_search_rows_the_search_is_on_every_row_as_before(n, search_rows):
    x, y = planted(n=n + 200, f=30)
    xtr, ytr, xva, yva = x[:n], y[:n], x[n:], y[n:]
    fit = fit_l1(xtr, ytr, xva, yva, Cs=CS, search_rows=search_rows)
    by_c, best, model = _by_hand(xtr, ytr, xva, yva)
    assert fit.val_accuracy_by_C == by_c and fit.C == best
    np.testing.assert_array_equal(fit.model.coef_, model.coef_)
    np.testing.assert_array_equal(fit.model.intercept_, model.intercept_)
    assert fit.val_accuracy == model.score(xva, yva)
    assert fit.summary()["search_rows"] == fit.summary()["train_rows"] == n
    assert not fit.subsampled


def test_above_search_rows_the_search_is_on_a_subsample_and_the_chosen_C_on_all(monkeypatch):
    x, y = planted(n=1800, f=30, unit=7)
    xtr, ytr, xva, yva = x[:1200], y[:1200], x[1200:1500], y[1200:1500]
    xte, yte = x[1500:], y[1500:]
    rows_fitted: list[tuple[int, float]] = []
    fit_one = classify._fit_one

    def counting(xs, ys, C, seed):
        rows_fitted.append((xs.shape[0], C))
        return fit_one(xs, ys, C, seed)

    monkeypatch.setattr(classify, "_fit_one", counting)
    fit = fit_l1(xtr, ytr, xva, yva, xte, yte, Cs=CS, search_rows=500, n_jobs=1)
    # Four C fits on 500 rows, then the chosen C once on all 1200.
    assert rows_fitted == [(500, C) for C in CS] + [(1200, fit.C)]
    rows = search_subsample(ytr, 500)
    by_c, best, _ = _by_hand(xtr[rows], ytr[rows], xva, yva)
    assert fit.val_accuracy_by_C == by_c and fit.C == best
    full = LogisticRegression(C=best, solver="liblinear", random_state=0, max_iter=300,
                              **PURE_L1).fit(xtr, ytr)
    np.testing.assert_array_equal(fit.model.coef_, full.coef_)
    assert fit.val_accuracy == full.score(xva, yva) and fit.test_accuracy == full.score(xte, yte)
    assert fit.train_accuracy == full.score(xtr, ytr)
    summary = fit.summary()
    assert summary["search_rows"] == 500 and summary["train_rows"] == 1200 and fit.subsampled
    # The neuron and the top-k sweep search the same way, and still find the planted unit.
    neuron = classify.neuron_summary(fit, xtr, ytr, xva, yva, Cs=CS, search_rows=500)
    assert neuron["index"] == 7 and neuron["search_rows"] == 500 and neuron["train_rows"] == 1200
    sweep = classify.top_k_sweep(fit, xtr, ytr, xva, yva, Cs=CS, search_rows=500, max_k=2)
    assert [(s["k"], s["search_rows"]) for s in sweep] == [(1, 500), (2, 500)]


def test_a_sparse_train_set_is_subsampled_too():
    """The n-gram baseline's features are a sparse matrix."""
    import scipy.sparse
    x, y = planted(n=900, f=20)
    x[np.abs(x) < 1.0] = 0
    xs = scipy.sparse.csr_matrix(x)
    fit = fit_l1(xs[:600], y[:600], xs[600:], y[600:], Cs=CS, search_rows=300)
    dense = fit_l1(x[:600], y[:600], x[600:], y[600:], Cs=CS, search_rows=300)
    assert fit.search_rows == 300 and fit.C == dense.C
    assert fit.val_accuracy_by_C == dense.val_accuracy_by_C


def test_the_subsample_is_stratified_sorted_and_seeded():
    y = np.array([1] * 950 + [0] * 50)
    np.random.default_rng(0).shuffle(y)
    rows = search_subsample(y, 100)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)  # sorted, no repeats
    assert np.sum(y[rows] == 0) == 5 and np.sum(y[rows] == 1) == 95
    np.testing.assert_array_equal(rows, search_subsample(y, 100))
    assert not np.array_equal(rows, search_subsample(y, 100, seed=1))
    rare = np.array([0] * 999 + [1])  # a class of one row still gets it
    assert 999 in search_subsample(rare, 10) and len(search_subsample(rare, 10)) == 10
    assert search_subsample(y, 0) is None and search_subsample(y, 1000) is None
    with pytest.raises(DataError, match="search_rows must be >= 0"):
        search_subsample(y, -1)
    with pytest.raises(DataError, match="cannot hold one row of each"):
        search_subsample(y, 1)


def test_the_transfer_says_its_search_used_a_subsample(tmp_path, capsys):
    from lmscale.transfer.run import run_transfer
    from tests.transfer.conftest import random_lm
    words = ["good", "bad", "fine", "dull", "great", "awful"]
    train = _write(tmp_path / "train.csv", [(f"a {words[i % 6]} film, number {i} here", i % 2)
                                            for i in range(40)])
    val = _write(tmp_path / "val.csv", [(f"a {words[i % 6]} one, {i}", i % 2) for i in range(12)])
    out = tmp_path / "out"
    r = run_transfer(str(tmp_path), train, val, lm=random_lm(), output=str(out), baseline="words",
                     Cs=[0.5, 1.0], examples=2, stages=True, search_rows=20, features_dir="")
    assert "C searched on a stratified subsample of 20 texts, the chosen C refitted on all 40" \
        in capsys.readouterr().err
    for part in (r["all_features"], r["baseline"], r["top_k"][0]):
        assert part["search_rows"] == 20 and part["train_rows"] == 40
    assert json.loads((out / "results.json").read_text())["all_features"]["search_rows"] == 20
    with pytest.raises(DataError, match="search_rows must be >= 0"):
        run_transfer(str(tmp_path), train, val, lm=random_lm(), output=str(out), search_rows=-1)



def test_multilabel_searches_on_a_subsample_and_refits_each_labels_C_on_all():
    from lmscale.transfer.multilabel import fit_l1_multilabel, search_subsample_multilabel
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 12)).astype(np.float32)
    y = np.stack([(x[:, 0] > 0), (x[:, 1] + 0.5 * x[:, 2] > 0.3), np.zeros(1500, bool)], 1)
    y = y.astype(np.int64)
    y[7, 2] = 1  # a label with one positive among 1500: the subsample must hold it
    xtr, ytr, xva, yva = x[:1200], y[:1200], x[1200:], y[1200:]
    rows = search_subsample_multilabel(ytr, 300)
    assert 300 <= len(rows) <= 302 and 7 in rows and np.all(np.diff(rows) > 0)
    assert search_subsample_multilabel(ytr, 0) is None and search_subsample_multilabel(ytr, 1200) is None
    names = ["a", "b", "rare"]
    fit = fit_l1_multilabel(xtr, ytr, xva, yva, class_names=names, Cs=CS, search_rows=300, n_jobs=1)
    assert fit.summary()["search_rows"] == len(rows) and fit.summary()["train_rows"] == 1200
    for j, C in enumerate(fit.Cs):
        full = LogisticRegression(C=C, solver="liblinear", random_state=0, max_iter=300,
                                  **PURE_L1).fit(xtr, ytr[:, j])
        np.testing.assert_array_equal(fit.coef[j], full.coef_[0])
        assert fit.intercept[j] == full.intercept_[0]
    # At or below search_rows: every row, the same fit as with no limit.
    small = fit_l1_multilabel(xtr, ytr, xva, yva, class_names=names, Cs=CS, search_rows=1200, n_jobs=1)
    whole = fit_l1_multilabel(xtr, ytr, xva, yva, class_names=names, Cs=CS, search_rows=0, n_jobs=1)
    np.testing.assert_array_equal(small.coef, whole.coef)
    assert small.Cs == whole.Cs and small.summary()["search_rows"] == 1200


def test_a_search_subsample_too_small_for_both_classes_is_refused_before_featurizing(tmp_path):
    """search_rows=1 was refused only after the train and val texts were featurized."""
    from lmscale.data.errors import DataError
    from lmscale.transfer.run import run_transfer
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\ngood,1\nbad,0\nfine,1\n")
    with pytest.raises(DataError, match="search_rows=1 cannot hold one row of each of the 2 classes"):
        run_transfer(str(tmp_path / "no_lm_here"), str(path), str(path), search_rows=1)


def test_after_a_subsampled_search_the_accuracies_are_the_refitted_models():
    """The chosen C refitted on every row: its val accuracy is that model's, not the subsample
    model's of the search (the one recorded in ``val_accuracy_by_C``)."""
    x, y = planted(n=900, f=30, unit=7, seed=3)
    xtr, ytr, xva, yva = x[:600], y[:600], x[600:], y[600:]
    fit = fit_l1(xtr, ytr, xva, yva, Cs=(2.0 ** -6,), search_rows=20, n_jobs=1)
    assert fit.subsampled
    assert fit.val_accuracy == fit.model.score(xva, yva)
    assert fit.val_accuracy != fit.val_accuracy_by_C[2.0 ** -6]  # the two models differ here
