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


def test_ids_by_count_whatever_the_order_first_seen():
    """The most frequent words get the first ids and are what max_size keeps, also where they
    are seen last (a vocabulary in order of first occurrence kept the rarest)."""
    assert vocab_of("a b b\nc c c\n").words[3:] == ["c", "b", "a"]
    assert vocab_of("a b b\nc c c\n", max_size=4).words[3:] == ["c"]


def test_a_literal_pad_in_the_text_is_unk_not_padding():
    """"<pad>" written in a text is a word outside the vocabulary: id 0 would be padding,
    dropped by the loss and the pooling."""
    tok = vocab_of("a b\n")
    assert list(tok.encode("a <pad> b")) == [tok.index["a"], UNK_ID, tok.index["b"]]


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
    (tmp_path / "vocab.json").write_bytes(open(os.path.join(out, "vocab.json"), "rb").read())
    for outside in ("../vocab.json", "..\\vocab.json", str(tmp_path / "vocab.json")):  # elsewhere
        with pytest.raises(DataError, match="description needs a relative file name in 'vocab'"):
            tokenizer_from_dict({**meta["tokenizer"], "vocab": outside}, base_dir=out)
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
    from lmscale.training.evaluate_trained import evaluate_data
    from lmscale.training.restore import load_trained
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
    capsys.readouterr()
    unseen = tmp_path / "unseen.txt"  # a text of the user's: half its words unknown (unsaid)
    unseen.write_text(" ".join(f"zq{i} {w}" for i, w in enumerate(lm.tokenizer.words[3:13])) + "\n")
    evaluate_data(lm, str(unseen))
    train_split = TokenDataset.open(lm.derived["dataset"]).metadata["splits"]["train"]
    assert train_split["unk_tokens"] == 0  # min_count 1: every training word in the vocabulary
    assert (f"note: 47.6% of the 21 tokens of {unseen} are <unk> (words outside the model's "
            "vocabulary, or <unk> in the text; the model's training split: 0.0%)"
            ) in capsys.readouterr().err


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


def test_prepare_counts_each_splits_unk_and_notes_a_training_split_without_any(tmp_path, capsys):
    """A raw corpus at min_count 1 has no <unk> in train, while val/test words outside the
    vocabulary become <unk>: a class the model never trains on, said nowhere before."""
    (tmp_path / "train.txt").write_text("a b c a b\nc a d\n" * 20)
    (tmp_path / "val.txt").write_text("a b zz\nc yy a b c a\n")  # 2 of 11 tokens (<eos>s too) unknown
    prepare_dataset(str(tmp_path / "train.txt"), str(tmp_path / "raw"), tokenizer=WordTraining(),
                    val_inputs=str(tmp_path / "val.txt"), progress=False)
    note = capsys.readouterr().err
    assert "note: the training split holds no <unk>, while <unk> (a word not in the vocabulary) " \
           "is 18.18% of val's tokens" in note and "--word_min_count=2 (or more)" in note
    meta = json.loads((tmp_path / "raw" / "metadata.json").read_text())
    assert [meta["splits"][n]["unk_tokens"] for n in ("train", "val")] == [0, 2]
    run = subprocess.run([sys.executable, "-m", "lmscale.prepare", f"--input={tmp_path / 'train.txt'}",
                          f"--val={tmp_path / 'val.txt'}", f"--output={tmp_path / 'cli'}",
                          "--tokenizer=word"], capture_output=True, text=True, cwd=REPO)
    assert "train: 200 tokens, 1 document, 1 shard, 0.00% <unk>; val: 11 tokens, 1 document, " \
           "1 shard, 18.18% <unk>" in run.stdout, run.stderr[-2000:]  # the tool's summary
    prepare_dataset(str(tmp_path / "train.txt"), str(tmp_path / "rare"), val_inputs=str(tmp_path / "val.txt"),
                    tokenizer=WordTraining(min_count=21), progress=False)  # d (20 times): <unk>
    assert "no <unk>" not in capsys.readouterr().err


def test_texts_read_mostly_as_unk_are_noted_with_examples(capsys):
    """SST's raw sentences against a vocabulary of split, lower-cased text: nearly half its
    words were <unk> in transfer and fine-tuning, unsaid (generate alone said it)."""
    from lmscale.data.words import SPECIALS, unknown_words_note
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good", ","], unk_bytes=3)
    texts = ["The film , is good", "the film is good", "the <unk> is good"]
    ids = [words.encode(t) for t in texts]
    note = unknown_words_note(words, texts, ids, "train.csv")
    assert note.startswith("note: 7.7% of the 13 tokens of train.csv are words outside the "
                           "model's vocabulary (e.g. 'The'), each read as <unk>")
    assert unknown_words_note(words, texts[1:], ids[1:], "x") is None  # a literal <unk> is none
    from lmscale.finetuning.data import encode
    encode(words, lambda t: t, ["The Film is Good."] * 3, None, "val.csv")
    assert "75.0% of the 12 tokens of val.csv" in capsys.readouterr().err


def test_text_byte_lengths_cover_trailing_whitespace():
    """The last token also stands for the whitespace after it: the lengths sum to the text's
    UTF-8 bytes, so a per-token trace covers the text as written."""
    from lmscale.data.words import WordTokenizer
    tok = WordTokenizer(["<pad>", "<unk>", "<eos>", "a", "bé"], unk_bytes=2.0)
    text = "a bé  \t"
    lengths = tok.text_byte_lengths(text)
    assert len(lengths) == len(tok.encode(text)) == 2
    assert lengths.tolist() == [1, 7] and lengths.sum() == len(text.encode("utf-8"))
