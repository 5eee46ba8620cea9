"""Word-level tokenizer: <eos> per line, <unk> by count and size, vocabulary from the training
split only, stored with the dataset, byte lengths, round trip, errors, and training on raw text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.tokenizer import tokenizer_from_dict
from lmscale.data.words import (EOS_ID, PAD_ID, UNK_ID, WordCounter, WordTokenizer, WordTraining,
                                build_vocabulary, split_words)
from tests.conftest import REPO, tiny_config


def vocab_of(text: str, **options) -> WordTokenizer:
    counter = WordCounter()
    ids, _ = counter.encode_batch([text])
    return build_vocabulary(counter, np.bincount(ids, minlength=counter.vocab_size),
                            WordTraining(**options))[0]


def test_split_words_eos_per_line_empty_lines_and_no_trailing_newline():
    assert split_words("a b\n\n c  d \ne") == ["a", "b", "<eos>", "<eos>", "c", "d", "<eos>", "e", "<eos>"]
    assert split_words("a b\nc", close=False) == ["a", "b", "<eos>", "c"]  # a prompt
    assert split_words("a\n") == ["a", "<eos>"] == split_words("a\n", close=False)
    assert split_words("") == []


def test_ids_by_count_unk_below_min_count_and_beyond_size():
    tok = vocab_of("b a b\nc b a\n", min_count=1)
    assert tok.words == ["<pad>", "<unk>", "<eos>", "b", "a", "c"]  # count 3, 2, 1 (ties: first seen)
    assert list(tok.encode("a z b\n")) == [4, UNK_ID, 3, EOS_ID]
    assert vocab_of("b a b\nc b a\n", min_count=2).words[3:] == ["b", "a"]
    assert vocab_of("b a b\nc b a\n", max_size=4).words[3:] == ["b"]
    assert tok.vocab_size == 6 and tok.pad_id == PAD_ID and tok.token_dtype == np.uint8


def test_round_trip_and_decode_joins_with_spaces():
    text = "the cat sat\non the mat\n\nthe end\n"
    tok = vocab_of(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("the  dog\tsat")) == "the <unk> sat"  # a prompt: no <eos>
    assert tok.decode(np.concatenate([[PAD_ID], ids[:2]])) == "the cat"


def test_byte_lengths_word_plus_separator_eos_zero_unk_mean():
    tok = vocab_of("aa b aa\nccc\n", min_count=2)  # b (2 bytes) and ccc (4 bytes) are <unk>
    lengths = tok.byte_lengths()
    assert lengths[tok.index["aa"]] == 3 and lengths[EOS_ID] == 0 and lengths[PAD_ID] == 0
    assert lengths[UNK_ID] == 3  # mean of 2 and 4
    # The mean is kept as a fraction (it was rounded to a whole byte: 0.5 byte per <unk>).
    tok = vocab_of("aa b aa b aa\nccc\n", min_count=3)  # b b ccc: (2 + 2 + 4) / 3
    assert tok.unk_bytes == pytest.approx(8 / 3, abs=1e-6)
    assert tok.byte_lengths()[UNK_ID] == pytest.approx(8 / 3, rel=1e-6)
    old = WordTokenizer(tok.words, unk_bytes=3)  # a vocab.json of before: its int kept
    assert old.unk_bytes == 3 and '"unk_bytes": 3,' in old.payload.decode()  # not 3.0
    with pytest.raises(DataError, match="unk_bytes must be a positive number, got 'x'"):
        WordTokenizer(tok.words, unk_bytes="x")
    line = "aa aa aa\n"
    assert int(lengths[tok.encode(line)].sum()) == len(line.encode())


def test_errors_are_one_line():
    with pytest.raises(DataError, match="empty word vocabulary: no word occurs --word_min_count=5"):
        vocab_of("a b\n", min_count=5)
    with pytest.raises(DataError, match="--word_min_count must be a positive integer"):
        WordTraining(min_count=0)
    with pytest.raises(DataError, match="--word_vocab_size must be 0"):
        WordTraining(max_size=2)
    with pytest.raises(DataError, match="out of range"):
        vocab_of("a\n").decode([99])


def test_prepared_vocabulary_comes_from_the_training_split_only(tmp_path):
    # 10 shards per cycle (8 train, 1 val, 1 test); a word only in the val/test shards is <unk>.
    lines = [f"w{i % 7} common\n" for i in range(400)]
    n = len(lines)
    # 3 tokens a line, 10 shards of 40 lines: val is shard 3 and test shard 6 (assign_splits)
    lines[3 * n // 10 + 5] = "onlyval common\n"
    lines[6 * n // 10 + 5] = "onlyval common\n"
    path = tmp_path / "c.txt"
    path.write_text("".join(lines))
    out = prepare_dataset([str(path)], str(tmp_path / "ds"), split=(8, 1, 1), tokenizer=WordTraining(),
                          progress=False)
    ds = TokenDataset.open(out)
    tok = ds.tokenizer
    assert isinstance(tok, WordTokenizer) and os.path.isfile(os.path.join(out, "vocab.json"))
    assert "onlyval" not in tok.index
    val = np.concatenate([np.asarray(s) for s in ds.split("val").shards])
    test = np.concatenate([np.asarray(s) for s in ds.split("test").shards])
    assert (val == UNK_ID).sum() == 1 and (test == UNK_ID).sum() == 1
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["tokenizer"]["kind"] == "word"
    assert tokenizer_from_dict(meta["tokenizer"], base_dir=out) == tok
    train = np.concatenate([np.asarray(s) for s in ds.split("train").shards])
    assert tok.decode(train[:6]).split("\n")[0].endswith("common")


@pytest.mark.parametrize("chunk, encode_bytes", [(64, 16), (7, 1), (1 << 24, 1 << 20)])
def test_a_long_line_read_in_pieces_keeps_its_words_whole(tmp_path, monkeypatch, chunk, encode_bytes):
    """A line longer than a read piece (16 MiB) is cut before a space, not inside a word, and
    its pieces are not closed by an <eos> each: one <eos> ends the document."""
    from lmscale.data import prepare as prepare_lib, sources as sources_lib
    monkeypatch.setattr(sources_lib, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(prepare_lib, "ENCODE_BYTES", encode_bytes)
    (tmp_path / "long.txt").write_text("abcdefghi " * 500 + "end")
    (tmp_path / "next.txt").write_text("x y\nz")
    out = prepare_dataset(str(tmp_path / "*.txt"), str(tmp_path / "ds"), split=(1, 0, 0),
                          tokenizer=WordTraining(), progress=False)
    ds = TokenDataset.open(out)
    assert ds.tokenizer.words == ["<pad>", "<unk>", "<eos>", "abcdefghi", "end", "x", "y", "z"]
    tokens = np.concatenate([np.asarray(s) for s in ds.split("train").shards])
    assert len(tokens) == 500 + 1 + 1 + 5  # the words, "end", one <eos>; then "x y <eos> z <eos>"
    assert ds.tokenizer.decode(tokens) == "abcdefghi " * 500 + "end\nx y\nz\n"
    bytes_out = prepare_dataset(str(tmp_path / "long.txt"), str(tmp_path / "bytes"), split=(1, 0, 0),
                                progress=False)  # bytes: cut anywhere, no separator added
    assert TokenDataset.open(bytes_out).split("train").num_tokens == 5003


def test_prepare_cli_word(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"w{i % 5} x\n" for i in range(300)))
    run = subprocess.run([sys.executable, "-m", "lmscale.prepare", f"--input={path}",
                          f"--output={tmp_path / 'ds'}", "--tokenizer=word", "--split=8,1,1",
                          "--word_min_count=2"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "word vocabulary of 9 ids" in run.stdout  # 3 specials + w0..w4 + x
    bad = subprocess.run([sys.executable, "-m", "lmscale.prepare", f"--input={path}",
                          f"--output={tmp_path / 'ds2'}", "--word_min_count=2"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "error: --word_min_count is for --tokenizer=word, not --tokenizer=sentiment_discovery"


def test_raw_text_training_reports_perplexity(tmp_path, corpus, capsys):
    from lmscale.training.loop import train
    from lmscale.training.restore import evaluate_data, load_trained
    config = tiny_config(corpus, **{"data.tokenizer": "word", "train.steps": 4, "train.eval_every": 0,
                                    "train.seq_len": 8, "train.log_every": 2,
                                    "train.progress_bar": True})  # plain lines: not a terminal
    workdir = str(tmp_path / "run")
    last = train(config, workdir)
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert progress and all(" perplexity " in line for line in progress), progress
    for split in ("train", "val"):
        record = last[split]
        assert record["perplexity"] == pytest.approx(np.exp(record["loss"]))
        assert 0 < record["bpc"] < record["bits_per_token"]  # a word is several bytes
    assert os.path.isfile(os.path.join(workdir, "vocab.json"))
    lm = load_trained(workdir)
    assert isinstance(lm.tokenizer, WordTokenizer)
    again = evaluate_data(lm, lm.derived["dataset"], split="val")
    assert again["loss"] == pytest.approx(last["val"]["loss"], rel=1e-6)


def test_splits_given_as_their_own_files(tmp_path):
    """PTB / WikiText come as train, valid and test files: each is its own split, whole."""
    for name, text in (("train", "a b a\nb c\n" * 50), ("valid", "a z\n"), ("test", "c a\n\n")):
        (tmp_path / f"{name}.txt").write_text(text)
    out = prepare_dataset([str(tmp_path / "train.txt")], str(tmp_path / "ds"), tokenizer=WordTraining(),
                          shard_tokens=100, val_inputs=str(tmp_path / "valid.txt"),
                          test_inputs=[str(tmp_path / "test.txt")], progress=False)
    ds = TokenDataset.open(out)
    tok = ds.tokenizer
    tokens = {s: np.concatenate([np.asarray(x) for x in ds.split(s).shards]) for s in ("train", "val", "test")}
    assert tok.decode(tokens["val"]) == "a <unk>\n" and tok.decode(tokens["test"]) == "c a\n\n"
    assert len(tokens["train"]) == 350 and len(ds.split("train").shards) == 4
    assert "z" not in tok.index


def test_invalid_utf8_in_word_text_is_said_in_a_note(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 ok ok\n" + b"ok yes\n" * 40)
    out = prepare_dataset([str(path)], str(tmp_path / "ds"), split=(1, 0, 0),
                          tokenizer=WordTraining(), progress=False)
    err = capsys.readouterr().err
    assert f"note: invalid UTF-8 in {path} (1)" in err and "the word tokenizer" in err, err
    tok = TokenDataset.open(out).tokenizer
    assert "caf\ufffd" in tok.index  # read as U+FFFD, as the note says
