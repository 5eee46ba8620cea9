"""TFDS pieces that need no TensorFlow Datasets installed: how its errors are shortened, the
batched reading of a data source, and a sequence label read from ArrayRecord data."""

from __future__ import annotations

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
