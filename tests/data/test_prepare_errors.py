"""prepare_dataset on bad input: a clear DataError and no output or temporary folder left."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from lmscale.data import prepare as prepare_lib
from lmscale.data.dataset import TokenDataset, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.tokenizer import ByteTokenizer

from tests.data.helpers import leftovers, make_docs, read_stream, write_txt_files


@pytest.fixture
def corpus_dir(tmp_path):
    write_txt_files(tmp_path / "in", make_docs(20, seed=0))
    return tmp_path / "in"


def prepare(inputs, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("split", (2, 1, 1))
    return prepare_dataset(inputs, str(out), **kw)


def test_missing_path_and_unmatched_glob(tmp_path):
    with pytest.raises(DataError, match="no such file or directory: .*missing.txt"):
        prepare(str(tmp_path / "missing.txt"), tmp_path / "out")
    with pytest.raises(DataError, match=r"pattern .*\*\.nothing matched no files"):
        prepare(str(tmp_path / "*.nothing"), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_empty_corpus_leaves_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"")
    (tmp_path / "in" / "b.csv").write_text("text,label\n,1\n,0\n")
    with pytest.raises(DataError, match="empty corpus: no text in"):
        prepare(str(tmp_path / "in"), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_too_small_corpus(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"tiny")
    with pytest.raises(DataError, match="corpus too small: 4 tokens for 10 shards"):
        prepare(str(tmp_path / "a.txt"), tmp_path / "out", split=(8, 1, 1))
    assert leftovers(tmp_path / "out") == []


def test_csv_without_column_lists_columns(tmp_path):
    with open(tmp_path / "d.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "sentence"], [1, "hello there"]])
    with pytest.raises(DataError, match=r"d\.csv: no column 'text'; columns are \['label', 'sentence'\]"):
        prepare(str(tmp_path / "d.csv"), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_jsonl_without_field_lists_keys(tmp_path):
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write(json.dumps({"body": "b", "id": 3}) + "\n" + json.dumps({"text": "a" * 50}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: no field 'text'; keys are \['body', 'id'\]"):
        prepare(str(tmp_path / "d.jsonl"), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_a_later_record_without_the_field_is_skipped_and_counted(tmp_path, capfd):
    """The Amazon reviews hold records without reviewText: one aborted a prepare hours in."""
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": f"review {i} " * 20} if i not in (7, 30, 33) else
                               {"id": i} if i != 33 else {"text": None}) + "\n")
    out = prepare(str(tmp_path / "d.jsonl"), tmp_path / "out")
    assert TokenDataset.open(out).metadata["total_documents"] == 37
    err = capfd.readouterr().err
    assert err.count("note: ") == 1 and ("d.jsonl: records skipped: 2 without the field 'text' "
                                         "(the first at line 8); 1 with a null 'text'") in err


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_prepare_leaves_nothing(corpus_dir, tmp_path, monkeypatch, error):
    real = ByteTokenizer.encode
    calls = []

    def flaky(self, text):
        calls.append(1)
        if len(calls) == 3:
            raise error("boom")
        return real(self, text)

    monkeypatch.setattr(ByteTokenizer, "encode", flaky)
    monkeypatch.setattr(prepare_lib, "ENCODE_BYTES", 1)  # one encode call per document
    with pytest.raises(error, match="boom"):
        prepare(str(corpus_dir), tmp_path / "out")
    assert len(calls) == 3
    assert leftovers(tmp_path / "out") == []


def test_failure_keeps_existing_dataset(corpus_dir, tmp_path, monkeypatch):
    out = prepare(str(corpus_dir), tmp_path / "out")
    before, _ = read_stream(out)

    def broken(self, text):
        raise RuntimeError("boom")

    monkeypatch.setattr(ByteTokenizer, "encode", broken)
    with pytest.raises(RuntimeError):
        prepare(str(corpus_dir), tmp_path / "out", overwrite=True)
    assert leftovers(tmp_path / "out") == ["out"]
    np.testing.assert_array_equal(read_stream(out)[0], before)


def test_existing_output_needs_overwrite(corpus_dir, tmp_path):
    out = prepare(str(corpus_dir), tmp_path / "out")
    with pytest.raises(DataError, match="already holds a prepared dataset.*overwrite"):
        prepare(str(corpus_dir), tmp_path / "out")
    (tmp_path / "other.txt").write_bytes(b"completely different text " * 10)
    prepare(str(tmp_path / "other.txt"), tmp_path / "out", overwrite=True, split=(1, 0, 0))
    assert TokenDataset.open(out).split_names == ["train"]
    assert ByteTokenizer().decode_bytes(read_stream(out)[0]) == b"completely different text " * 10
    assert leftovers(tmp_path / "out") == ["out"]


def test_output_that_is_not_a_dataset_is_not_replaced(corpus_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not a prepared dataset"):
        prepare(str(corpus_dir), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert is_dataset(prepare(str(corpus_dir), tmp_path / "empty"))


@pytest.mark.parametrize("kw, match", [
    (dict(split=(0, 1, 1)), "split must be three shard counts"),
    (dict(split=(1, -1, 0)), "split must be three shard counts"),
    (dict(split=(1, 1)), "split must be three shard counts"),
    (dict(shard_tokens=0), "shard_tokens must be a positive integer"),
    (dict(txt_mode="para"), "txt_mode must be one of"),
])
def test_bad_options(corpus_dir, tmp_path, kw, match):
    with pytest.raises(DataError, match=match):
        prepare(str(corpus_dir), tmp_path / "out", **kw)
    assert leftovers(tmp_path / "out") == []


def test_a_full_disk_is_one_error_and_leaves_nothing(small_disk, tmp_path):
    """A prepare into a full disk ended in a traceback (OSError 28), found after its first pass."""
    text = tmp_path / "corpus.txt"
    text.write_text("a line of text to tokenize.\n" * 40_000)  # 1.1 MB: 2.2 MB of uint16 tokens
    out = small_disk / "ds"
    with pytest.raises(DataError, match=r"ds: the disk is full .*needs about twice the dataset's "
                                        r"size free"):
        prepare_dataset(str(text), str(out), split=(8, 1, 1), progress=False)
    assert os.listdir(small_disk) == []  # no half dataset, no temporary folder


def test_a_killed_prepares_temporary_folder_is_removed_by_the_next(tmp_path, capfd):
    """A SIGKILLed prepare leaves OUTPUT.tmp-HOST-PID (hundreds of MB on a real corpus) that
    no later prepare removed; one whose process still runs, or another machine's (a shared
    filesystem), is left alone."""
    from lmscale.atomic import HOST as _HOST
    import subprocess
    import sys
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        text = tmp_path / "corpus.txt"
        text.write_text("a line of text.\n" * 200)
        folders = [f"ds.tmp-{_HOST}-{gone}", f"ds.tmp-{_HOST}-{alive.pid}", f"ds.tmp-elsewhere-{gone}"]
        for folder in folders:
            os.makedirs(tmp_path / folder)
            (tmp_path / folder / "tokens.bin").write_bytes(b"\0" * 1000)
        prepare_dataset(str(text), str(tmp_path / "ds"), split=(8, 1, 1), progress=False)
        assert [(tmp_path / f).exists() for f in folders] == [False, True, True]
        os.makedirs(tmp_path / "ds.tmp-12345")  # an older lmscale's name, without the host
        capfd.readouterr()
        prepare_dataset(str(text), str(tmp_path / "ds"), split=(8, 1, 1), overwrite=True,
                        progress=False)
        assert "ds.tmp-12345 may be left by a killed prepare (of an older lmscale" in capfd.readouterr().err
    finally:
        alive.kill()


def test_an_output_under_a_file_is_one_error_naming_it(corpus_dir, tmp_path):
    """An --output below a regular file (or in a read-only folder) was a raw FileExistsError /
    OSError traceback from os.makedirs."""
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(DataError, match=f"^cannot make the output {tmp_path}/afile/sub/ds: "
                                        f"{tmp_path}/afile is a file, not a folder$"):
        prepare(str(corpus_dir), tmp_path / "afile" / "sub" / "ds")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_an_old_dataset_a_killed_overwrite_moved_aside_is_restored_or_removed(tmp_path, capfd):
    """prepare --overwrite killed between its two renames left OUTPUT.trash-PID (a whole old
    dataset) for good, and OUTPUT missing; the next prepare puts it back (then refuses to
    replace it without --overwrite), or removes it where OUTPUT is there."""
    import subprocess
    import sys

    from lmscale.atomic import HOST
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    text = tmp_path / "corpus.txt"
    text.write_text("a line of text.\n" * 200)
    out = tmp_path / "ds"
    prepare_dataset(str(text), str(out), split=(8, 1, 1), progress=False)
    trash = tmp_path / f"ds.trash-{HOST}-{gone}"
    os.rename(out, trash)  # killed after moving the old one aside, before the new one came
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        prepare_dataset(str(text), str(out), split=(8, 1, 1), progress=False)
    assert f"note: {out} restored from {trash}" in capfd.readouterr().err
    assert TokenDataset.open(str(out)).split("train").num_tokens > 0 and not trash.exists()
    os.makedirs(trash)  # a leftover beside a complete OUTPUT: removed
    prepare_dataset(str(text), str(out), split=(8, 1, 1), overwrite=True, progress=False)
    assert not trash.exists() and f"removed {trash}" in capfd.readouterr().err


def test_a_missing_text_column_names_the_config_field_from_python(tmp_path):
    """train(config, workdir) on a CSV without the column: the hint was "text_column, or
    data.text_column" (train takes no text_column; data.text_column is no flag either)."""
    from lmscale.data.sources import iter_pieces
    from lmscale.messages import command_line, errors_for_caller
    f = tmp_path / "a.csv"
    f.write_text("label,sentence\n1,good\n")
    with pytest.raises(DataError) as api:
        with errors_for_caller():
            list(iter_pieces([str(f)]))
    assert "or config.data.text_column)" in str(api.value) and "--" not in str(api.value)
    with pytest.raises(DataError) as cli:
        with command_line():
            list(iter_pieces([str(f)]))
    assert "--text_column of lmscale.prepare, or --config.data.text_column" in str(cli.value)
