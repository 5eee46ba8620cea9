"""``python -m lmscale.prepare``: a summary on success, one ``error:`` line on bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmscale.data.dataset import TokenDataset

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.prepare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_prepare_cli(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat on the mat.\n" * 20)
    (tmp_path / "b.txt").write_text("a dog ran to the red house.\n" * 20)
    out = tmp_path / "out"
    p = run(f"--input={tmp_path / 'a.txt'}", f"--input={tmp_path / 'b.txt'}", f"--output={out}",
            "--split=3,1,1", "--shard_tokens=100", "--tokenizer=openai", "--progress=false")
    assert p.returncode == 0, p.stderr
    assert "Prepared 1,040 tokens in 2 documents from 2 files" in p.stdout and str(out) in p.stdout
    ds = TokenDataset.open(out)
    assert ds.tokenizer.to_dict() == {"kind": "byte", "offset": 0, "pad_id": None}
    assert ds.metadata["num_shards"] == 15
    again = run(f"--input={tmp_path / 'a.txt'},{tmp_path / 'b.txt'}", f"--output={out}", "--progress=false")
    assert again.returncode == 1 and again.stderr.strip().startswith("error: ")
    assert "overwrite" in again.stderr
    assert run(f"--input={tmp_path / 'a.txt'}", f"--output={out}", "--overwrite",
               "--progress=false").returncode == 0


def test_prepare_cli_missing_column(tmp_path):
    (tmp_path / "d.csv").write_text("label,sentence\n1,hello there\n")
    p = run(f"--input={tmp_path / 'd.csv'}", f"--output={tmp_path / 'out'}")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr
    assert "no column 'text'; columns are ['label', 'sentence']" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_text_option_for_other_inputs_is_refused(tmp_path):
    """--text_field on a CSV was ignored: the column 'text' was read (or missing)."""
    (tmp_path / "d.csv").write_text("label,sentence\n1,hello there\n")
    (tmp_path / "d.txt").write_text("hello there\n")
    p = run(f"--input={tmp_path / 'd.csv'}", f"--output={tmp_path / 'out'}", "--text_field=sentence")
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: --text_field=sentence names a JSONL (or tfds) field, and the inputs are csv "
        "files (a CSV/TSV column is named by --text_column)")
    p = run(f"--input={tmp_path / 'd.txt'}", f"--output={tmp_path / 'out'}", "--text_column=sentence")
    assert p.returncode == 1 and "the inputs are txt files" in p.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_cli_bad_flags(tmp_path):
    p = run("--output=x")
    assert p.returncode == 1 and p.stderr.strip() == "error: --input is required (text paths/globs or python_stdlib)"
    p = run(f"--input={tmp_path}", "--output=x", "--split=1,1")
    assert p.returncode == 1 and "--split must be three shard counts" in p.stderr


def test_prepare_cli_sentencepiece(tmp_path):
    from tests.data.helpers import make_text
    text = make_text(3000, seed=1)
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    p = run(f"--input={tmp_path / 'a.txt'}", f"--output={out}", "--tokenizer=sentencepiece", "--vocab_size=400",
            "--sp_model_type=unigram", "--sp_sample_bytes=1000000", "--split=1,0,0", "--progress=false")
    assert p.returncode == 0, p.stderr
    assert "SentencePiece vocabulary of 401 ids" in p.stdout
    ds = TokenDataset.open(out)
    assert ds.tokenizer.vocab_size == 401 and ds.metadata["dtype"] == "uint16"
    assert ds.metadata["options"]["tokenizer_training"]["model_type"] == "unigram"
    assert ds.tokenizer.decode(ds.split("train").read(0, 0, ds.split("train").num_tokens)) == text
    reuse = run(f"--input={tmp_path / 'a.txt'}", f"--output={tmp_path / 'again'}", "--tokenizer=sentencepiece",
                f"--sp_model={out / 'tokenizer.model'}", "--split=1,0,0", "--progress=false")
    assert reuse.returncode == 0, reuse.stderr
    assert (tmp_path / "again" / "train" / "shard_00000.bin").read_bytes() == \
        (out / "train" / "shard_00000.bin").read_bytes()


def test_prepare_cli_sentencepiece_errors(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat on the mat.\n" * 20)
    (tmp_path / "bad.model").write_text("not a model")
    cases = [
        (["--tokenizer=sentencepiece", "--vocab_size=30000"], "--vocab_size=30000 is too large for the 480-byte sample"),
        (["--tokenizer=sentencepiece", f"--sp_model={tmp_path / 'bad.model'}"], "bad.model is not a SentencePiece model"),
        (["--tokenizer=sentencepiece", f"--sp_model={tmp_path / 'none.model'}"], "none.model does not exist"),
        (["--tokenizer=sentencepiece", "--vocab_size=10"], "--vocab_size=10 is too small"),
        (["--tokenizer=openai", "--vocab_size=1000"], "--vocab_size is for --tokenizer=sentencepiece"),
        # word's cap is --word_vocab_size: --vocab_size=500 was ignored (2,891 ids on 60 kB)
        (["--tokenizer=word", "--vocab_size=500"], "--vocab_size is for --tokenizer=sentencepiece, "
                                                   "not --tokenizer=word"),
        (["--tokenizer=sentencepiece", f"--sp_model={tmp_path / 'bad.model'}", "--vocab_size=300"],
         "--vocab_size is for training a SentencePiece model"),
    ]
    for flags, message in cases:
        p = run(f"--input={tmp_path / 'a.txt'}", f"--output={tmp_path / 'out'}", *flags, "--progress=false")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert message in lines[0], lines[0]
        assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "bad.model"]  # nothing written


def test_val_and_test_files_inside_the_training_inputs_are_held_out(tmp_path):
    """PTB's layout (--input=ptb --val=ptb/ptb.valid.txt): the val and test text was also read
    into the training split, silently."""
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    for name in ("train", "valid", "test"):
        (ptb / f"ptb.{name}.txt").write_text("".join(f"the {name} sentence {i}\n" for i in range(30)))
    out = tmp_path / "out"
    p = run(f"--input={ptb}", f"--val={ptb / 'ptb.valid.txt'}", f"--test={ptb / 'ptb.test.txt'}",
            f"--output={out}", "--progress=false")
    assert p.returncode == 0, p.stderr
    assert "note: the val/test files are left out of the training inputs (2 of 3)" in p.stderr
    ds = TokenDataset.open(out)
    train = b"".join(bytes(s.astype("uint8")) for s in ds.split("train").shards)
    assert b"valid" not in train and b"test" not in train
    assert ds.split("train").num_tokens == (ptb / "ptb.train.txt").stat().st_size


def test_inputs_that_are_not_text_or_options_that_do_not_apply_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "out"
    for flags, message in (([f"--val={tmp_path / 'a.txt'}", "--split=1,1,1"],
                            "error: --split does not apply with --val/--test"),
                           ([f"--val={tmp_path / 'empty.txt'}"],  # a dataset without val, before
                            f"error: no val text in {tmp_path / 'empty.txt'}")):
        p = run(f"--input={tmp_path / 'a.txt'}", f"--output={out}", *flags)
        assert p.returncode == 1 and p.stderr.strip().startswith(message), p.stderr
    assert run(f"--input={tmp_path / 'a.txt'}", f"--output={out}", "--split=1,0,0").returncode == 0
    p = run(f"--input={out}", f"--output={tmp_path / 'again'}", "--split=1,0,0")
    assert p.returncode == 1 and "belongs to the prepared dataset" in p.stderr  # its JSON as JSONL


def test_the_temporary_folders_of_a_long_output_name_are_never_read(tmp_path):
    """An output named near NAME_MAX has temporary siblings that begin with its name cut
    short (atomic.marked_name): those of another prepare were read as text."""
    from lmscale.atomic import HOST, marked_name
    from lmscale.data.prepare import prepare_dataset
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to prepare\n" * 50)
    name = "p" * 250
    for kind in ("tmp", "trash"):  # a live process's (this one's parent): left in place
        leftover = corpus / f"{marked_name(name)}.{kind}-{HOST}-{os.getppid()}"
        leftover.mkdir()
        (leftover / "tokens.txt").write_text("x" * 5000)
    out = prepare_dataset([str(corpus)], str(corpus / name), split=(1, 0, 0), progress=False)
    assert TokenDataset.open(out).metadata["total_tokens"] == 1050


def test_a_killed_runs_temporary_folder_is_never_read_and_sigterm_removes_it(tmp_path):
    """A SIGTERM left OUTPUT.tmp-PID behind, and the next run over the folder read its token
    ids as text."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to prepare\n" * 50)
    leftover = corpus / "prep.tmp-12345"
    leftover.mkdir()
    (leftover / "tokens.txt").write_text("x" * 5000)  # what a killed run left
    p = run(f"--input={corpus}", f"--output={corpus / 'prep'}", "--split=1,0,0", "--progress=false")
    assert p.returncode == 0, p.stderr
    assert TokenDataset.open(corpus / "prep").metadata["total_tokens"] == 1050
    big = tmp_path / "big.txt"
    big.write_text("a long line of text to tokenize\n" * 2_000_000)  # 64 MB
    proc = subprocess.Popen([sys.executable, "-m", "lmscale.prepare", f"--input={big}",
                             f"--output={tmp_path / 'out'}", "--progress=false"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob("out.tmp-*")):
        assert proc.poll() is None and time.time() < deadline, "prepare ended before the signal"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted: nothing written" in err, err[-2000:]  # 128 + SIGTERM
    assert not list(tmp_path.glob("out*"))
    # SIGHUP (a closed terminal) alike: it killed prepare by its default action, leaving
    # OUTPUT.tmp-* behind
    proc = subprocess.Popen([sys.executable, "-m", "lmscale.prepare", f"--input={big}",
                             f"--output={tmp_path / 'out'}", "--progress=false"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    while not list(tmp_path.glob("out.tmp-*")):
        assert proc.poll() is None and time.time() < deadline + 60, "prepare ended first"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and "interrupted: nothing written" in err, err[-2000:]
    assert not list(tmp_path.glob("out*"))


def test_txt_mode_without_plain_text_inputs_is_refused(tmp_path):
    """--txt_mode=line on CSV/JSONL inputs was ignored (the same tokens as without it)."""
    (tmp_path / "d.csv").write_text("text\nhello there\nhow are you\n")
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "d.txt").write_text("hello there\nhow are you\n")
    out = tmp_path / "out"
    p = run(f"--input={tmp_path / 'd.csv'},{tmp_path / 'd.jsonl'}", f"--output={out}",
            "--txt_mode=line")
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: --txt_mode=line splits plain text files, and the inputs are csv/jsonl files (one "
        "document per row)"), p.stderr[-2000:]
    assert not out.exists()
    p = run(f"--input={tmp_path / 'd.csv'}", f"--val={tmp_path / 'd.txt'}", f"--output={out}",
            "--txt_mode=line", "--progress=false")
    assert p.returncode == 0, p.stderr[-2000:]


def test_one_file_for_both_val_and_test_is_refused(tmp_path):
    """--val=F --test=F made a test split that is the validation text, without a word."""
    for name in ("train", "held"):
        (tmp_path / f"{name}.txt").write_text(f"the {name} text\n" * 30)
    os.symlink(tmp_path / "held.txt", tmp_path / "link.txt")
    out = tmp_path / "out"
    p = run(f"--input={tmp_path / 'train.txt'}", f"--val={tmp_path / 'held.txt'}",
            f"--test={tmp_path / 'link.txt'}", f"--output={out}")
    assert p.returncode == 1 and p.stderr.strip() == (
        f"error: --val and --test both name {tmp_path / 'held.txt'}: the test text must be held "
        f"out of validation; give each its own files"), p.stderr[-2000:]
    assert not out.exists()


def test_a_file_size_limit_is_one_error_and_leaves_nothing(tmp_path):
    """A file outgrowing ``ulimit -f`` (or FAT32's 4 GiB) while preparing: Python ignores
    SIGXFSZ, so the write fails with EFBIG, which was a traceback (only ENOSPC was said)."""
    (tmp_path / "a.txt").write_text("a line of text to tokenize.\n" * 4000)  # 224 kB of tokens
    # 48 KiB, set by the shell (a preexec_fn runs Python in the forked child of a JAX process)
    done = subprocess.run(["bash", "-c", 'ulimit -f 48 && exec "$@"', "bash", sys.executable,
                           "-m", "lmscale.prepare", f"--input={tmp_path}/a.txt",
                           f"--output={tmp_path}/out", "--progress=false"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {tmp_path}/out: a file outgrew the file-size limit")
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
