"""Messy user corpora (the prep audit's D1-D11): what is not text is refused in one line naming
the file and the way out, or skipped with a note; symbolic links to folders are followed."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lmscale.config import default_config
from lmscale.data.csv_rows import csv_rows
from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.sources import expand_inputs, input_size
from lmscale.training.data_source import resolve_dataset

REPO = Path(__file__).resolve().parents[2]
WORDS = "the cat sat on the mat and the dog ran to the red house\n"


def _prepare(tmp_path: Path, inputs, name: str = "out", **kwargs) -> str:
    kwargs.setdefault("split", (1, 0, 0))
    return prepare_dataset(inputs, str(tmp_path / name), progress=False, **kwargs)


def _one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


# D1: formats lmscale does not read, by name and by content
@pytest.mark.parametrize("name,hint", [("reviews.jsonl.zst", r"zstd -d"), ("corpus.zip", "unzip"),
                                       ("part.parquet", "export its text column"),
                                       ("paper.pdf", "extract its text"), ("dump.tar.gz", "tar xf")])
def test_unsupported_formats_are_refused_naming_the_file(tmp_path, name, hint):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(WORDS * 5)
    (tmp_path / "c" / name).write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(1, 200)))
    for given in (tmp_path / "c" / name, tmp_path / "c"):  # named, or in a folder of corpora
        with pytest.raises(DataError, match=rf"{name}: a format lmscale does not read.*{hint}") as e:
            _prepare(tmp_path, str(given))
        assert ".gz, .bz2 or .xz" in _one_line(str(e.value))
    assert not (tmp_path / "out").exists()


def test_zst_jsonl_with_text_field_is_called_zst_not_txt(tmp_path):
    (tmp_path / "reviews.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd\x04\x00 compressed")
    p = subprocess.run([sys.executable, "-m", "lmscale.prepare", f"--input={tmp_path / 'reviews.jsonl.zst'}",
                        f"--output={tmp_path / 'out'}", "--text_field=text", "--progress=false"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    err = p.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "reviews.jsonl.zst: a format lmscale does not read (Zstandard)" in err
    assert "txt file" not in err and "zstd -d" in err


def test_binary_content_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.arange(1000, dtype=np.uint16).tobytes())
    with pytest.raises(DataError, match=r"weights\.bin: binary data, not text \(a NUL byte"):
        _prepare(tmp_path, str(tmp_path / "weights.bin"))
    (tmp_path / "data.txt").write_bytes(gzip.compress(WORDS.encode() * 20))  # misnamed gzip
    with pytest.raises(DataError, match=r"data\.txt: gzip-compressed data.*rename it"):
        _prepare(tmp_path, str(tmp_path / "data.txt"))
    (tmp_path / "inner.txt.bz2").write_bytes(bz2.compress(b"PK\x03\x04 a zip inside"))
    with pytest.raises(DataError, match=r"inner\.txt\.bz2: zip data by its content"):
        _prepare(tmp_path, str(tmp_path / "inner.txt.bz2"))
    (tmp_path / "u16.txt").write_bytes((WORDS * 5).encode("utf-16"))  # text: the reader's note
    assert _prepare(tmp_path, str(tmp_path / "u16.txt"))


# D2: symbolic links to folders are followed, each file read once
def test_symlinked_folders_are_followed_once(tmp_path, capfd):
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere" / "sub"
    corpus.mkdir()
    elsewhere.mkdir(parents=True)
    (corpus / "a.txt").write_text("real file text\n" * 5)
    (elsewhere / "b.txt").write_text("linked folder text\n" * 50)
    (corpus / "linked_dir").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
    (elsewhere / "loop").symlink_to(corpus, target_is_directory=True)  # a cycle
    (corpus / "same.txt").symlink_to(corpus / "a.txt")  # the same file twice
    files = expand_inputs(str(corpus))
    assert [os.path.realpath(f) for f in files] == [str((corpus / "a.txt").resolve()),
                                                    str((elsewhere / "b.txt").resolve())]
    out = _prepare(tmp_path, str(corpus))
    assert TokenDataset.open(out).metadata["total_tokens"] == 5 * 15 + 50 * 19


# D3: a broken link, or a file gone since it was listed
def test_broken_symlink_and_vanished_file_are_one_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(WORDS)
    (tmp_path / "c" / "broken.txt").symlink_to("/nonexistent/x.txt")
    for given in (tmp_path / "c", tmp_path / "c" / "broken.txt"):
        with pytest.raises(DataError, match=r"broken\.txt: a broken symbolic link \(-> /nonexistent/x\.txt\)") as e:
            _prepare(tmp_path, str(given))
        _one_line(str(e.value))
    (tmp_path / "gone.txt").write_text(WORDS)
    listed = expand_inputs(str(tmp_path / "gone.txt"))
    os.remove(tmp_path / "gone.txt")
    with pytest.raises(DataError, match=r"gone\.txt: no such file \(removed or renamed since it was listed"):
        input_size(listed[0])


# D4: a dataset whose metadata.json is empty, torn or newer is refused, not read as text
@pytest.mark.parametrize("damage,reason", [
    (lambda m: "", r"metadata\.json: empty"),
    (lambda m: m[: len(m) // 2], r"metadata\.json: invalid JSON"),
    (lambda m: json.dumps({**json.loads(m), "version": 2}),
     r"version 2 is not supported by this lmscale \(it reads version 1\)")])
def test_unreadable_dataset_metadata_is_refused(tmp_path, damage, reason):
    (tmp_path / "a.txt").write_text(WORDS * 10)
    ds = Path(_prepare(tmp_path, str(tmp_path / "a.txt"), name="ds", split=(8, 1, 1)))
    meta = ds / "metadata.json"
    meta.write_text(damage(meta.read_text()))
    with pytest.raises(DataError, match=rf"ds looks like a prepared lmscale dataset.*{reason}.*prepare it again"):
        _prepare(tmp_path, str(ds), name="again")
    data = default_config().data
    data.train = str(ds)
    with pytest.raises(DataError, match=reason):
        resolve_dataset(data, str(tmp_path / "run"), progress=False)


# D5: a killed prepare's temporary folder
def test_killed_prepare_leftover_is_refused_or_skipped(tmp_path, capfd):
    corpus = tmp_path / "corpus"
    leftover = corpus / "killed.tmp-vm-4242"
    leftover.mkdir(parents=True)
    (leftover / "tokens.raw").write_bytes(np.arange(100, 200, dtype="<u2").tobytes())
    (leftover / "doc_starts.raw").write_bytes(np.zeros(1, "<i8").tobytes())
    (corpus / "a.txt").write_text(WORDS * 3)
    for given in (leftover, leftover / "tokens.raw"):
        with pytest.raises(DataError, match=r"killed\.tmp-vm-4242.* temporary folder .*of a prepare that was killed"):
            _prepare(tmp_path, str(given))
    out = _prepare(tmp_path, str(corpus))
    assert TokenDataset.open(out).metadata["files"] == [str(corpus / "a.txt")]
    assert "temporary folder(s) of killed or running prepares" in capfd.readouterr().err


# D6: a workdir inside the data.train folder
def test_run_folders_inside_the_corpus_are_skipped(tmp_path, capfd):
    corpus = tmp_path / "ws"
    run = corpus / "run" / "archive" / "20261205-014510"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "config.json").write_text('{"model": {}}')
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "checkpoints" / "4" / "state").write_bytes(b"checkpoint bytes")
    (corpus / "run" / ".lock").write_text("1")
    (corpus / "run" / "data_request.json").write_text('{\n  "inputs": "ws"\n}')
    (corpus / "a.txt").write_text(WORDS * 3)
    out = _prepare(tmp_path, str(corpus))
    assert TokenDataset.open(out).metadata["files"] == [str(corpus / "a.txt")]
    err = capfd.readouterr().err
    assert "skipped 1 lmscale run folder(s)" in err and str(corpus / "run") in err, err
    with pytest.raises(DataError, match=r"archive/20261205-014510 is an lmscale run folder"):
        _prepare(tmp_path, str(run))


# D7, D9: CSV
def test_unterminated_csv_quote_names_the_line(tmp_path):
    path = tmp_path / "u.csv"
    rows = ["id,text"] + [f'{i},"this quote is never closed' if i == 10 else f"{i},row {i} text"
                          for i in range(1, 200)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"u\.csv:11: a quoted field opens on this line and is never closed"):
        _prepare(tmp_path, str(path), text_column="text")
    # an open quote in the text column before another one (text,label): named too, not taken
    # for a row of too few fields
    first = tmp_path / "first.csv"
    first.write_text('text,label\nok,1\n"never closed,0\nmore text\n')
    with pytest.raises(DataError, match=r"first\.csv:3: a quoted field opens on this line"):
        list(csv_rows(str(first), ["text", "label"]))
    # a closed quote at the end, with or without a final newline, is fine
    path.write_text('id,text\n1,"a, ""quoted""\nline"\n2,"last"')
    assert [row["text"] for _, row in csv_rows(str(path), ["text"])] == ['a, "quoted"\nline', "last"]


def test_invalid_utf8_csv_names_line_offset_and_way_out(tmp_path):
    path = tmp_path / "latin1.csv"
    lines = [b"id,text\n"] + [f"{i},row {i} ok\n".encode() for i in range(1, 1000)]
    path.write_bytes(b"".join(lines) + b"1000,caf\xe9 latin\n")
    offset = len(b"".join(lines)) + len(b"1000,caf")
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, str(path), text_column="text")
    assert str(e.value) == (f"{path}:1001: not valid UTF-8 (byte 0xe9 at byte {offset:,} of the "
                            f"file): convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 (latin1 is "
                            f"a guess: name its real encoding)")


def test_invalid_utf8_jsonl_as_the_csv_reader_says_it(tmp_path):
    """A JSONL file's bad byte: its line and offset in the decompressed file; a UTF-16 file
    (PowerShell's >) said to be one, not latin1 to convert (nor its first newline byte)."""
    record = json.dumps({"text": "row ok"}).encode() + b"\n"
    path = tmp_path / "latin1.jsonl.gz"
    path.write_bytes(gzip.compress(record * 3 + b'{"text": "caf\xe9"}\n'))
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, str(path))
    offset = 3 * len(record) + len(b'{"text": "caf')
    assert str(e.value).startswith(f"{path}:4: not valid UTF-8 (byte 0xe9 at byte {offset:,} of "
                                   f"the decompressed file): convert it to UTF-8")
    path = tmp_path / "u16.jsonl"
    path.write_bytes((json.dumps({"text": WORDS}) + "\n").encode("utf-16") * 3)
    with pytest.raises(DataError, match=r"u16\.jsonl:1: .* it is UTF-16 \(it starts with the byte "
                       r"order mark 0xff 0xfe\): convert it to UTF-8, e\.g\. iconv -f utf-16"):
        _prepare(tmp_path, str(path))


# D10: a pipe
def test_a_pipe_is_refused_as_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)

    def feed() -> None:  # what a process substitution would write
        try:
            with open(fifo, "wb") as f:
                f.write(WORDS.encode() * 50)
        except BrokenPipeError:  # the reader is gone (this test's own unblocking open)
            pass

    threading.Thread(target=feed, daemon=True).start()
    try:
        with pytest.raises(DataError, match=r"pipe\.txt is a pipe, not a regular file.*write it to one first"):
            _prepare(tmp_path, str(fifo))
    finally:  # let the writer finish
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)


# D11
def test_corpus_too_small_names_the_file_and_the_split(tmp_path):
    (tmp_path / "short.txt").write_text("a short corpus of one line\n")
    with pytest.raises(DataError) as e:
        _prepare(tmp_path, str(tmp_path / "short.txt"), split=(98, 1, 1))
    message = _one_line(str(e.value))
    assert "corpus too small: 27 tokens for 100 shards" in message
    assert f"(text: {tmp_path / 'short.txt'})" in message and "--split (data.split), e.g. 8,1,1" in message
    assert _prepare(tmp_path, str(tmp_path / "short.txt"), split=(8, 1, 1))
