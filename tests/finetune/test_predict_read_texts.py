"""read_texts, the texts lmscale.classify reads without --labels: each bad line of a JSONL file
is a one-line error naming the file and line (bad JSON was a JSONDecodeError traceback, and a
null text was classified as the string "None")."""

from __future__ import annotations

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
