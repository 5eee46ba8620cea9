"""SentencePieceTokenizer: exact round trips, byte lengths, serialization, training errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.data.spm import (MODEL_FILE, MODEL_TYPES, SentencePieceTokenizer,
                              SentencePieceTraining, train_sentencepiece, training_sentences)
from lmscale.data.tokenizer import ByteTokenizer, smallest_uint_dtype, tokenizer_from_dict

from tests.data.helpers import SHARED_DATA, make_text

TEXTS = ["naïve café — 東京 🙂", "", " leading space", "trailing spaces   ", "tabs\t\tand\n\n\nnewlines\n",
         "   ", "kato rimen 42 7", "unseen: Ωμέγα ☃ ∑ 𝔘 \u00a0nbsp \u200b zero-width\r\n", "a" * 5000]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tok(request) -> SentencePieceTokenizer:
    texts = [make_text(4000, seed=s) for s in range(5)]
    return train_sentencepiece(iter(texts), SentencePieceTraining(vocab_size=600, model_type=request.param),
                               source="generated text")


def test_round_trip_exact(tok):
    assert tok.vocab_size == 601 and tok.pad_id == 0 and tok.token_dtype == np.uint16
    for text in TEXTS + [make_text(300, seed=99)]:
        ids = tok.encode(text)
        assert ids.dtype == np.uint16 and (ids >= 1).all() and (ids < tok.vocab_size).all()
        assert tok.decode(ids) == text
        assert tok.decode(np.concatenate([[0], ids, [0, 0]])) == text  # padding is dropped
    assert tok.encode(TEXTS[0].encode()).tolist() == tok.encode(TEXTS[0]).tolist()
    long = make_text(2000, seed=7)
    assert len(tok.encode(long)) < len(long.encode()) / 2  # it learned subwords


def test_byte_lengths_sum_to_utf8_bytes(tok):
    lengths = tok.byte_lengths()
    assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32 and lengths[0] == 0
    for text in TEXTS + [make_text(500, seed=5)]:
        assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    assert (lengths[1:] >= 0).all() and lengths.max() > 1


def test_encode_batch_equals_encode(tok):
    ids, counts = tok.encode_batch(TEXTS)
    assert counts.tolist() == [len(tok.encode(t)) for t in TEXTS]
    np.testing.assert_array_equal(ids, np.concatenate([tok.encode(t) for t in TEXTS]))


def test_dict_round_trip_from_another_directory(tok, tmp_path):
    tok.save(str(tmp_path / "a"))
    d = json.loads(json.dumps(tok.to_dict()))
    assert d == {"kind": "sentencepiece", "model": MODEL_FILE, "sha256": tok.sha256, "vocab_size": 601}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    back = tokenizer_from_dict(d, base_dir=str(tmp_path / "b"))
    assert back == tok and back.vocab_size == tok.vocab_size
    for text in TEXTS:
        np.testing.assert_array_equal(back.encode(text), tok.encode(text))
    with pytest.raises(DataError, match=r"a/tokenizer\.model is missing"):
        tokenizer_from_dict(d, base_dir=str(tmp_path / "a"))
    with pytest.raises(DataError, match="base_dir"):
        tokenizer_from_dict(d)
    with pytest.raises(DataError, match="SHA-256"):
        tokenizer_from_dict(dict(d, sha256="0" * 64), base_dir=str(tmp_path / "b"))


def test_not_a_model(tmp_path):
    for name, data in [("junk.model", b"this is not a model\n" * 10), ("empty.model", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name} is not a SentencePiece model"):
            SentencePieceTokenizer.from_file(tmp_path / name)
    with pytest.raises(DataError, match="does not exist"):
        SentencePieceTokenizer.from_file(tmp_path / "nope.model")


def test_decode_out_of_range(tok):
    with pytest.raises(DataError, match="601 out of range"):
        tok.decode([5, 601])
    with pytest.raises(DataError, match="must be integers"):
        tok.decode(np.array([1.0]))


def test_vocabulary_too_large_for_the_sample():
    with pytest.raises(DataError, match=r"^--vocab_size=5000 is too large for the [\d,]+-byte sample of "
                                        r"tiny text: it supports at most \d+ pieces"):
        train_sentencepiece(iter(["the cat sat on the mat. " * 20]), SentencePieceTraining(vocab_size=5000),
                            source="tiny text")


def test_vocabulary_too_large_names_the_remedies_that_can_work():
    """A sample cut at its cap: "more text" could not help (the cap is what to raise); a
    sample supporting fewer than the smallest vocabulary: a smaller one could not either."""
    text = make_text(3000, seed=1)[:2950]  # ~3.6 kB: the sample prepare cuts at 3000 bytes
    with pytest.raises(DataError) as e:
        train_sentencepiece(iter([text]), SentencePieceTraining(vocab_size=2000, sample_bytes=3000),
                            source="x")
    assert str(e.value).endswith("; use a smaller --vocab_size or a larger --sp_sample_bytes")
    with pytest.raises(DataError) as e:
        train_sentencepiece(iter(["a"]), SentencePieceTraining(vocab_size=400), source="x")
    assert str(e.value).endswith("at most 259 pieces; use more text"), str(e.value)


def test_text_without_a_space_trains():
    """The space is a required piece that such a text (CJK-like) never holds: sentencepiece
    0.2.2 and older aborted the whole process there (a failed C++ check in BPE training)."""
    rng = np.random.default_rng(0)
    text = "\n".join("".join(rng.choice(list("abcdefghij"), 60)) for _ in range(300))
    tok = train_sentencepiece(iter([text]), SentencePieceTraining(vocab_size=300), source="x")
    assert tok.decode(tok.encode("abcj\nhig")) == "abcj\nhig"


def test_bad_training_options():
    with pytest.raises(DataError, match="--vocab_size=100 is too small"):
        SentencePieceTraining(vocab_size=100)
    with pytest.raises(DataError, match="data.vocab_size=100 is too small"):
        SentencePieceTraining(vocab_size=100, option_prefix="data.")
    with pytest.raises(DataError, match="--sp_model_type must be one of"):
        SentencePieceTraining(model_type="word")
    with pytest.raises(DataError, match="--sp_sample_bytes must be a positive integer"):
        SentencePieceTraining(sample_bytes=0)


def test_iterator_errors_are_not_swallowed():
    def texts():
        yield make_text(100)
        raise DataError("broken input")

    with pytest.raises(DataError, match="broken input"):
        train_sentencepiece(texts(), SentencePieceTraining(vocab_size=300), source="x")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_training_gives_one_model_whatever_the_cores(monkeypatch, model_type):
    """The model trained on a text is the same under any CPU affinity (taskset, a Slurm job's
    cpuset): SentencePiece's threads were the usable cores, which split its work, so a unigram
    model's piece order (the ids) and scores, and any model file's bytes, followed them."""
    texts = [make_text(3000, seed=s) for s in range(4)]
    models = []
    for cores in ({0}, set(range(4))):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: c, raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda c=cores: len(c))
        tok = train_sentencepiece(iter(texts), SentencePieceTraining(vocab_size=400,
                                                                     model_type=model_type),
                                  source="x")
        models.append(tok.sha256)
    assert models[0] == models[1]


def test_training_sentences_cut_at_lines_and_characters():
    text = make_text(3000, seed=3) + "東" * 3000
    sentences = list(training_sentences([text], max_bytes=100))
    assert "".join(sentences) == text
    assert all(0 < len(s.encode()) <= 100 for s in sentences)


def test_a_long_line_is_cut_at_characters_whole():
    # A line is encoded once and cut along its bytes (each cut re-encoded and copied the rest
    # of the line: an 8 MB line took 3.6 s, 50 MB ~140 s; benchmarks/README.md): every cut
    # falls between characters and the pieces join back to the line.
    line = ("words and 東京 " * 3000)[:30_001]
    sentences = list(training_sentences([line], max_bytes=100))
    assert "".join(sentences) == line and all(0 < len(s.encode()) <= 100 for s in sentences)
    assert sum(len(s.encode()) < 98 for s in sentences) <= 1  # full cuts but the last


def test_smallest_dtype():
    assert smallest_uint_dtype(256) == np.uint8 and smallest_uint_dtype(257) == np.uint16
    assert smallest_uint_dtype(65536) == np.uint16 and smallest_uint_dtype(65537) == np.uint32
    assert ByteTokenizer.openai().token_dtype == np.uint8
    assert ByteTokenizer.sentiment_discovery().token_dtype == np.uint16


SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not present")
def test_tinyshakespeare_round_trip():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = train_sentencepiece(iter([text]), SentencePieceTraining(vocab_size=1000), source="tinyshakespeare")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.byte_lengths()[ids].sum()) == len(text.encode())
    assert len(ids) < 0.45 * len(text)


def test_spans_join_to_the_text():
    from lmscale.data import spm as spm_lib
    text = make_text(4000, seed=8) + "\n\n\n" + "x" * 40000 + "\n" + "word " * 5000
    parts = spm_lib.spans(text)
    assert "".join(parts) == text and all(parts)
    assert any(len(p) > spm_lib.MAX_SPAN_CHARS for p in parts)  # one line longer than the cap stays whole
    assert spm_lib.spans("a\n\nb\n\n\nc") == ["a\n\n", "b\n\n\n", "c"] and spm_lib.spans("") == []


def test_unknown_and_control_pieces_count_no_bytes(tok):
    """<unk> (a model without byte fallback gives it for an unseen character) decodes to
    nothing and counts 0 bytes, not the 5 of its piece's name."""
    sp = tok.processor
    specials = [i for i in range(sp.get_piece_size()) if sp.is_unknown(i) or sp.is_control(i)]
    assert sp.unk_id() in specials
    assert all(tok.byte_lengths()[i + 1] == 0 for i in specials)
