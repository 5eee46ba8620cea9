"""Compressed inputs (.gz, .bz2, .xz): read decompressed, their kind the extension before."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import struct

import pytest

from lmscale.data.errors import DataError
from lmscale.data.prepare import check_text_options, prepare_dataset
from lmscale.data.sources import file_kind, iter_documents
from lmscale.data.tokenizer import ByteTokenizer

from tests.data.helpers import read_stream

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_compressed_txt_jsonl_csv_read_decompressed(tmp_path, suffix):
    pack = COMPRESS[suffix]
    (tmp_path / f"a.txt{suffix}").write_bytes(pack(b"plain text\nline two\n"))
    rows = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(["one", "two"]))
    (tmp_path / f"r.jsonl{suffix}").write_bytes(pack(rows.encode()))
    (tmp_path / f"c.csv{suffix}").write_bytes(pack(b"text,label\nhello,1\n"))
    paths = [str(tmp_path / n) for n in (f"a.txt{suffix}", f"r.jsonl{suffix}", f"c.csv{suffix}")]
    assert [file_kind(p) for p in paths] == ["txt", "jsonl", "csv"]
    assert list(iter_documents(paths)) == [b"plain text\nline two\n", b"one", b"two", b"hello"]
    check_text_options(paths[1:2], None, "text")  # the field applies: no "inputs are txt files"


def test_prepared_gzip_has_the_texts_tokens(tmp_path):
    text = b"the decompressed text, not the gzip bytes\n" * 20
    (tmp_path / "x.txt.gz").write_bytes(gzip.compress(text))
    out = prepare_dataset(str(tmp_path / "x.txt.gz"), str(tmp_path / "out"), split=(1, 0, 0),
                          progress=False)
    tokens, _ = read_stream(out)
    assert ByteTokenizer().decode_bytes(tokens) == text


def test_a_damaged_compressed_file_is_named(tmp_path):
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.txt\.gz: cannot read it as a \.gz file"):
        list(iter_documents([str(tmp_path / "bad.txt.gz")]))


def test_json_array_is_told_to_be_jsonl(tmp_path):
    (tmp_path / "a.json").write_text('[\n {"text": "a"},\n {"text": "b"}\n]\n')
    with pytest.raises(DataError, match=r"a\.json:1: a JSON array; expected one JSON object per "
                                        r"line \(JSONL"):
        list(iter_documents([str(tmp_path / "a.json")]))


def test_utf16_text_gets_a_note(tmp_path, capfd):
    (tmp_path / "u.txt").write_bytes("hello".encode("utf-16"))
    list(iter_documents([str(tmp_path / "u.txt")]))
    assert "u.txt starts with a UTF-16 byte order mark" in capfd.readouterr().err


def test_a_compressed_input_counts_its_text_for_the_sample_shares(tmp_path):
    """A .gz input was sized by its compressed bytes: in a mixed corpus its share of the
    SentencePiece sample was 3-10x too small (and the progress bar stalled on it). A .gz
    says its text's size (its last 4 bytes); bz2/xz are estimated at 3 x."""
    from lmscale.data.compression import TEXT_RATIO, decompressed_size
    from lmscale.data.sample import _shares
    from lmscale.data.sources import input_size
    text = ("the same kind of review text, said again and again. " * 4000).encode()
    (tmp_path / "plain.txt").write_bytes(text)
    for suffix, compress in COMPRESS.items():
        (tmp_path / f"c.txt{suffix}").write_bytes(compress(text))
    assert input_size(str(tmp_path / "c.txt.gz")) == len(text)
    for suffix in (".bz2", ".xz"):
        path = str(tmp_path / f"c.txt{suffix}")
        assert decompressed_size(path) == TEXT_RATIO * (tmp_path / f"c.txt{suffix}").stat().st_size
    shares = _shares([str(tmp_path / "plain.txt"), str(tmp_path / "c.txt.gz")], 1000)
    assert shares == [500, 500]


def test_a_small_or_incompressible_gz_input_counts_its_recorded_text(tmp_path):
    """A .gz whose text is shorter than the file (a short text, or bytes that do not compress)
    was sized at 3 x the file, its recorded size thrown away as a wrapped count: a 5-byte text
    counted 75 bytes, and random bytes 3 x their size, in the sample shares and progress."""
    from lmscale.data.compression import decompressed_size
    (tmp_path / "short.txt.gz").write_bytes(gzip.compress(b"hello"))
    assert decompressed_size(str(tmp_path / "short.txt.gz")) == 5
    noise = random.Random(0).randbytes(3000)
    (tmp_path / "noise.txt.gz").write_bytes(gzip.compress(noise))
    assert decompressed_size(str(tmp_path / "noise.txt.gz")) == 3000


def test_a_gz_input_of_several_members_counts_all_of_its_text(tmp_path):
    """cat a.gz b.gz (or bgzip, whose last member is empty): the last 4 bytes record the last
    member's text only, and a file of 40 kB of text was sized 8 bytes (bgzip's: 0), so the
    SentencePiece sample took 8 bytes of it (0: none)."""
    from lmscale.data.compression import decompressed_size
    from lmscale.data.sample import _shares
    text = b"".join(b"line %d of the first member\n" % i for i in range(1500))
    for last in (b"the end\n", b""):
        path = tmp_path / f"members{len(last)}.txt.gz"
        path.write_bytes(gzip.compress(text) + gzip.compress(last))
        assert decompressed_size(str(path)) == len(text) + len(last)
        assert _shares([str(path)], 10**6) == [len(text) + len(last)]


def test_a_large_gz_whose_record_may_have_wrapped_is_estimated(tmp_path):
    """Past 2**32 / DEFLATE_RATIO bytes a .gz may hold 4 GiB of text or more, and its record
    (modulo 4 GiB) below the file's size is taken for a wrapped count: a 4 GiB + 10 bytes text
    of zeros compresses to about 4.2 MB and records 10."""
    from lmscale.data.compression import TEXT_RATIO, decompressed_size
    size = 4_200_000  # past 2**32 / 1032 (deflate's largest ratio)
    path = tmp_path / "zeros.txt.gz"
    with open(path, "wb") as f:  # a sparse file: only its size and last 4 bytes are read
        f.write(b"\x1f\x8b")
        f.truncate(size - 4)
        f.seek(size - 4)
        f.write(struct.pack("<I", 10))
    assert decompressed_size(str(path)) == TEXT_RATIO * size
