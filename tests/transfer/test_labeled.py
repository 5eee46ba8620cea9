"""Labeled data loading and its one-line errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.labeled import load_labeled, require_binary


def test_reads_sst_and_semeval_multilabel():
    from tests.conftest import shared_data
    d = load_labeled(str(shared_data("sst_binary") / "val.csv"))
    assert len(d) == 872 and set(np.unique(d.labels)) == {0, 1}
    require_binary(d, "label")
    sem = load_labeled(str(shared_data("semeval2018_ec") / "val.csv"), text_column="Tweet",
                       label_column="anger,joy,fear")
    assert sem.labels.shape == (886, 3)
    with pytest.raises(DataError, match="3 label columns"):
        require_binary(sem, "anger,joy,fear")


def test_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "good", "y": 1}\n{"text": "bad", "y": 0}\n')
    d = load_labeled(str(p), text_column="text", label_column="y")
    assert d.texts == ["good", "bad"] and d.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match=r"d.jsonl:1: no field 'label'; keys are \['text', 'y'\]"):
        load_labeled(str(p), text_column="text", label_column="label")


def test_compressed_labeled_files_read_as_their_text(tmp_path):
    """Corpora were read decompressed but labeled files refused ".gz" (review)."""
    import gzip
    import lzma

    from lmscale.finetuning.predict import read_texts
    with gzip.open(tmp_path / "d.csv.gz", "wt", encoding="utf-8") as f:
        f.write("sentence,label\ngood,1\nbad,0\n")
    with lzma.open(tmp_path / "d.jsonl.xz", "wt", encoding="utf-8") as f:
        f.write('{"text": "good", "y": 1}\n{"text": "bad", "y": 0}\n')
    d = load_labeled(str(tmp_path / "d.csv.gz"))
    assert d.texts == ["good", "bad"] and d.labels.tolist() == [1, 0]
    d = load_labeled(str(tmp_path / "d.jsonl.xz"), text_column="text", label_column="y")
    assert d.texts == ["good", "bad"] and d.labels.tolist() == [1, 0]
    assert read_texts(str(tmp_path / "d.csv.gz"), "sentence") == ["good", "bad"]
    assert read_texts(str(tmp_path / "d.jsonl.xz"), "text") == ["good", "bad"]


def test_missing_column_lists_the_columns(tmp_path):
    p = tmp_path / "val.csv"
    p.write_text("label,sentence\n1,good\n0,bad\n")  # SST's header
    with pytest.raises(DataError, match=r"no column 'review'; columns are \['label', 'sentence'\]"):
        load_labeled(str(p), text_column="review")


def test_empty_text_and_non_binary_labels(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text('sentence,label\ngood,1\n"",0\n')
    with pytest.raises(DataError, match="row 2 has an empty 'sentence'"):
        load_labeled(str(p))
    q = tmp_path / "three.csv"
    q.write_text("sentence,label\na,0\nb,1\nc,2\n")
    with pytest.raises(DataError, match=r"has values \[0, 1, 2\]; binary classification needs exactly two"):
        require_binary(load_labeled(str(q)), "label")
    r = tmp_path / "words.csv"  # class names: tests/transfer/test_class_names.py
    r.write_text("sentence,label\na,pos\nb,1\n")
    with pytest.raises(DataError, match=r"words.csv:2: label column 'label' is 'pos', a "
                                        r"class name, and 1 of 2 rows hold class ids \(e.g. 1\)"):
        load_labeled(str(r))


def test_missing_file_and_tfds_without_the_extra(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="nope.csv: no such file"):
        load_labeled(str(tmp_path / "nope.csv"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"pip install 'lmscale\[tfds\]'"):
        load_labeled("tfds:glue/sst2/validation")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_a_label_of_nan_or_inf_is_a_one_line_error_naming_the_file_and_line(tmp_path, value):
    """float() reads them, and int() of them raised ValueError / OverflowError: a traceback."""
    p = tmp_path / "v.csv"
    p.write_text(f"sentence,label\ngood,1\nbad,0\nodd,{value}\n")
    with pytest.raises(DataError, match=rf"v.csv:4: label 'label' is '{value}', not an integer"):
        load_labeled(str(p))
    q = tmp_path / "v.jsonl"
    q.write_text('{"text": "good", "y": 1}\n{"text": "odd", "y": NaN}\n')
    with pytest.raises(DataError, match=r"v.jsonl:2: label 'y' is nan, not an integer class"):
        load_labeled(str(q), text_column="text", label_column="y")
    r = tmp_path / "m.csv"  # multi-label
    r.write_text(f"sentence,a,b\ngood,1,0\nodd,0,{value}\n")
    with pytest.raises(DataError, match=rf"m.csv:3: label 'b' is '{value}', not an integer"):
        load_labeled(str(r), label_column="a,b")


@pytest.mark.parametrize("value, why", [
    ("1e20", "v.csv:3: label 'label' is '1e20', not an integer class id"),
    ("-3000000000", "v.csv:3: label 'label' is '-3000000000', not an integer class id"),
    ("1_0", r"v.csv:3: label column 'label' is '1_0', a class name, and 1 of 2 rows hold "
             r"class ids \(e.g. 1\)")])
def test_a_label_too_large_for_a_class_id_or_with_an_underscore_is_named(tmp_path, value, why):
    """1e20 overflowed the int64 labels with a traceback naming no file; float() read "1_0"
    as 10 (a class name now, not among ids)."""
    p = tmp_path / "v.csv"
    p.write_text(f"sentence,label\ngood,1\nodd,{value}\n")
    with pytest.raises(DataError, match=why):
        load_labeled(str(p))


def test_an_empty_text_names_its_file_and_line(tmp_path):
    """The empty-text error counted data rows ("row 2") where every other error names the
    file's line: with a quoted newline before it, the two differ."""
    p = tmp_path / "e.csv"
    p.write_text('sentence,label\n"two\nlines",1\n"",0\n')
    with pytest.raises(DataError, match=r"e.csv:4: row 2 has an empty 'sentence'"):
        load_labeled(str(p))
    q = tmp_path / "e.jsonl"
    q.write_text('{"text": "good", "y": 1}\n\n{"text": " ", "y": 0}\n')
    with pytest.raises(DataError, match=r"e.jsonl:3: row 2 has only whitespace in 'text' \(' '\)"):
        load_labeled(str(q), text_column="text", label_column="y")


def test_a_jsonl_line_that_is_no_object_or_has_no_string_text_says_so(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "good", "y": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: an array, not a JSON object"):
        load_labeled(str(p), text_column="text", label_column="y")
    p.write_text('{"text": "good", "y": 1}\n{"text": null, "y": 0}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: field 'text' is null, not a string"):
        load_labeled(str(p), text_column="text", label_column="y")


def test_a_label_column_named_twice_is_refused(tmp_path):
    """--label_column=label,label became a two-label task of one label: the neuron search,
    heatmaps and binary accuracy skipped without a word."""
    from lmscale.transfer.labeled import label_columns
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\ngood,1\nbad,0\n")
    with pytest.raises(DataError, match="label column\\(s\\) 'label' named twice in 'label, label'"):
        load_labeled(str(path), label_column="label, label")
    assert label_columns("anger, joy") == ["anger", "joy"]


def test_a_path_object_reads_as_its_str(tmp_path):
    """A notebook's pathlib.Path (run_transfer(train=SST / "train.csv")) was an AttributeError."""
    p = tmp_path / "d.csv"
    p.write_text("label,sentence\n1,good\n0,bad\n")
    d = load_labeled(p)
    assert d.texts == ["good", "bad"] and d.labels.tolist() == [1, 0]


def test_jsonl_lines_end_at_lf_and_repeated_fields_are_refused(tmp_path):
    """A CR between a JSONL record's tokens is JSON whitespace (prepare reads the record): it
    was split into two "lines" (bad JSON at line 1); a label given twice in one object was
    read as its last value, silently (a CSV header naming a column twice is refused)."""
    from lmscale.data.errors import DataError
    from lmscale.transfer.labeled import load_labeled
    cr = tmp_path / "cr.jsonl"
    cr.write_bytes(b'{"sentence": "good",\r"label": 1}\r\n{"sentence": "bad", "label": 0}\n')
    d = load_labeled(str(cr))
    assert d.texts == ["good", "bad"] and d.labels.tolist() == [1, 0]
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"sentence": "good", "label": 1}\n'
                     '{"sentence": "bad", "meta": {"label": 5, "label": 6}, "label": 0}\n'
                     '{"sentence": "odd", "label": 1, "label": 0}\n')
    with pytest.raises(DataError, match=r"twice.jsonl:3: the field 'label' is given twice"):
        load_labeled(str(twice))
    mac = tmp_path / "mac.jsonl"  # records ending with CR alone: a bad JSON line, said why
    mac.write_bytes(b'{"sentence": "good", "label": 1}\r{"sentence": "bad", "label": 0}\r')
    with pytest.raises(DataError, match=r"mac\.jsonl:1: bad JSON \(Extra data\); its records "
                                        r"end with a carriage return alone \(\\r\)"):
        load_labeled(str(mac))


def test_a_label_unlike_the_rest_is_named_by_its_line(tmp_path):
    """A typo among 500 ids ("1O") was "mixes class ids and class names", no line named."""
    lines = [f"text {i},{i % 2}\n" for i in range(500)]
    lines.insert(300, "typo,1O\n")
    p = tmp_path / "m.csv"
    p.write_text("sentence,label\n" + "".join(lines))
    with pytest.raises(DataError, match=r"m.csv:302: label column 'label' is '1O', a class name, "
                                        r"and 500 of 501 rows hold class ids"):
        load_labeled(str(p))
    q = tmp_path / "n.jsonl"  # an id among names: the id's line
    q.write_text('{"text": "a", "y": "pos"}\n{"text": "b", "y": "neg"}\n{"text": "c", "y": 1}\n')
    with pytest.raises(DataError, match=r"n.jsonl:3: label column 'y' is 1, a class id, and 2 of "
                                        r"3 rows hold class names \(e.g. 'pos'\)"):
        load_labeled(str(q), text_column="text", label_column="y")
    r = tmp_path / "ml.csv"
    r.write_text("sentence,a,b\nx,0,1\ny,1,yes\n")
    with pytest.raises(DataError, match=r"ml.csv:3: label column 'b' has 'yes'; multi-label"):
        load_labeled(str(r), label_column="a,b")


def test_a_json_integer_past_pythons_digit_limit_is_bad_json_at_its_line(tmp_path):
    """An integer of over 4300 digits is a ValueError of json, not a JSONDecodeError: it was
    a traceback of transfer, finetune and classify."""
    path = tmp_path / "t.jsonl"
    path.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": '
                    + "1" * 5000 + "}\n")
    with pytest.raises(DataError, match=rf"^{path}:2: bad JSON \(Exceeds the limit"):
        load_labeled(str(path))
