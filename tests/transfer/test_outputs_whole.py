"""A transfer that fails while writing (a full disk, a path it cannot replace) leaves no
results.json describing another classifier than the one saved, and no classifier pair of two
fits."""

from __future__ import annotations

import json

import pytest

from tests.transfer.conftest import random_lm, write_labeled


def test_a_transfer_failing_at_its_plots_leaves_no_results_of_another_fit(tmp_path):
    """A full disk at the heatmap left the new classifier.json/npz (C, pooling of the new run)
    beside the old results.json: classify used a classifier results.json did not describe."""
    from lmscale.transfer.run import run_transfer
    words = ["good", "bad", "fine", "dull", "great", "awful"]
    train = write_labeled(tmp_path / "train.csv", [(f"a {words[i % 6]} film {i}", i % 2)
                                                   for i in range(40)])
    val = write_labeled(tmp_path / "val.csv", [(f"a {words[i % 6]} one {i}", i % 2) for i in range(12)])
    out = tmp_path / "out"
    kw = dict(lm=random_lm(), output=str(out), baseline="none", Cs=[1.0], examples=2,
              features_dir="")
    run_transfer(str(tmp_path), train, val, pooling="last", **kw)
    first = (out / "classifier.json").read_text()
    assert json.loads((out / "results.json").read_text())["features"]["pooling"] == "last"
    (out / "neuron_histogram.png").unlink()
    (out / "neuron_histogram.png").mkdir()  # the first plot cannot be replaced: fails there
    with pytest.raises(OSError):
        run_transfer(str(tmp_path), train, val, pooling="mean", **kw)
    assert not (out / "results.json").exists()  # it described the run before
    assert (out / "classifier.json").read_text() == first  # the whole pair of the last whole run
    (out / "neuron_histogram.png").rmdir()
    run_transfer(str(tmp_path), train, val, pooling="mean", **kw)
    assert json.loads((out / "results.json").read_text())["features"]["pooling"] == "mean"
    assert json.loads((out / "classifier.json").read_text())["pooling"] == "mean"


def test_a_classifier_pair_is_replaced_json_last(tmp_path):
    """classifier.npz then classifier.json: a failure between them left the new npz read with
    the old json's settings; the old json is gone before the npz is replaced."""
    import numpy as np
    from sklearn.preprocessing import StandardScaler
    from lmscale.transfer.classify import save_transfer_classifier
    scaler = StandardScaler().fit(np.random.default_rng(0).normal(size=(10, 3)))
    save_transfer_classifier(str(tmp_path), np.ones((1, 3)), np.zeros(1), scaler, [0, 1], {"C": 1.0})
    (tmp_path / "classifier.npz").unlink()
    (tmp_path / "classifier.npz").mkdir()  # the npz cannot be replaced
    with pytest.raises(OSError):
        save_transfer_classifier(str(tmp_path), np.ones((1, 3)), np.zeros(1), scaler, [0, 1],
                                 {"C": 2.0})
    assert not (tmp_path / "classifier.json").exists()
