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


def test_an_id_past_int32_in_a_uint32_shard_is_caught():
    """Batches are int32: a damaged uint32 shard's id >= 2**31 reads as a negative id, which
    a max over the int32 window misses (an embedding lookup clamps it, silently)."""
    from lmscale.data.dataset import SplitData
    shards = [np.arange(40, dtype=np.uint32) % 7 for _ in range(2)]
    shards[1][5] = 2**31 + 5
    split = SplitData("train", shards, [np.zeros(1, np.int64)] * 2, vocab_size=1000)
    with pytest.raises(DataError, match=r"token id 2147483653 at token 5 is outside the "
                                        r"vocabulary of 1000 ids"):
        every_batch(StreamBatcher(split, 2, 8))
