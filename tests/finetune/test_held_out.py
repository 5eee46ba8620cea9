"""Fine-tuning's val and test files against its training file: a test file that is the
training file is refused (its scores were the fit's), a val file that is is noted (the best
weights were chosen on the texts trained on, unsaid)."""

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
