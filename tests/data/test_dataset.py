"""TokenDataset: opening a prepared folder and rejecting anything else."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmscale.data.dataset import TokenDataset, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.tokenizer import ByteTokenizer

from tests.data.helpers import make_docs, write_txt_files


@pytest.fixture
def dataset_dir(tmp_path):
    write_txt_files(tmp_path / "in", make_docs(30, seed=0))
    return prepare_dataset(str(tmp_path / "in"), str(tmp_path / "ds"), split=(3, 1, 1),
                           shard_tokens=100, progress=False)


def test_open(dataset_dir):
    ds = TokenDataset.open(dataset_dir)
    assert is_dataset(dataset_dir) and ds.path == dataset_dir
    assert ds.split_names == ["train", "val", "test"]
    assert ds.tokenizer == ByteTokenizer()
    assert ds.total_tokens == ds.metadata["total_tokens"]
    for name in ds.split_names:
        s = ds.split(name)
        meta = ds.metadata["splits"][name]
        assert s.name == name and s.num_tokens == meta["tokens"] and s.num_documents == meta["documents"]
        assert all(m.dtype == np.uint16 and isinstance(m, np.memmap) for m in s.shards)
        assert all(d.dtype == np.int64 and np.all(np.diff(d) > 0) for d in s.doc_starts)
        np.testing.assert_array_equal(s.shard_lengths, [e["tokens"] for e in meta["shards"]])
        np.testing.assert_array_equal(s.read(0, 2, 7), np.asarray(s.shards[0][2:7]))
    with pytest.raises(DataError, match=r"no split 'dev'; available: \['train', 'val', 'test'\]"):
        ds.split("dev")
    with pytest.raises(DataError, match="outside shard 0"):
        ds.split("train").read(0, 0, 10**6)


def test_not_a_dataset(tmp_path):
    assert not is_dataset(tmp_path) and not is_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="metadata.json is missing"):
        TokenDataset.open(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        TokenDataset.open(tmp_path / "nope")


def _edit_metadata(path, fn):
    meta_path = os.path.join(path, "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    fn(meta)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def test_wrong_format_and_version(dataset_dir):
    _edit_metadata(dataset_dir, lambda m: m.update(version=2))
    assert not is_dataset(dataset_dir)
    with pytest.raises(DataError, match="version 2 is not supported"):
        TokenDataset.open(dataset_dir)
    _edit_metadata(dataset_dir, lambda m: m.update(version=1, format="other"))
    with pytest.raises(DataError, match="format is not 'lmscale-tokens'"):
        TokenDataset.open(dataset_dir)


def test_missing_or_wrong_size_shard(dataset_dir):
    shard = os.path.join(dataset_dir, "val", "shard_00000.bin")
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:-2])
    with pytest.raises(DataError, match=rf"val/shard_00000.bin has {len(data) - 2} bytes, metadata says "
                                        rf"{len(data) // 2} tokens"):
        TokenDataset.open(dataset_dir)
    os.remove(shard)
    with pytest.raises(DataError, match="val/shard_00000.bin is missing"):
        TokenDataset.open(dataset_dir)


def test_document_starts_are_read_when_first_needed(tmp_path):
    """Every process held every shard's document starts (8 bytes a document: ~1.6 GB for 200 M
    reviews) though only reset_on_documents reads them: read from the header at open, the
    array when a shard's starts are first asked for; a damaged file is still refused at open."""
    from lmscale.data.dataset import LazyDocStarts
    from lmscale.data.prepare import prepare_dataset
    (tmp_path / "t.txt").write_text("".join(f"document {i}.\n" for i in range(3000)))
    out = prepare_dataset(str(tmp_path / "t.txt"), str(tmp_path / "ds"), txt_mode="line",
                          split=(8, 1, 1), shard_tokens=2048, progress=False)
    train = TokenDataset.open(out).split("train")
    assert isinstance(train.doc_starts, LazyDocStarts) and train.doc_starts._loaded == {}
    assert train.num_documents == sum(len(d) for d in train.doc_starts)  # counts = arrays
    assert len(train.doc_starts._loaded) == train.num_shards
    name = train.doc_starts.paths[1]
    with open(name, "r+b") as f:  # a damaged header
        f.write(b"\0" * 16)
    with pytest.raises(DataError, match="document-start file .* is unreadable"):
        TokenDataset.open(out)
