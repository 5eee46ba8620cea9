"""Token ids outside the vocabulary (a damaged shard file) are a DataError naming the file
and the id where batches are read, not a model that diverges."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.stream import StreamBatcher
from lmscale.data.variable_bptt import VariableBPTTBatcher

from tests.data.helpers import make_docs, write_txt_files


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damaged")
    write_txt_files(tmp / "in", make_docs(80, seed=3, min_len=20, max_len=60))
    return prepare_dataset(str(tmp / "in"), str(tmp / "ds"), split=(4, 1, 1), shard_tokens=200,
                           progress=False)


def damaged_copy(prepared, tmp_path, shard_file, index, value):
    out = tmp_path / "damaged"
    shutil.copytree(prepared, out)
    ds = TokenDataset.open(out)
    m = np.memmap(os.path.join(out, shard_file), dtype=ds.dtype, mode="r+")
    m[index] = value
    m.flush()
    del m
    return TokenDataset.open(out)


def every_batch(batcher):
    for step in range(batcher.steps_per_epoch):
        batcher.batch(step)


def test_an_intact_dataset_reads_through(prepared):
    ds = TokenDataset.open(prepared)
    b = StreamBatcher(ds.split("train"), 3, 16)
    assert b.vocab_size == ds.tokenizer.vocab_size == 257
    every_batch(b)
    b.tail()


@pytest.mark.parametrize("value", [60000, 257])
def test_an_id_outside_the_vocabulary_names_the_shard_file(prepared, tmp_path, value):
    ds = damaged_copy(prepared, tmp_path, "train/shard_00001.bin", 37, value)
    b = StreamBatcher(ds.split("train"), 3, 16, shuffle_shards=True, seed=5)
    with pytest.raises(DataError) as e:
        every_batch(b)
        every_batch(b)  # (whichever rows read shard 1 at token 37: one epoch reads it)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(os.path.join(str(tmp_path), "damaged", "train", "shard_00001.bin"))
    assert f"token id {value} at token 37 is outside the vocabulary of 257 ids" in message
    with pytest.raises(DataError, match=f"shard_00001.bin: token id {value} at token 37"):
        every_batch(VariableBPTTBatcher(ds.split("train"), 3, 16, max_len=24))


def test_validation_tail_and_explicit_vocab_size(prepared, tmp_path):
    ds = damaged_copy(prepared, tmp_path, "val/shard_00000.bin", 0, 300)
    b = StreamBatcher(ds.split("val"), 1, 8)
    with pytest.raises(DataError, match=r"val/shard_00000\.bin: token id 300 at token 0 "):
        b.batch(0)
    StreamBatcher(ds.split("val"), 1, 8, vocab_size=301).batch(0)  # a caller's vocabulary
