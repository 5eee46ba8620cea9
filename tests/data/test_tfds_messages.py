"""TFDS pieces that need no TensorFlow Datasets installed: how its errors are shortened, the
batched reading of a data source, and a sequence label read from ArrayRecord data."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.data.tfds import _first_line, batched_reads
from lmscale.transfer.labeled import _tfds_label


def test_an_error_that_introduces_a_list_keeps_it_and_tfds_suggestions():
    """The first line alone ended mid-sentence ("... whose name closely match:") and dropped
    TFDS's "Did you mean" line."""
    e = ValueError("BuilderConfig sst3 not found. Here are configs whose name closely match:\n"
                   "  - sst2\n  - stsb\n")
    assert _first_line(e) == ("BuilderConfig sst3 not found. Here are configs whose name "
                              "closely match:; - sst2; - stsb")
    e = ValueError("Dataset imdb_review not found.\nAvailable datasets:\n...\n"
                   "Did you mean: imdb_review -> imdb_reviews ?")
    assert _first_line(e) == ("Dataset imdb_review not found.; Did you mean: imdb_review -> "
                              "imdb_reviews ?")
    assert _first_line(ValueError("")) == "ValueError"


class _Source:
    """A TFDS data source's interface (len and a batch of indices), counting the reads."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, []

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> list[int]:
        self.reads.append(len(indices))
        return [i * 10 for i in indices]


@pytest.mark.parametrize("n", [0, 1, 1024, 1025, 3000])
def test_a_data_source_is_read_whole_in_order_a_batch_at_a_time(n):
    source = _Source(n)
    assert list(batched_reads(source)) == [i * 10 for i in range(n)]
    assert all(r <= 1024 for r in source.reads) and len(source.reads) == -(-n // 1024)


def test_a_sequence_label_from_an_array_record_source_is_named_as_one():
    """ArrayRecord data sources give a sequence feature as a Python list: it was "label
    'tags' is [np.int64(4)], not a number" where TFRecord data said what to do."""
    with pytest.raises(DataError, match=r"label 'tags' is an array of shape \(1,\), not one "
                                        r"class id \(several 0/1 label features"):
        _tfds_label([4], "tfds:x: row 1", "tags")


@pytest.mark.parametrize("setting", ["--label_column", "--labels",
                                     "--config.finetune.label_column"])
def test_an_array_tfds_label_names_the_callers_setting(setting):
    with pytest.raises(DataError, match=re.escape(f"{setting}=a,b,c")):
        _tfds_label(np.array([0, 1]), "tfds:x/train: row 1", "label", setting)


def test_a_fine_tune_is_told_its_label_setting(monkeypatch, capsys):
    """finetune.data reads labels through load_labeled: the way out is its config field, not
    lmscale.transfer's --label_column (which lmscale.finetune refuses as unknown). TFDS is an
    optional extra, absent here: its reads give one example."""
    import lmscale.transfer.labeled as labeled
    from lmscale.config import default_config
    from lmscale.finetuning.data import load_splits

    monkeypatch.setattr(labeled, "parse_tfds", lambda spec: ("x", "train"))
    monkeypatch.setattr(labeled, "iter_examples",
                        lambda spec: iter([{"text": b"good", "label": np.array([0, 1])}]))
    ft = default_config().finetune
    ft.train, ft.val, ft.text_column = "tfds:x/train", "tfds:x/train", "text"
    with pytest.raises(DataError, match=re.escape("--config.finetune.label_column=a,b,c")):
        load_splits(ft)
