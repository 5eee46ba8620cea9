"""prepare_dataset with SentencePiece: trained and reused models, uint16 shards, document
starts in tokens, multi-piece documents, errors; sampling; tfds inputs."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from lmscale.data import prepare as prepare_lib
from lmscale.data import sample as sample_lib
from lmscale.data import sources as sources_lib
from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.sample import sample_texts
from lmscale.data.spm import SentencePieceTokenizer, SentencePieceTraining
from lmscale.data.tfds import iter_text

from tests.data.helpers import leftovers, make_text, read_stream

TRAIN = SentencePieceTraining(vocab_size=1000)


def write_jsonl(path, docs: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")


def doc_token_starts(tok, docs: list[str]) -> np.ndarray:
    lengths = [len(tok.encode(d)) for d in docs if d]
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    docs = [make_text(int(n), seed=i) for i, n in enumerate(np.random.default_rng(0).integers(1, 400, 120))]
    docs[5] = ""  # an empty document vanishes
    write_jsonl(folder / "docs.jsonl", docs)
    out = prepare_dataset(str(folder / "docs.jsonl"), str(folder / "out"), tokenizer=TRAIN,
                          split=(8, 1, 1), shard_tokens=2000, progress=False)
    return folder, docs, out


def test_trained_end_to_end(corpus):
    folder, docs, out = corpus
    ds = TokenDataset.open(out)
    tok = ds.tokenizer
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 1001
    meta = ds.metadata
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == tok.to_dict()
    assert meta["options"]["tokenizer_training"] == {"vocab_size": 1000, "model_type": "bpe",
                                                     "sample_bytes": 100_000_000}
    assert os.path.isfile(os.path.join(out, "tokenizer.model"))
    assert all(s.dtype == np.uint16 for name in ds.split_names for s in ds.split(name).shards)
    tokens, starts = read_stream(out)
    assert tok.decode(tokens) == "".join(docs)
    np.testing.assert_array_equal(starts, doc_token_starts(tok, docs))
    assert meta["total_documents"] == len(docs) - 1 == len(starts)
    assert meta["total_tokens"] == len(tokens) < 0.6 * len("".join(docs).encode())
    for e in [e for s in meta["splits"].values() for e in s["shards"]]:
        assert os.path.getsize(os.path.join(out, e["file"])) == 2 * e["tokens"]


def test_dataset_moved_elsewhere_and_tampered_model(corpus, tmp_path):
    _, docs, out = corpus
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert TokenDataset.open(moved).tokenizer == TokenDataset.open(out).tokenizer
    (moved / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(DataError, match="is not a SentencePiece model"):
        TokenDataset.open(moved)
    os.remove(moved / "tokenizer.model")
    with pytest.raises(DataError, match=r"tokenizer\.model is missing"):
        TokenDataset.open(moved)


def test_sp_model_reuse_gives_identical_shards(corpus, tmp_path):
    folder, _, out = corpus
    tok = SentencePieceTokenizer.from_file(os.path.join(out, "tokenizer.model"))
    again = prepare_dataset(str(folder / "docs.jsonl"), str(tmp_path / "again"), tokenizer=tok,
                            split=(8, 1, 1), shard_tokens=2000, progress=False)
    a, b = read_stream(out), read_stream(again)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with open(os.path.join(again, "metadata.json")) as f:
        assert json.load(f)["tokenizer"] == tok.to_dict()
    assert (tmp_path / "again" / "tokenizer.model").read_bytes() == tok.model_proto


@pytest.mark.parametrize("chunk, encode_bytes", [(7, 1 << 20), (100, 50), (1 << 24, 1)])
def test_documents_read_in_pieces(corpus, tmp_path, monkeypatch, chunk, encode_bytes):
    """Whole .txt files arrive in pieces (cut mid-character here); they are re-cut at
    newlines (or, in a long line, at character boundaries) and still round-trip."""
    _, _, out = corpus
    tok = SentencePieceTokenizer.from_file(os.path.join(out, "tokenizer.model"))
    docs = [make_text(300, seed=11), "東京" * 200 + "🙂" * 50, "", make_text(50, seed=12) + "\n"]
    for i, d in enumerate(docs):
        (tmp_path / f"d{i}.txt").write_text(d, encoding="utf-8")
    monkeypatch.setattr(sources_lib, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(prepare_lib, "ENCODE_BYTES", encode_bytes)
    res = prepare_dataset(str(tmp_path / "d*.txt"), str(tmp_path / "out"), tokenizer=tok, split=(1, 0, 0),
                          progress=False)
    tokens, starts = read_stream(res)
    assert tok.decode(tokens) == "".join(docs)
    lengths = [len(tok.decode(tokens[s:e]).encode()) for s, e in zip(starts, [*starts[1:], len(tokens)])]
    assert lengths == [len(d.encode()) for d in docs if d]  # each document starts at its first token


def test_vocabulary_too_large_leaves_nothing(tmp_path):
    (tmp_path / "small.txt").write_text("the cat sat on the mat.\n" * 50)
    with pytest.raises(DataError, match=r"--vocab_size=20000 is too large for the 1,200-byte sample of "
                                        r".*small\.txt: it supports at most \d+ pieces"):
        prepare_dataset(str(tmp_path / "small.txt"), str(tmp_path / "out"),
                        tokenizer=SentencePieceTraining(vocab_size=20000), progress=False)
    assert leftovers(tmp_path / "out") == []


def test_sample_is_bounded_and_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_lib, "WINDOW_BYTES", 1000)
    (tmp_path / "big.txt").write_text("".join(f"line {i:06d}\n" for i in range(20000)))  # 240 kB
    (tmp_path / "small.txt").write_text("".join(f"tiny {i:06d}\n" for i in range(2000)))  # 24 kB
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}\n"}) + "\n" for i in range(5000)))
    paths = [str(tmp_path / n) for n in ("big.txt", "rows.jsonl", "small.txt")]
    texts = list(sample_texts(paths, 20_000))
    sample = "".join(texts)
    assert 15_000 <= len(sample.encode()) <= 20_000
    lines = sample.splitlines()
    big = [int(x.split()[1]) for x in lines if x.startswith("line ")]
    assert min(big) == 0 and max(big) > 18000 and len(big) > 1000  # windows through the whole file
    assert [x for x in lines if not (x.startswith(("line ", "tiny ", "row ")) and len(x.split()) == 2)] == []
    assert 0 < sum(x.startswith("tiny ") for x in lines) < sum(x.startswith("line ") for x in lines)
    assert "row 0" in lines and "row 4999" not in lines  # a share under 32 KiB: one window, at the start
    assert "".join(sample_texts(paths, 10**9)) == "".join(open(p).read() if p.endswith(".txt") else
                                                          "".join(f"row {i}\n" for i in range(5000))
                                                          for p in paths)


def test_tfds_input_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed (no download)
    with pytest.raises(DataError, match=r"pip install 'lmscale\[tfds\]'"):
        prepare_dataset("tfds:imdb_reviews/train", str(tmp_path / "out"), text_field="text", progress=False)
    assert leftovers(tmp_path / "out") == []
    with pytest.raises(DataError, match="expected tfds:NAME/SPLIT"):
        prepare_dataset("tfds:imdb_reviews", str(tmp_path / "out"), progress=False)


def test_tfds_text_feature():
    examples = [{"text": b"caf\xc3\xa9", "label": 1}, {"text": np.array(b"two"), "label": 0},
                {"text": b"", "label": 0}, {"text": "str", "label": 1}]
    assert list(iter_text(iter(examples), "text", "tfds:x/train")) == ["café".encode(), b"two", b"str"]
    with pytest.raises(DataError, match=r"tfds:x/train: no feature 'body'; features are \['label', 'text'\]"):
        list(iter_text(iter(examples), "body", "tfds:x/train"))
    with pytest.raises(DataError, match="feature 'label' is a int, not text"):
        list(iter_text(iter(examples), "label", "tfds:x/train"))


def test_invalid_utf8_is_said_once_with_its_files(corpus, tmp_path, capsys):
    """SentencePiece reads Unicode: invalid bytes become U+FFFD, which changes the byte counts
    bpc divides by. Preparation says so, naming the file and how many of its pieces."""
    folder, docs, out = corpus
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(docs[0] + "\n", encoding="utf-8")
    bad.write_bytes(docs[1].encode() + b"\nlatin-1 caf\xe9 here\n")
    model = SentencePieceTokenizer.from_file(os.path.join(out, "tokenizer.model"))
    prepare_dataset([str(good)], str(tmp_path / "ok"), tokenizer=model, split=(1, 0, 0),
                    progress=False)
    assert "UTF-8" not in capsys.readouterr().err
    prepare_dataset([str(good), str(bad)], str(tmp_path / "out"), tokenizer=model,
                    split=(1, 0, 0), progress=False)
    err = capsys.readouterr().err
    assert f"note: invalid UTF-8 in {bad} (1) (pieces of text per file)" in err, err
    assert "U+FFFD" in err and str(good) not in err


def test_a_rare_space_stays_a_space(tmp_path):
    """In text with few spaces (CJK) the space fell under the character coverage: it came back
    as the byte-fallback bytes of "▁" — decoded "一▁丁", and 3 bytes to bpc for 1."""
    from lmscale.data.spm import train_sentencepiece
    rng = np.random.default_rng(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 300)] + ["。", "\n"]
    text = [chars[i] for i in rng.integers(0, len(chars), 30000)]
    for i in range(0, 30000, 3000):
        text[i] = " "
    tok = train_sentencepiece(["".join(text)], SentencePieceTraining(vocab_size=600), source="cjk")
    sample = "一 丁 七"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert int(tok.byte_lengths()[np.asarray(ids)].sum()) == len(sample.encode())


def test_an_outside_model_that_does_not_round_trip_and_a_literal_space_symbol_are_said(
        corpus, tmp_path, capsys):
    """--sp_model trained elsewhere with SentencePiece's defaults (NFKC, a dummy prefix, no
    byte fallback) gave bpc over its pieces' bytes (30 of a 69-byte text) silently; text holding
    "▁" reads it as a space. Each is one note; lmscale's own model gives neither."""
    import io
    import sentencepiece as spm
    folder, docs, out = corpus
    text = tmp_path / "t.txt"
    text.write_text("".join(docs[:40]) + "\n", encoding="utf-8")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.read_text().splitlines()),
                                   model_writer=writer, vocab_size=300, minloglevel=2)
    (tmp_path / "ext.model").write_bytes(writer.getvalue())
    outside = SentencePieceTokenizer.from_file(tmp_path / "ext.model")
    assert len(outside.lossy_settings()) == 4  # NFKC, dummy prefix, whitespace, no fallback
    prepare_dataset([str(text)], str(tmp_path / "a"), tokenizer=outside, split=(1, 0, 0),
                    progress=False)
    err = capsys.readouterr().err
    assert "ext.model: it normalizes the text (nmt_nfkc)" in err and "--vocab_size" in err
    own = SentencePieceTokenizer.from_file(os.path.join(out, "tokenizer.model"))
    assert own.lossy_settings() == []
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("a bar\u2581chart\n" + text.read_text(), encoding="utf-8")
    prepare_dataset([str(blocks)], str(tmp_path / "b"), tokenizer=own, split=(1, 0, 0),
                    progress=False)
    err = capsys.readouterr().err  # own model: "▁" kept (its byte-fallback pieces), no note
    assert "space symbol" not in err and "normalizes" not in err
    prepare_dataset([str(blocks)], str(tmp_path / "c"), tokenizer=outside, split=(1, 0, 0),
                    progress=False)
    assert f"SentencePiece's own space symbol, in {blocks} (1)" in capsys.readouterr().err
