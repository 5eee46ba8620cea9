"""A label column that is one value in every training text (e.g. an emotion no train tweet has)."""

import numpy as np

from lmscale.transfer.metrics import predict_labels


def test_label_never_positive_in_train_is_not_predicted_for_every_text():
    from lmscale.transfer.multilabel import fit_l1_multilabel
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 4))
    y = np.stack([(x[:, 0] > 0), (x[:, 1] > 0), np.zeros(160, bool)], 1).astype(np.int64)
    y[100:, 2] = rng.random(60) < 0.2  # positives in val only
    fit = fit_l1_multilabel(x[:100], y[:100], x[100:], y[100:], class_names=["a", "b", "c"],
                            Cs=[1.0], n_jobs=1)
    assert fit.Cs[2] is None  # constant: the train rate
    pred = predict_labels(fit.probs(x[100:]), True, fit.thresholds)
    assert pred[:, 2].sum() == 0  # its train value (0), not "every text" tuned from val's rate
    assert pred[:, :2].sum() > 0


def test_label_always_positive_in_train_is_predicted_for_every_text():
    from lmscale.transfer.multilabel import fit_l1_multilabel
    rng = np.random.default_rng(1)
    x = rng.normal(size=(160, 4))
    y = np.stack([(x[:, 0] > 0), np.ones(160, bool)], 1).astype(np.int64)
    y[100:, 1] = rng.random(60) < 0.5
    fit = fit_l1_multilabel(x[:100], y[:100], x[100:], y[100:], class_names=["a", "b"],
                            Cs=[1.0], n_jobs=1, threshold_metric="jaccard")
    pred = predict_labels(fit.probs(x[100:]), True, fit.thresholds)
    assert pred[:, 1].all()


def test_the_jaccard_ascent_leaves_a_fixed_label_at_one_half():
    """tune_thresholds' ``fixed``: kept at 0.5 through the F1 pass and the ascent, which
    otherwise moved the constant label's threshold below its constant (every text)."""
    from lmscale.transfer.metrics import tune_thresholds
    rng = np.random.default_rng(2)
    probs = np.column_stack([rng.random(50), np.full(50, 1e-6)])
    labels = np.column_stack([probs[:, 0] > 0.6, rng.random(50) < 0.5]).astype(int)
    for metric in ("f1", "jaccard", "micro_f1"):
        free = tune_thresholds(probs, labels, metric)
        assert free[1] < 1e-6  # tuned on val's rate: every text
        held = tune_thresholds(probs, labels, metric, fixed=[1])
        assert held[1] == 0.5 and 0 < held[0] < 1


def test_a_transfer_says_which_label_is_constant_and_keeps_its_train_value(tmp_path, capfd):
    import json

    from lmscale.transfer.run import run_transfer
    from tests.transfer.conftest import random_lm
    rows = [(f"text {i} " + "good " * (i % 3) + "bad " * (i % 2), i % 2, int(i % 3 == 0), 0)
            for i in range(24)]

    def write(path, rows):
        import csv
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("sentence", "a", "b", "c"), *rows])
        return str(path)
    train = write(tmp_path / "train.csv", rows)
    val = write(tmp_path / "val.csv", [(t, a, b, 1 - i % 2) for i, (t, a, b, _) in enumerate(rows)])
    r = run_transfer(str(tmp_path), train, val, lm=random_lm(), label_column="a,b,c",
                     output=str(tmp_path / "out"), baseline="none", Cs=[1.0])
    err = capfd.readouterr().err
    assert f"note: {train}: label column 'c' is 0 in every text: it is predicted for no text" in err
    assert r["all_features"]["thresholds"][2] == 0.5
    saved = json.load(open(tmp_path / "out" / "classifier.json"))
    assert saved["thresholds"][2] == 0.5
