"""tfds:NAME/SPLIT read for real (the optional extra installed): small TFDS data sets built in
a temporary TFDS_DATA_DIR, nothing downloaded. prepare (the library and the CLI) and
transfer's labeled reading; their counts, labels and text; one-line errors for a data set,
config, version or split that is not there, an empty slice and features of the wrong kind."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lmscale.data.errors import DataError  # noqa: E402
from lmscale.data.prepare import prepare_dataset  # noqa: E402
from lmscale.transfer.labeled import load_labeled  # noqa: E402

from tests.data.helpers import read_stream  # noqa: E402

TEXTS = [f"document {i} héllo ✓ 日本語 🙂" for i in range(20)]
LABELED = [(f"good movie {i}" if i % 2 else f"bad film {i}", i % 2) for i in range(16)]


class LmscaleTfdsText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A corpus: text, a title, and features that are not text (a number, a vector, a list)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "title": tfds.features.Text(), "n": np.int64,
            "vec": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "tokens": tfds.features.Sequence(tfds.features.Text())}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TEXTS),
                "test": self._generate_examples(TEXTS[:6])}

    def _generate_examples(self, texts):
        for i, t in enumerate(texts):
            yield i, {"text": t, "title": f"title {i}", "n": i, "vec": np.zeros(3, np.float32),
                      "tokens": t.split()[:2]}


class LmscaleTfdsLabeled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """sst2-like: a sentence, a ClassLabel, two 0/1 features, a float and a list of classes."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="sst"), tfds.core.BuilderConfig(name="imdb")]

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["negative", "positive"]),
            "idx": np.int32, "score": np.float32, "pos": np.int64, "neg": np.int64,
            "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=["a", "b", "c"]))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(LABELED),
                "test": self._generate_examples(LABELED[:8])}

    def _generate_examples(self, rows):
        for i, (t, y) in enumerate(rows):
            yield i, {"sentence": t, "label": y, "idx": i, "score": 0.5 + i, "pos": y,
                      "neg": 1 - y, "tags": [i % 3]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    formats = [("array_record", "data_ar")]  # written and read without TensorFlow
    if importlib.util.find_spec("tensorflow") is not None:  # TFRecord files are written with
        formats.append(("tfrecord", "data"))  # it (the tfds extra alone: ArrayRecord tests run)
    for file_format, sub in formats:
        kw = dict(data_dir=str(root / sub), file_format=file_format)
        for builder in (LmscaleTfdsText(**kw), LmscaleTfdsLabeled(config="sst", **kw),
                        LmscaleTfdsLabeled(config="imdb", **kw)):
            builder.download_and_prepare()
    return root


def use_data_dir(monkeypatch, path) -> None:
    """TFDS_DATA_DIR for subprocesses; in this one TFDS read it at import (constants.DATA_DIR)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(path))
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(path))


@pytest.fixture
def tfds_dir(data_dir, monkeypatch):
    use_data_dir(monkeypatch, data_dir / "data")
    return data_dir / "data"


def documents(path) -> list[str]:
    tokens, starts = read_stream(path)
    text = (tokens.astype(np.int64) - 1).astype(np.uint8).tobytes()  # sentiment_discovery: byte + 1
    ends = [*starts[1:], len(tokens)]
    return [text[s:e].decode("utf-8") for s, e in zip(starts, ends)]


@pytest.mark.parametrize("store", ["data", "data_ar"])  # tf.data, and a data source without it
def test_prepare_reads_every_document_whole(data_dir, tmp_path, monkeypatch, store):
    if store == "data":
        pytest.importorskip("tensorflow")
    use_data_dir(monkeypatch, data_dir / store)
    out = prepare_dataset("tfds:lmscale_tfds_text/train", str(tmp_path / "out"), text_field="text",
                          split=(8, 1, 1), progress=False)
    assert sorted(documents(out)) == sorted(TEXTS)


def test_prepare_config_version_slices_and_other_fields(tfds_dir, tmp_path):
    pytest.importorskip("tensorflow")
    out = prepare_dataset("tfds:lmscale_tfds_labeled/imdb:1.0.0/train[:50%]+test[-2:]",
                          str(tmp_path / "a"), text_field="sentence", split=(1, 0, 0), progress=False)
    docs = documents(out)  # slices of TFDS's stored order (shuffled at generation): 8 + 2
    assert len(docs) == 10 and set(docs) <= {t for t, _ in LABELED} and len(set(docs[:8])) == 8
    out = prepare_dataset("tfds:lmscale_tfds_text/test", str(tmp_path / "b"), text_field="title",
                          split=(1, 0, 0), progress=False)
    assert sorted(documents(out)) == sorted(f"title {i}" for i in range(6))


@pytest.mark.parametrize("spec, field, message", [
    ("tfds:lmscale_nope/train", "text",
     r"tfds:lmscale_nope/train: TensorFlow Datasets has no data set 'lmscale_nope' \(not in its catalog"),
    ("tfds:lmscale_tfds_labeled/zzz/train", "sentence",
     r"no data set 'lmscale_tfds_labeled/zzz' .*lmscale_tfds_labeled holds imdb, sst"),
    ("tfds:lmscale_tfds_text:2.0.0/train", "text", r"no data set 'lmscale_tfds_text:2.0.0' .* holds 1\.0\.0"),
    ("tfds:lmscale_tfds_text/validation", "text",
     r"tfds:lmscale_tfds_text/validation: unknown split 'validation'; the splits are test, train"),
    ("tfds:lmscale_tfds_text/train[:abc]", "text", r"bad split 'train\[:abc\]'"),
    ("tfds:lmscale_tfds_text/train[20:]", "text",
     r"split 'train\[20:\]' has no examples \(the splits are test \(6\), train \(20\)\)"),
    ("tfds:lmscale_tfds_text/train", "body", r"no feature 'body'; features are \['n', 'text'"),
    ("tfds:lmscale_tfds_text/train", "n", r"feature 'n' is a int, not text"),
    ("tfds:lmscale_tfds_text/train", "tokens", r"feature 'tokens' is a ndarray, not text"),
])
def test_prepare_errors_name_the_data_set_split_and_feature(tfds_dir, tmp_path, spec, field, message):
    pytest.importorskip("tensorflow")
    with pytest.raises(DataError, match=message):
        prepare_dataset(spec, str(tmp_path / "out"), text_field=field, split=(8, 1, 1), progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_cli(tfds_dir, tmp_path):
    pytest.importorskip("tensorflow")
    run = lambda *args: subprocess.run([sys.executable, "-m", "lmscale.prepare", *args],
                                       capture_output=True, text=True, timeout=120,
                                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    ok = run("--input=tfds:lmscale_tfds_text/train", "--split=8,1,1", f"--output={tmp_path / 'ok'}")
    assert ok.returncode == 0, ok.stderr
    assert "20 documents from 1 TFDS split into" in ok.stdout  # was "from 1 file"
    assert sorted(documents(tmp_path / "ok")) == sorted(TEXTS)
    bad = run("--input=tfds:lmscale_tfds_text/train", "--val=tfds:lmscale_tfds_text/validation",
              f"--output={tmp_path / 'bad'}")
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: tfds:lmscale_tfds_text/validation: unknown split 'validation'; the "
                      "splits are test, train (slices: train[:10%], train[100:200], train+test)"]


@pytest.mark.parametrize("store", ["data", "data_ar"])
def test_labeled_texts_and_labels(data_dir, monkeypatch, store):
    if store == "data":
        pytest.importorskip("tensorflow")
    use_data_dir(monkeypatch, data_dir / store)
    want = dict(LABELED)
    data = load_labeled("tfds:lmscale_tfds_labeled/sst/train")
    assert sorted(data.texts) == sorted(want) and data.labels.dtype == np.int64
    assert [want[t] for t in data.texts] == data.labels.tolist()
    several = load_labeled("tfds:lmscale_tfds_labeled/imdb:1.0.0/test[:50%]", label_column="pos,neg")
    assert len(several) == 4 and several.labels.shape == (4, 2)
    assert [[want[t], 1 - want[t]] for t in several.texts] == several.labels.tolist()


@pytest.mark.parametrize("kw, message", [
    (dict(label_column="score"), r"tfds:lmscale_tfds_labeled/sst/train: row 1: label 'score' is "
                                 r"\d+\.5, not an integer class"),
    (dict(label_column="sentence"), r"label column 'sentence' has 16 distinct values that are "
                                    r"no numbers in 16 rows .*a text column"),
    (dict(label_column="tags"), r"label 'tags' is an array of shape \(1,\), not one class id"),
    (dict(text_column="idx"), r"tfds:lmscale_tfds_labeled/sst/train: feature 'idx' is a int, not text"),
    (dict(text_column="tags"), r"feature 'tags' is a ndarray, not text"),
    (dict(text_column="text"), r"no feature 'text'; features are \['idx', 'label'"),
])
def test_labeled_features_of_the_wrong_kind_are_one_line_errors(tfds_dir, kw, message):
    pytest.importorskip("tensorflow")
    with pytest.raises(DataError, match=message):
        load_labeled("tfds:lmscale_tfds_labeled/sst/train", **kw)


@pytest.mark.parametrize("store", ["data", "data_ar"])
def test_a_class_labels_names_name_the_classes(data_dir, monkeypatch, store):
    """sst2's label is ClassLabel(names=["negative", "positive"]): fine-tuning and the transfer
    named its classes 0 and 1 (and counted them from the largest training label)."""
    if store == "data":
        pytest.importorskip("tensorflow")
    use_data_dir(monkeypatch, data_dir / store)
    from lmscale.config import default_config
    from lmscale.finetuning.data import load_splits
    from lmscale.transfer.labeled import index_classes
    ft = default_config().finetune
    ft.train, ft.val = "tfds:lmscale_tfds_labeled/sst/train", "tfds:lmscale_tfds_labeled/sst/test"
    ft.text_column, ft.label_column = "sentence", "label"
    splits, k, names = load_splits(ft)
    assert (k, names) == (2, ["negative", "positive"])
    assert [dict(LABELED)[t] for t in splits["train"].texts] == splits["train"].labels.tolist()
    ft.num_classes = 3
    with pytest.raises(Exception, match=r"num_classes=3, and .* names 2 classes \(negative, positive\)"):
        load_splits(ft)
    assert index_classes({"train": load_labeled("tfds:lmscale_tfds_labeled/sst/train", label_column="idx")}) is None
    several = load_labeled("tfds:lmscale_tfds_labeled/sst/train", label_column="pos,neg")
    assert several.class_names is None


@pytest.mark.parametrize("store", ["data", "data_ar"])
def test_classify_reads_a_tfds_text_feature(data_dir, monkeypatch, store):
    """classify --input=tfds:NAME/SPLIT without --labels: was "no such file" (with --labels,
    load_labeled read it)."""
    if store == "data":
        pytest.importorskip("tensorflow")
    use_data_dir(monkeypatch, data_dir / store)
    from lmscale.finetuning.predict import read_texts
    texts = read_texts("tfds:lmscale_tfds_labeled/sst/train", "sentence")
    assert sorted(texts) == sorted(t for t, _ in LABELED)
    assert sorted(read_texts("tfds:lmscale_tfds_text/test", "text")) == sorted(TEXTS[:6])  # Unicode
    with pytest.raises(DataError, match=r"no feature 'text'; .*\(set --text_column\)"):
        read_texts("tfds:lmscale_tfds_labeled/sst/train", "text")
    with pytest.raises(DataError, match=r"unknown split 'nope'"):
        read_texts("tfds:lmscale_tfds_labeled/sst/nope", "sentence")


def test_labeled_spec_with_surrounding_spaces(data_dir, monkeypatch):
    """prepare's is_tfds strips the spec; load_labeled took " tfds:..." for a file path."""
    use_data_dir(monkeypatch, data_dir / "data_ar")
    data = load_labeled(" tfds:lmscale_tfds_labeled/sst/train ")
    assert len(data) == 16 and data.class_names == ["negative", "positive"]
