"""read_texts, the texts lmscale.classify reads without --labels: each bad line of a JSONL file
is a one-line error naming the file and line (bad JSON was a JSONDecodeError traceback, and a
null text was classified as the string "None")."""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import os

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.finetuning.predict import read_texts


@pytest.mark.parametrize("line, message", [
    ('{"text": broken', r"bad\.jsonl:3: bad JSON \(Expecting value\)"),
    ('{"text": null}', r"bad\.jsonl:3: field 'text' is null, not a string"),
    ('{"text": 5}', r"bad\.jsonl:3: field 'text' is a number, not a string"),
    ('["good film"]', r"bad\.jsonl:3: an array, not a JSON object"),
    ('{"body": "x"}', r"bad\.jsonl:3: no field 'text'; keys are \['body'\] \(set --text_column\)"),
    ('{"text": "  "}', r"bad\.jsonl:3: row 2 has only whitespace in 'text' \('  '\)"),
])
def test_a_bad_jsonl_line_is_a_one_line_error_naming_it(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good film"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_texts(str(path), "text")


def test_good_jsonl_and_an_empty_csv_text_named_by_its_line(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "good film", "id": 1}\n\n{"text": "bad \\"one\\""}\n')
    assert read_texts(str(path), "text") == ["good film", 'bad "one"']
    csv_path = tmp_path / "e.csv"
    csv_path.write_text('text\n"two\nlines"\n""\n')
    with pytest.raises(DataError, match=r"e\.csv:4: row 2 has an empty 'text'"):
        read_texts(str(csv_path), "text")


@pytest.mark.parametrize("name, delimiter, opener", [
    ("p.csv", ",", open), ("p.tsv", "\t", open), ("p.csv.gz", ",", gzip.open),
    ("p.tsv.gz", "\t", gzip.open), ("p.csv.bz2", ",", bz2.open), ("p.tsv.xz", "\t", lzma.open)])
def test_predictions_named_tsv_or_compressed_are_written_so(tmp_path, name, delimiter, opener):
    """Predictions to ``p.tsv`` or ``p.csv.gz`` were plain comma-separated text under those
    names (``zcat p.csv.gz``: "not in gzip format"); inputs so named are read as named."""
    from lmscale.finetuning.predict import write_predictions
    path = str(tmp_path / name)
    texts = ["a, b\tc", "é\nd"]
    write_predictions(path, texts, np.array([[0.25, 0.75], [0.5, 0.5]]), np.array([1, 0]),
                      ["neg", "pos"], multilabel=False)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        tsv = delimiter == "\t"  # unquoted, as lmscale reads TSV: no tab or line break in a field
        rows = list(csv.reader(f, delimiter=delimiter,
                               quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL))
    shown = ["a, b c", "é d"] if tsv else texts
    assert rows == [["text", "p_neg", "p_pos", "predicted"],
                    [shown[0], "0.250000", "0.750000", "pos"],
                    [shown[1], "0.500000", "0.500000", "neg"]]
    assert read_texts(path, "text") == shown  # classify reads its own output back
    assert os.listdir(tmp_path) == [name]  # no temporary file left
