"""Preparing the real SST and tiny-shakespeare files from ../shared/data (skipped if absent)."""

from __future__ import annotations

import csv
import os

import pytest

from lmscale.data.dataset import TokenDataset
from lmscale.data.prepare import prepare_dataset
from lmscale.data.stream import StreamBatcher
from lmscale.data.tokenizer import ByteTokenizer

from tests.data.helpers import SHARED_DATA, read_stream

SST = SHARED_DATA / "sst_binary" / "train.csv"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


@pytest.mark.skipif(not SST.exists(), reason=f"{SST} not present")
def test_sst_train_csv(tmp_path):
    with open(SST, newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f)]
    out = prepare_dataset(str(SST), str(tmp_path / "sst"), text_column="sentence", split=(8, 1, 1),
                          progress=False)
    ds = TokenDataset.open(out)
    expected = sum(len(s.encode("utf-8")) for s in sentences)
    assert ds.metadata["total_tokens"] == ds.total_tokens == expected
    assert ds.metadata["total_documents"] == sum(1 for s in sentences if s)
    tokens, _ = read_stream(out)
    assert ByteTokenizer().decode(tokens) == "".join(sentences)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not present")
def test_tinyshakespeare_lines_and_batches(tmp_path):
    out = prepare_dataset(str(SHAKESPEARE), str(tmp_path / "tiny"), txt_mode="line", split=(98, 1, 1),
                          shard_tokens=2**14, progress=False)
    ds = TokenDataset.open(out)
    assert ds.total_tokens == os.path.getsize(SHAKESPEARE)
    b = StreamBatcher(ds.split("train"), 32, 128, reset_on_documents=True)
    batch = b.batch(b.steps_per_epoch - 1)
    assert batch.inputs.shape == (32, 128) and batch.resets.any() and (batch.weights == 0).any()
