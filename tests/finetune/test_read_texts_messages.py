"""One-line errors that point the right way: a UTF-16 file (Excel's "Unicode Text") is named
UTF-16, not told to convert from latin1 (which gave NUL bytes and a header of garbage); a
short row is not blamed on an unquoted comma."""

from __future__ import annotations

import pytest

from lmscale.data.errors import DataError
from lmscale.finetuning.predict import read_texts


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_is_named(tmp_path, encoding):
    path = tmp_path / "t.csv"
    data = "text,label\nhello,1\n".encode(encoding)
    path.write_bytes(data if encoding == "utf-16" else b"\xfe\xff" + data)
    with pytest.raises(DataError, match=r"t\.csv:1: .*it is UTF-16 .*iconv -f utf-16 -t utf-8$"):
        read_texts(str(path), "text")


def test_latin1_keeps_its_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t\.csv:2: not valid UTF-8 .*iconv -f latin1"):
        read_texts(str(path), "text")


def test_short_and_long_rows_get_their_own_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,1\nworld\n")
    with pytest.raises(DataError, match=r"t\.csv:3: 1 fields, and the header has 2 \(a row needs "
                                        r"every column"):
        read_texts(str(path), "text")
    path.write_text("text,label\nhello,1,2\n")
    with pytest.raises(DataError, match=r"t\.csv:2: 3 fields.*a comma inside a text must be quoted"):
        read_texts(str(path), "text")


def test_a_tfds_spec_without_the_extra_names_it():
    """classify --input=tfds:NAME/SPLIT without --labels said "no such file" (read as a path);
    without the optional extra it now says how to install it (the TFDS venv's tests read one)."""
    import importlib.util
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        pytest.skip("tensorflow-datasets installed: tests/data/test_tfds_real.py reads a spec")
    with pytest.raises(DataError, match=r"pip install 'lmscale\[tfds\]'"):
        read_texts(" tfds:imdb_reviews/train", "text")
