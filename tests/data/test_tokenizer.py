"""ByteTokenizer: both id mappings, round trips, invalid UTF-8, serialization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.data.tokenizer import ByteTokenizer, tokenizer_from_dict

TOKENIZERS = [ByteTokenizer.sentiment_discovery(), ByteTokenizer.openai()]


def test_defaults_and_vocab_sizes():
    assert ByteTokenizer() == ByteTokenizer.sentiment_discovery() == ByteTokenizer(offset=1, pad_id=0)
    assert ByteTokenizer.openai() == ByteTokenizer(offset=0, pad_id=None)
    assert ByteTokenizer.sentiment_discovery().vocab_size == 257
    assert ByteTokenizer.openai().vocab_size == 256
    assert ByteTokenizer().token_dtype == np.uint16


@pytest.mark.parametrize("tok", TOKENIZERS, ids=["sentiment_discovery", "openai"])
def test_all_bytes_round_trip(tok):
    data = bytes(range(256))
    ids = tok.encode(data)
    assert ids.dtype == np.uint16 and ids.shape == (256,)
    np.testing.assert_array_equal(ids, np.arange(256) + tok.offset)
    assert tok.decode_bytes(ids) == data


@pytest.mark.parametrize("tok", TOKENIZERS, ids=["sentiment_discovery", "openai"])
def test_random_bytes_round_trip_and_decode_never_raises(tok):
    rng = np.random.default_rng(0)
    for n in [0, 1, 7, 1000]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        ids = tok.encode(data)
        assert tok.decode_bytes(ids) == data
        assert tok.decode_bytes(list(ids.astype(int))) == data
        assert isinstance(tok.decode(ids), str)
    invalid = b"ok \xff\xfe \xc3"
    assert tok.decode(tok.encode(invalid)) == invalid.decode("utf-8", errors="replace")


def test_str_is_utf8():
    tok = ByteTokenizer()
    text = "héllo → wörld"
    np.testing.assert_array_equal(tok.encode(text), np.frombuffer(text.encode(), np.uint8) + 1)
    assert tok.decode(tok.encode(text)) == text


def test_pad_is_dropped_and_out_of_range_raises():
    tok = ByteTokenizer()
    assert tok.decode_bytes([0, 105, 0, 106, 0]) == b"hi"
    with pytest.raises(DataError, match="257"):
        tok.decode_bytes([257])
    with pytest.raises(DataError, match="256"):
        ByteTokenizer.openai().decode_bytes([256])
    with pytest.raises(DataError, match="-1"):
        ByteTokenizer.openai().decode_bytes([-1])


def test_dict_round_trip():
    for tok in TOKENIZERS:
        d = tok.to_dict()
        assert d["kind"] == "byte"
        assert tokenizer_from_dict(json.loads(json.dumps(d))) == tok
    assert ByteTokenizer().to_dict() == {"kind": "byte", "offset": 1, "pad_id": 0}
    with pytest.raises(DataError, match="sentencepiece"):
        tokenizer_from_dict({"kind": "sentencepiece", "model": "x.model"})


def test_bad_settings():
    with pytest.raises(DataError):
        ByteTokenizer(offset=1, pad_id=5)  # pad would collide with a byte id


def test_byte_lengths_count_no_byte_for_padding():
    """Each byte id stands for one byte, the padding id for none (bpc counts text bytes)."""
    from lmscale.data.tokenizer import ByteTokenizer
    sd = ByteTokenizer.sentiment_discovery().byte_lengths()
    assert sd.shape == (257,) and sd[0] == 0 and (sd[1:] == 1).all()
    assert (ByteTokenizer.openai().byte_lengths() == 1).all()
