"""CSV rows as every reader takes them: the header checked, a row with another number of
fields than the header named by its line, an empty file an error (or no rows, for a corpus)."""

from __future__ import annotations

import pytest

from lmscale.data.csv_rows import csv_rows
from lmscale.data.errors import DataError
from lmscale.data.sources import iter_pieces
from lmscale.finetuning.predict import read_texts
from lmscale.transfer.labeled import load_labeled


def test_rows_with_their_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('text,label\n"two\nlines, quoted",1\nplain,0\n')
    assert list(csv_rows(str(path), ["text"])) == [
        (3, {"text": "two\nlines, quoted", "label": "1"}), (4, {"text": "plain", "label": "0"})]


@pytest.mark.parametrize("body, message", [
    ("text,label\nA moving, tender film,1\n",
     "a.csv:2: 3 fields, and the header has 2 (a comma inside a text must be quoted)"),
    ("text,label\nfine,1\nshort\n", "a.csv:3: 1 fields, and the header has 2"),
    ("words,label\nfine,1\n", "a.csv: no column 'text'; columns are ['words', 'label']"),
])
def test_every_reader_names_the_fault(tmp_path, body, message):
    """Labeled texts (transfer, fine-tuning), texts to classify, and a corpus."""
    path = tmp_path / "a.csv"
    path.write_text(body)
    for read in (lambda: load_labeled(str(path), text_column="text", label_column="label"),
                 lambda: read_texts(str(path), "text"),
                 lambda: list(iter_pieces([str(path)], text_column="text"))):
        with pytest.raises(DataError) as e:
            read()
        assert message in str(e.value)


def test_an_empty_file_is_named_so_and_a_corpus_may_hold_one(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("")
    with pytest.raises(DataError, match="a.csv is empty: expected a header row naming the "
                                        r"columns \['text', 'label'\], then one row per text"):
        load_labeled(str(path), text_column="text", label_column="label")
    with pytest.raises(DataError, match="a.csv is empty"):
        read_texts(str(path), "text")
    assert list(iter_pieces([str(path)], text_column="text")) == []


def test_tab_separated_says_tab(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("text\tlabel\nfine\tfilm\t1\n")
    with pytest.raises(DataError, match=r"a.tsv:2: 3 fields, and the header has 2 \(a tab inside"):
        list(csv_rows(str(path), ["text"], "\t"))
