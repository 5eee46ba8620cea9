"""Val and test files against the training file, in fine-tuning and the transfer (its API
too): a test file that is the training file is refused (its scores were the fit's), a val
file that is is noted (the best weights, or C, were chosen on the texts fitted, unsaid)."""

from __future__ import annotations

import os

import pytest

from lmscale.data.errors import DataError
from lmscale.config import default_config
from lmscale.finetuning.data import load_splits


def _ft(train: str, val: str, test: str = ""):
    c = default_config()
    c.finetune.train, c.finetune.val, c.finetune.test = train, val, test
    return c.finetune


def test_held_out_splits(tmp_path, capsys):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(8)))
    val.write_text("sentence,label\nother,1\nmore,0\n")
    os.symlink(train, tmp_path / "link.csv")
    load_splits(_ft(str(train), str(val), str(val)))
    assert capsys.readouterr().err == ""
    load_splits(_ft(str(train), str(tmp_path / "link.csv")))
    assert (f"note: finetune.val={tmp_path / 'link.csv'} is the finetune.train file: the best "
            f"weights are chosen") in capsys.readouterr().err
    with pytest.raises(DataError, match=r"finetune.test=\S+train.csv is the finetune.train "
                                        r"file: its scores would be measured"):
        load_splits(_ft(str(train), str(val), str(train)))


def test_run_transfer_checks_its_splits_in_the_apis_words(tmp_path, capsys):
    """The transfer's check ran in its command line only: run_transfer (a notebook's, the
    sweep's --transfer_test) scored a test file that was the training file."""
    from lmscale.transfer.run import run_transfer
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(8)))
    with pytest.raises(DataError, match=rf"^test={train} is the train file: its scores would "):
        run_transfer(str(tmp_path / "no_run"), str(train), str(train), str(train))
    assert f"note: val={train} is the train file: C is chosen" in capsys.readouterr().err


def test_class_ids_from_one_are_refused(tmp_path):
    """Labels 1/2 (ids counted from 1) made a 3-class task with a class 0 no text has, silently
    (its F1 of 0 in the macro average); the transfer refuses the same file."""
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"text {i},{i % 2 + 1}\n" for i in range(8)))
    with pytest.raises(DataError, match=r"no text of class id\(s\) \[0\], below its largest, 2; "
                                        r"class ids run from 0"):
        load_splits(_ft(str(train), str(train)))
    c = _ft(str(train), str(train))
    c.num_classes = 3  # said: a class no training text has is kept
    assert load_splits(c)[1] == 3
