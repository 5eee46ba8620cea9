"""Labels given as class names ("negative", "positive": IMDB's CSV, many others) rather than
ids: numbered by their sorted names in the training texts, the same in val/test, kept as
the classifier's class names, and read back by classify. Refused: a name the training texts
do not have, names and ids mixed, names in a multi-label column, a text column as labels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.labeled import MAX_CLASS_NAMES, index_classes, load_labeled
from tests.conftest import shared_data


def _csv(path, rows, header=("sentence", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_names_are_numbered_by_the_training_texts_sorted_names(tmp_path):
    train = load_labeled(_csv(tmp_path / "t.csv", [("a", "positive"), ("b", "negative"),
                                                   ("c", " positive ")]))
    val = load_labeled(_csv(tmp_path / "v.csv", [("d", "negative")]))
    assert train.labels.tolist() == ["positive", "negative", "positive"]
    assert index_classes({"train": train, "val": val}) == ["negative", "positive"]
    assert train.labels.tolist() == [1, 0, 1] and val.labels.tolist() == [0]
    assert train.labels.dtype == np.int64
    ids = load_labeled(_csv(tmp_path / "i.csv", [("a", "1"), ("b", "0")]))
    assert index_classes({"train": ids}) is None and ids.labels.tolist() == [1, 0]
    named = load_labeled(_csv(tmp_path / "u.csv", [("a", "1_0")]))  # not 10: a name
    assert named.labels.tolist() == ["1_0"]


def test_what_cannot_be_classes_is_refused_naming_it(tmp_path):
    train = load_labeled(_csv(tmp_path / "t.csv", [("a", "pos"), ("b", "neg")]))
    val = load_labeled(_csv(tmp_path / "v.csv", [("c", "neutral")]))
    with pytest.raises(DataError, match=r"v.csv: class 'neutral' is not one of the classes "
                                        r"\['neg', 'pos'\] \(those of the training texts\)"):
        index_classes({"train": train, "val": val})
    with pytest.raises(DataError, match=r"m.csv:3: label column 'label' is 'pos', a class "
                                        r"name, and 1 of 2 rows hold class ids \(e.g. 1\)"):
        load_labeled(_csv(tmp_path / "m.csv", [("a", "1"), ("b", "pos")]))
    with pytest.raises(DataError, match="label column 'joy' has 'yes'; multi-label columns "
                                        "must be 0 or 1"):
        load_labeled(_csv(tmp_path / "ml.csv", [("a", "1", "yes")], ("sentence", "anger", "joy")),
                     label_column="anger,joy")
    texts = [(f"t{i}", f"review number {i}") for i in range(MAX_CLASS_NAMES + 1)]
    with pytest.raises(DataError, match=f"has {MAX_CLASS_NAMES + 1} distinct values that are "
                                        f"no numbers in {MAX_CLASS_NAMES + 1} rows .*a text column"):
        load_labeled(_csv(tmp_path / "x.csv", texts))
    few = [(f"t{i}", f"review number {i}") for i in range(12)]  # each row a class of its own
    with pytest.raises(DataError, match="has 12 distinct values that are no numbers in 12 rows"):
        load_labeled(_csv(tmp_path / "y.csv", few))
    with pytest.raises(DataError, match="label 'label' is empty"):
        load_labeled(_csv(tmp_path / "e.csv", [("a", " ")]))
    ids = load_labeled(_csv(tmp_path / "i.csv", [("a", "0")]))
    train = load_labeled(str(tmp_path / "t.csv"))  # names again (indexed in place above)
    with pytest.raises(DataError, match="labels its classes by name and .*i.csv by id"):
        index_classes({"train": train, "val": ids})


def test_transfer_fine_tune_and_classify_on_named_classes(sst_run, tmp_path):
    """SST with its 0/1 written as negative/positive: the transfer's accuracies equal those
    of the ids, its classifier and classify name the classes; a fine-tune's classes are the
    names."""
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.transfer.run import run_transfer
    sst = shared_data("sst_binary")
    words = {"0": "negative", "1": "positive"}
    paths = {}
    for split, rows in (("train", 300), ("val", 120)):
        with open(sst / f"{split}.csv") as f:
            data = list(csv.DictReader(f))[:rows]
        paths[split, "ids"] = _csv(tmp_path / f"{split}_ids.csv",
                                   [(r["sentence"], r["label"]) for r in data])
        paths[split, "names"] = _csv(tmp_path / f"{split}_names.csv",
                                     [(r["sentence"], words[r["label"]]) for r in data])
    kw = dict(baseline="none", Cs=[0.125, 1.0])
    by_id = run_transfer(sst_run, paths["train", "ids"], paths["val", "ids"],
                         output=str(tmp_path / "ids"), **kw)
    by_name = run_transfer(sst_run, paths["train", "names"], paths["val", "names"],
                           output=str(tmp_path / "names"), **kw)
    assert by_name["classes"] == ["negative", "positive"]
    assert by_name["all_features"]["val_accuracy"] == by_id["all_features"]["val_accuracy"]
    clf = load_classifier(str(tmp_path / "names"))
    assert clf.class_names == ["negative", "positive"]
    import subprocess
    import sys

    from tests.conftest import REPO
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "lmscale.classify",
                           f"--workdir={tmp_path / 'names'}", f"--input={paths['val', 'names']}",
                           f"--output={out}", "--labels=label", "--text_column=sentence"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(open(str(out) + ".metrics.json").read())
    assert metrics["accuracy"] == pytest.approx(by_name["all_features"]["val_accuracy"], abs=1e-9)
    assert "p_negative" in out.read_text().splitlines()[0]

    from lmscale.finetuning.loop import finetune
    from tests.finetune.conftest import ft_config
    ft = str(tmp_path / "ft")
    finetune(ft_config(sst_run, paths["train", "names"], paths["val", "names"],
                       **{"train.steps": 2, "train.eval_every": 2, "checkpoint.every": 2}), ft)
    derived = json.load(open(f"{ft}/config.json"))["derived"]
    assert derived["class_names"] == ["negative", "positive"] and derived["num_classes"] == 2


def test_splits_naming_the_same_ids_otherwise_are_refused():
    """A data set's declared class names (a TFDS ClassLabel's) name the ids; a val split
    declaring other names for them is refused, one declaring none takes train's."""
    from lmscale.transfer.labeled import Labeled
    ids = np.array([0, 1, 1])
    split = lambda names, source: Labeled(["a", "b", "c"], ids.copy(), source, ["label"], names)
    assert index_classes({"train": split(["neg", "pos"], "t"), "val": split(None, "v")}) == ["neg", "pos"]
    with pytest.raises(DataError, match=r"^v names its classes \['pos', 'neg'\], t \['neg', 'pos'\]: "
                                        r"the same ids must name the same classes"):
        index_classes({"train": split(["neg", "pos"], "t"), "val": split(["pos", "neg"], "v")})
    assert index_classes({"train": split(["neg", "pos"], "t")}, known=["0", "1"]) is None
