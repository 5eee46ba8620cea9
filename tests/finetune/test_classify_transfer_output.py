"""classify on a transfer output: single-label predictions equal transfer's val accuracy;
a multi-label transfer's per-label L1 models equal scikit-learn fitted directly at the chosen
C, its thresholds are tuned on val, and classify reproduces its metrics; --labels that are
not the classifier's are refused, naming both."""

from __future__ import annotations

import numpy as np
import pytest

from tests.finetune.conftest import EMOTIONS, run_tool


def test_classify_transfer_output(sst_run, data, tmp_path):
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.transfer.labeled import load_labeled
    from lmscale.transfer.run import run_transfer
    out = str(tmp_path / "transfer")
    r = run_transfer(sst_run, data["sst_train"], data["sst_val"], output=out, baseline="none",
                     Cs=(0.25, 1.0), examples=2)
    clf = load_classifier(out)
    val = load_labeled(data["sst_val"])
    _, pred = clf.predict(val.texts)
    assert np.mean(pred == val.labels) == pytest.approx(r["all_features"]["val_accuracy"])
    # Several label columns for this single-label classifier: said in classify's terms (it
    # advised finetune.multilabel, a field classify has not).
    p = run_tool("lmscale.classify", f"--workdir={out}", f"--input={data['sem_val']}",
                 "--text_column=Tweet", "--labels=anger,joy", f"--output={tmp_path}/p.csv",
                 ok=False)
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert ("2 label columns given (anger, joy); single-label needs one (the classifier is "
            "single-label, its classes 0, 1: give --labels its one column)") in p.stderr


def test_multilabel_transfer_per_label_models_and_classify(sst_run, data, tmp_path):
    """Per-label L1 models equal scikit-learn fitted directly at the chosen C; thresholds are
    tuned on val; the saved classifier (lmscale.classify) reproduces the val metrics."""
    from sklearn.preprocessing import StandardScaler
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.transfer.metrics import tune_thresholds
    from lmscale.training.restore import load_trained
    from lmscale.transfer.classify import l1_logistic_regression
    from lmscale.transfer.featurize import featurize
    from lmscale.transfer.labeled import load_labeled
    from lmscale.transfer.run import run_transfer
    out = str(tmp_path / "ml_transfer")
    r = run_transfer(sst_run, data["sem_train"], data["sem_val"], text_column="Tweet",
                     label_column=EMOTIONS, output=out, baseline="words", Cs=(0.25, 1.0))
    assert r["multilabel"] and r["labels"] == EMOTIONS.split(",")
    a = r["all_features"]
    assert set(a) >= {"train", "val", "C_per_label", "thresholds"} and "neuron" not in r
    assert 0 <= a["val"]["jaccard"] <= 1 and "baseline" in r and "val" in r["baseline"]
    train = load_labeled(data["sem_train"], text_column="Tweet", label_column=EMOTIONS)
    val = load_labeled(data["sem_val"], text_column="Tweet", label_column=EMOTIONS)
    lm = load_trained(sst_run)
    scaler = StandardScaler().fit(featurize(lm, train.texts))
    x_train, x_val = (scaler.transform(featurize(lm, d.texts)) for d in (train, val))
    probs = np.zeros((len(val), 11))
    for k, C in enumerate(a["C_per_label"]):
        if C is None:  # one value in train: the constant train rate
            probs[:, k] = np.clip(train.labels[:, k].mean(), 1e-6, 1 - 1e-6)
            continue
        model = l1_logistic_regression(C).fit(x_train, train.labels[:, k])
        probs[:, k] = model.predict_proba(x_val)[:, 1]
    np.testing.assert_allclose(a["thresholds"], tune_thresholds(probs, val.labels), atol=1e-6)
    clf = load_classifier(out)
    got, pred = clf.predict(val.texts)
    np.testing.assert_allclose(got, probs, atol=1e-5)
    from sklearn.metrics import f1_score
    assert f1_score(val.labels, pred, average="macro", zero_division=0) == pytest.approx(
        a["val"]["macro_f1"], abs=1e-6)
    # --labels of other classes, or of the same in another order: refused, naming both
    labels = EMOTIONS.split(",")
    for given in (labels[:2], [labels[1], labels[0], *labels[2:]]):
        p = run_tool("lmscale.classify", f"--workdir={out}", f"--input={data['sem_val']}",
                     "--text_column=Tweet", f"--labels={','.join(given)}",
                     f"--output={tmp_path / 'ml.csv'}", ok=False)
        assert p.stderr.strip() == (f"error: --labels names {given}; the classifier's classes "
                                    f"are {labels}"), p.stderr[-2000:]
    assert not (tmp_path / "ml.csv").exists()
    # The CLI prints every split of both models (the baseline's test was left out).
    p = run_tool("lmscale.transfer", f"--workdir={sst_run}", f"--train={data['sem_train']}",
                 f"--val={data['sem_val']}", f"--test={data['sem_val']}", "--text_column=Tweet",
                 f"--label_column={EMOTIONS}", f"--output={tmp_path / 'cli'}", "--C=0.25,1")
    shown = [line.split(":")[0] for line in p.stdout.splitlines()
             if "macro F1" in line and line.startswith(("all ", "baseline "))]
    assert len(shown) == 4 and [s.rsplit(", ", 1)[1] for s in shown] == ["val", "test"] * 2
    assert shown[2].startswith("baseline"), p.stdout
