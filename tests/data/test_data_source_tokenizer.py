"""The tokenizer part of lmscale.training.data_source: make_tokenizer, vocab_size_of, and
preparing a run's data with SentencePiece into WORKDIR/data."""

from __future__ import annotations

import json

import pytest

from lmscale.config import default_config
from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.spm import SentencePieceTraining
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.training.data_source import make_tokenizer, resolve_dataset, vocab_size_of

from tests.data.helpers import make_text


def test_byte_tokenizers():
    data = default_config().data
    assert make_tokenizer(data) == ByteTokenizer.sentiment_discovery() and vocab_size_of(data) == 257
    data.tokenizer = "openai"
    assert make_tokenizer("openai") == ByteTokenizer.openai() and vocab_size_of(data) == 256
    data.tokenizer = "words"
    with pytest.raises(DataError, match="data.tokenizer must be one of"):
        vocab_size_of(data)


def test_sentencepiece_prepared_in_workdir(tmp_path):
    (tmp_path / "a.txt").write_text(make_text(3000, seed=2), encoding="utf-8")
    data = default_config().data
    data.train, data.tokenizer, data.vocab_size, data.split = str(tmp_path / "a.txt"), "sentencepiece", 500, "8,1,1"
    data.shard_tokens = 1000
    assert make_tokenizer(data) == SentencePieceTraining(vocab_size=500)
    assert vocab_size_of(data) == 501
    target = resolve_dataset(data, str(tmp_path / "run"), progress=False)
    ds = TokenDataset.open(target)
    assert ds.tokenizer.vocab_size == 501
    request = json.loads((tmp_path / "run" / "data_request.json").read_text())
    assert request["vocab_size"] == 500 and request["sp_model_type"] == "bpe" and "sp_sample_bytes" in request
    mtime = (tmp_path / "run" / "data" / "metadata.json").stat().st_mtime_ns
    assert resolve_dataset(data, str(tmp_path / "run"), progress=False) == target  # reused
    assert (tmp_path / "run" / "data" / "metadata.json").stat().st_mtime_ns == mtime
    data.train = target  # a prepared dataset: its own tokenizer, whatever data.* says
    data.vocab_size = 9999
    assert vocab_size_of(data) == 501
    data.train, data.sp_model = str(tmp_path / "a.txt"), f"{target}/tokenizer.model"
    assert vocab_size_of(data) == 501 and make_tokenizer(data) == ds.tokenizer
    data.sp_model = str(tmp_path / "missing.model")
    with pytest.raises(DataError, match="missing.model does not exist"):
        vocab_size_of(data)
    data.sp_model, data.vocab_size = "", 12
    with pytest.raises(DataError, match="data.vocab_size=12 is too small"):
        vocab_size_of(data)
