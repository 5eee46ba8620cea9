"""A literal U+2581 "▁" (SentencePiece's own space symbol) round-trips through lmscale's
SentencePiece tokenizer, and text without it keeps SentencePiece's ids."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lmscale.data.spm import SentencePieceTokenizer, SentencePieceTraining, train_sentencepiece

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n"
        + "héllo wörld 日本語 and some more words to learn pieces from.\n\n") * 20


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return train_sentencepiece([TEXT], SentencePieceTraining(vocab_size=300), source="test")


@pytest.mark.parametrize("text", ["\u2581 literal", "\u2581", "\u2581\u2581a\u2581 b",
                                  "the \u2581fox\n\n\u2581\n", "日本\u2581語", " \u2581 "])
def test_a_literal_space_symbol_round_trips(tok, text):
    """It decoded as a space and counted 1 byte of its 3: "▁ literal" -> "  literal", 9 of 11."""
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.byte_lengths()[ids.astype(np.int64)].sum()) == len(text.encode("utf-8"))
    assert tok.keeps_space_symbol


def test_text_without_it_keeps_sentencepiece_ids(tok):
    for text in ["the quick brown fox", "  two  spaces\n\nand a paragraph", "日本語 😀", ""]:
        assert tok.encode(text).tolist() == [i + 1 for i in tok.processor.encode(text)]


def test_encode_batch_is_encode_per_text(tok):
    texts = ["\u2581", "", "ab \u2581c", "x", "\u2581\u2581"]
    ids, counts = tok.encode_batch(texts)
    assert counts.tolist() == [len(tok.encode(t)) for t in texts]
    assert ids.tolist() == [i for t in texts for i in tok.encode(t).tolist()]


def test_a_model_without_byte_fallback_reads_it_as_a_space():
    """No byte pieces to spell "▁" with: as before (said by lossy_settings)."""
    import sentencepiece as spm
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), model_writer=writer,
                                   vocab_size=40, minloglevel=2)
    outside = SentencePieceTokenizer(writer.getvalue())
    assert not outside.keeps_space_symbol
    assert outside.encode("a\u2581b").tolist() == outside.encode("a b").tolist()
    assert any("U+2581" in s for s in outside.lossy_settings())


@pytest.mark.parametrize("options", [dict(add_dummy_prefix=True, remove_extra_whitespaces=False),
                                     dict(add_dummy_prefix=False, remove_extra_whitespaces=True),
                                     dict(add_dummy_prefix=True, remove_extra_whitespaces=True)])
def test_a_model_with_dummy_prefix_or_whitespace_removal_keeps_sentencepiece_ids(options):
    """Such a model (trained elsewhere) treats a string's edges specially: encoded paragraph
    by paragraph it got a "▁" at each paragraph's start, or lost the space between them."""
    import sentencepiece as spm
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), model_writer=writer,
                                   vocab_size=120, model_type="bpe", minloglevel=2, **options)
    tok = SentencePieceTokenizer(writer.getvalue())
    for text in ["Para one.\n\nPara two.", "a\n\n\nb\n\n", "x" * 20000 + "\ny\n" + "z" * 20000]:
        assert tok.encode(text).tolist() == [i + 1 for i in tok.processor.encode(text)]


def test_unknown_pieces_of_a_model_without_byte_fallback_are_noted():
    import sentencepiece as spm
    from lmscale.data.words import unknown_words_note
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), model_writer=writer,
                                   vocab_size=20, model_type="word", minloglevel=2)
    outside = SentencePieceTokenizer(writer.getvalue())
    texts = ["zebra xylophone the fox", "the quick brown fox"]
    note = unknown_words_note(outside, texts, [outside.encode(t) for t in texts])
    assert note and "<unk>" in note and "'zebra xylophone'" in note
    assert unknown_words_note(outside, texts[1:], [outside.encode(texts[1])]) is None


def test_a_model_with_byte_fallback_has_no_unknown_note(tok):
    from lmscale.data.words import unknown_words_note
    assert unknown_words_note(tok, ["zebra 🦓"], [tok.encode("zebra 🦓")]) is None
