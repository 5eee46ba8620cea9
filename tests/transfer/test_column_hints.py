"""A missing text or label column in ``lmscale.transfer`` names the setting (flag, or the
API's argument) that sets it, as ``prepare`` and ``classify`` do; ``load_labeled`` appends a
caller's hint."""

from __future__ import annotations

import re

import pytest

from lmscale.data.errors import DataError
from lmscale.transfer.labeled import load_labeled
from lmscale.transfer.run import run_transfer
from tests.transfer.conftest import random_lm, write_labeled


@pytest.mark.parametrize("flag, value", [("text_column", "text"), ("label_column", "stars"),
                                         ("label_column", "label,joy")])
def test_transfer_names_the_flag_of_a_missing_column(tmp_path, flag, value):
    path = write_labeled(tmp_path / "train.csv", [("good", 1), ("bad", 0)])
    missing = value.split(",")[-1]
    with pytest.raises(DataError, match=re.escape(
            f"train.csv: no column {missing!r}; columns are ['sentence', 'label'] "
            "(set text_column / label_column)")):  # from the API: its arguments
        run_transfer(str(tmp_path), path, path, lm=random_lm(), baseline="none", Cs=[1.0],
                     **{flag: value})
    assert not (tmp_path / "transfer").exists()


def test_load_labeled_appends_the_hint_to_every_format(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"sentence": "good", "label": 1}\n')
    with pytest.raises(DataError, match=re.escape("no field 'text'; keys are ['label', "
                                                  "'sentence'] (set --x)")):
        load_labeled(str(jsonl), text_column="text", column_hint="set --x")
    csv_path = write_labeled(tmp_path / "t.csv", [("good", 1)])
    with pytest.raises(DataError, match=r"no column 'text'; columns are \['sentence', 'label'\]$"):
        load_labeled(csv_path, text_column="text")  # no hint given: none added
