"""Only the train split needs both classes: a val or test file of one class (only positive
reviews to score, a small val) was refused ("binary classification needs exactly two
classes"), though its accuracy is well defined."""

from __future__ import annotations

import json

import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.run import run_transfer
from tests.transfer.conftest import random_lm, write_labeled as _write


def test_val_and_test_of_one_class_are_scored(tmp_path):
    lm = random_lm()
    train = _write(tmp_path / "train.csv", [(f"a {'good' if i % 2 else 'bad'} film, the "
                                             f"number {i} of a long list here", i % 2)
                                            for i in range(12)])
    val = _write(tmp_path / "val.csv", [("a good film, the one of a long list here", 1),
                                        ("a good film, the two of a long list here", 1)])
    test = _write(tmp_path / "test.csv", [(f"a bad film, the number {i} of a long list", 0)
                                          for i in range(3)])
    out = tmp_path / "out"
    results = run_transfer(str(tmp_path), train, val, test, lm=lm, output=str(out),
                           baseline="words", Cs=[0.5, 1.0], examples=2)
    assert results["data"]["val"]["positive_fraction"] == 1.0
    assert results["data"]["test"]["positive_fraction"] == 0.0
    for acc in (results["all_features"]["val_accuracy"], results["all_features"]["test_accuracy"],
                results["neuron"]["test_accuracy"], results["baseline"]["test_accuracy"]):
        assert 0.0 <= acc <= 1.0
    assert json.loads((out / "results.json").read_text())["neuron"] == results["neuron"]
    assert (out / "neuron_histogram.png").exists() and (out / "neuron_heatmap.html").exists()


def test_train_still_needs_both_classes_and_other_labels_are_refused(tmp_path):
    lm = random_lm()
    both = _write(tmp_path / "both.csv", [("good", 1), ("bad", 0)])
    one = _write(tmp_path / "one.csv", [("good", 1), ("fine", 1)])
    with pytest.raises(DataError, match=r"one.csv: label column 'label' has values \[1\]; "
                                        "binary classification needs exactly two classes"):
        run_transfer(str(tmp_path), one, both, lm=lm, baseline="none", Cs=[1.0])
    two = _write(tmp_path / "two.csv", [("good", 1), ("odd", 2)])
    with pytest.raises(DataError, match=r"two.csv: label column 'label' has values \[2\] "
                                        r"outside the classes 0..1"):
        run_transfer(str(tmp_path), both, both, two, lm=lm, baseline="none", Cs=[1.0])
