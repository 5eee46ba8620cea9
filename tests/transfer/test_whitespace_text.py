"""A whitespace-only text in a labeled file (transfer, finetune) or a file to classify is
refused as such, not as "empty"; both readers say the same."""

from __future__ import annotations

import pytest

from lmscale.data.errors import DataError
from lmscale.finetuning.predict import read_texts
from lmscale.transfer.labeled import load_labeled


def test_whitespace_only_is_named_as_such_by_both_readers(tmp_path):
    """It was "row 2 has an empty 'sentence'; every text needs at least one character"."""
    labeled = tmp_path / "l.csv"
    labeled.write_text('sentence,label\ngood,1\n"   ",0\n')
    message = (r"l.csv:3: row 2 has only whitespace in 'sentence' \('   '\); every text needs "
               r"a character other than whitespace")
    with pytest.raises(DataError, match=message):
        load_labeled(str(labeled))
    with pytest.raises(DataError, match=message):
        read_texts(str(labeled), "sentence")
    tabs = tmp_path / "t.jsonl"
    tabs.write_text('{"text": "ok", "y": 1}\n{"text": "' + "\\t" * 30 + '", "y": 0}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: row 2 has only whitespace in 'text' "
                                        r"\(30 whitespace characters\)"):
        load_labeled(str(tabs), text_column="text", label_column="y")


def test_empty_stays_empty_and_padded_text_is_kept(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text('sentence,label\ngood,1\n"",0\n')
    for read in (lambda: load_labeled(str(empty)), lambda: read_texts(str(empty), "sentence")):
        with pytest.raises(DataError, match=r"e.csv:3: row 2 has an empty 'sentence'; every "
                                            r"text needs at least one character"):
            read()
    padded = tmp_path / "p.csv"
    padded.write_text('sentence,label\n"  good ",1\n')
    assert read_texts(str(padded), "sentence") == ["  good "]
    assert load_labeled(str(padded)).texts == ["  good "]


def test_a_lone_surrogate_is_named_where_it_is_by_both_readers(tmp_path):
    """JSON's "\\ud800" decodes to a lone surrogate, which has no UTF-8: a UnicodeEncodeError
    traceback naming nothing, after earlier splits were already featurized."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine", "y": 1}\n{"text": "bad \\ud800 one", "y": 0}\n')
    message = r"s.jsonl:2: row 2 has '\\ud800' at character 4 of 'text', a lone UTF-16 surrogate"
    with pytest.raises(DataError, match=message):
        load_labeled(str(path), text_column="text", label_column="y")
    with pytest.raises(DataError, match=message):
        read_texts(str(path), "text")
