"""OpenAI's transfer recipe (utils.py's train_with_reg_cv: L1 logistic regression on raw
features over C = 2^-8 ... 2^0) with ``standardize=False``, and an imported model's recorded
sentiment unit reported beside the one the fit finds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from lmscale.finetuning.classifier import load_classifier
from lmscale.transfer.classify import OPENAI_C_GRID, l1_logistic_regression
from lmscale.transfer.featurize import featurize
from lmscale.transfer.labeled import load_labeled
from lmscale.training.restore import load_trained
from lmscale.transfer.run import run_transfer
from tests.conftest import shared_data
from tests.transfer.conftest import random_lm


def _sst(tmp_path, rows: int) -> tuple[str, str, str]:
    """The first ``rows`` rows of each SST split, as CSVs."""
    sst = shared_data("sst_binary")
    paths = []
    for name, n in (("train", rows), ("val", rows // 2), ("test", rows // 2)):
        lines = open(f"{sst}/{name}.csv", encoding="utf-8").read().splitlines()[: n + 1]
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(str(path))
    return tuple(paths)


def test_raw_features_fit_as_openais_utils_and_the_recorded_unit_is_reported(sst_run, tmp_path):
    assert OPENAI_C_GRID == tuple(2.0 ** np.arange(-8, 1))  # utils.py's train_with_reg_cv
    train, val, test = _sst(tmp_path, 1000)
    lm = load_trained(sst_run)  # as an import of OpenAI's model records its unit
    lm = dataclasses.replace(lm, derived={**lm.derived, "pretrained": {"sentiment_unit": 3}})
    out = tmp_path / "out"
    Cs = (16.0, 64.0, 256.0)  # above OpenAI's grid: this 20-step LM's raw units need weak L1
    results = run_transfer(sst_run, train, val, test, lm=lm, output=str(out), baseline="none",
                           Cs=Cs, examples=1, standardize=False, features_dir="")
    assert results["features"]["standardized"] is False
    assert json.loads((out / "results.json").read_text())["recorded_unit"] == results["recorded_unit"]
    from lmscale.training.restore import weights_fingerprint  # which LM: its weights too
    assert results["lm"]["weights"] == weights_fingerprint(lm) and results["lm"]["step"] == lm.step
    assert results["plots"]["split"] == "test"  # whose texts the histogram and heatmap show
    # OpenAI's utils.py from the same raw features: one fit per C, the best on val (ties: the
    # smaller C, its argmax over an ascending grid), that model's test accuracy
    split = {"train": train, "val": val, "test": test}
    x = {n: featurize(lm, load_labeled(p).texts) for n, p in split.items()}
    y = {n: load_labeled(p).labels for n, p in split.items()}
    scores = [l1_logistic_regression(C).fit(x["train"], y["train"]).score(x["val"], y["val"])
              for C in Cs]
    best = Cs[int(np.argmax(scores))]
    model = l1_logistic_regression(best).fit(x["train"], y["train"])
    fit = results["all_features"]
    assert fit["C"] == best and fit["nonzero_weights"] == np.count_nonzero(model.coef_) > 0
    assert fit["test_accuracy"] == model.score(x["test"], y["test"])
    # the saved classifier reads raw features: mean 0, scale 1, the same predictions
    saved = np.load(out / "classifier.npz")
    assert not saved["mean"].any() and (saved["scale"] == 1).all()
    np.testing.assert_allclose(saved["coef"], model.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(load_classifier(str(out)).predict(load_labeled(test).texts)[1],
                                  model.predict(x["test"]))
    # the recorded unit: its rank by |weight| in this fit, and a classifier on it alone
    unit = results["recorded_unit"]
    assert unit["index"] == 3 != results["neuron"]["index"]
    order = np.argsort(-np.abs(model.coef_[0]), kind="stable")
    assert unit["rank"] == int(np.flatnonzero(order == 3)[0]) > 0
    alone = [l1_logistic_regression(C).fit(x["train"][:, [3]], y["train"]) for C in Cs]
    pick = alone[int(np.argmax([m.score(x["val"][:, [3]], y["val"]) for m in alone]))]
    assert unit["test_accuracy"] == pick.score(x["test"][:, [3]], y["test"])


def test_standardized_by_default_and_no_recorded_unit_without_one(tmp_path):
    train, val, _ = _sst(tmp_path, 80)
    results = run_transfer(str(tmp_path), train, val, lm=random_lm(hidden=16),
                           output=str(tmp_path / "out"), baseline="none", Cs=[0.5], examples=1,
                           features_dir="")
    assert results["features"]["standardized"] is True and "recorded_unit" not in results
    saved = np.load(tmp_path / "out" / "classifier.npz")
    assert saved["mean"].any() and not (saved["scale"] == 1).all()


def test_a_multi_label_transfer_fits_raw_features_too(tmp_path):
    sem = shared_data("semeval2018_ec")
    for name in ("train", "val"):
        lines = open(f"{sem}/{name}.csv", encoding="utf-8").read().splitlines()[:121]
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = run_transfer(str(tmp_path), str(tmp_path / "train.csv"), str(tmp_path / "val.csv"),
                           lm=random_lm(hidden=16), output=str(tmp_path / "out"),
                           text_column="Tweet", label_column="anger,joy", baseline="none",
                           Cs=[1.0], features_dir="", standardize=False)
    assert results["features"]["standardized"] is False
    saved = np.load(tmp_path / "out" / "classifier.npz")
    assert saved["coef"].shape == (2, 16) and not saved["mean"].any() and (saved["scale"] == 1).all()
