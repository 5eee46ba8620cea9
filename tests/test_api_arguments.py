"""The API's entry points name the argument a notebook got wrong: a workdir of None, a
config given as its file's path or as a dict (they were TypeErrors from posixpath and
AttributeErrors on ``.get``/``.data``, naming no argument)."""

from __future__ import annotations

import pytest

from lmscale.finetuning.loop import finetune
from lmscale.training.loop import train
from lmscale.transfer.run import run_transfer
from tests.conftest import tiny_config


@pytest.mark.parametrize("entry", [train, finetune])
def test_a_config_that_is_no_configdict_is_named(entry, tmp_path, corpus):
    with pytest.raises(TypeError, match=r"config must be an ml_collections.ConfigDict, got str "
                                        r"\(a config file's path: load it with "
                                        r"lmscale.config.config_from_file\(path\)\)"):
        entry("configs/quickstart.py", str(tmp_path / "run"))
    with pytest.raises(TypeError, match="config must be an ml_collections.ConfigDict, got dict$"):
        entry({"model": {}}, str(tmp_path / "run"))
    with pytest.raises(TypeError, match="workdir must be a folder \\(a str or path\\), got None"):
        entry(tiny_config(corpus), None)
    assert not (tmp_path / "run").exists()


def test_a_transfer_of_no_workdir_is_named():
    with pytest.raises(TypeError, match="workdir must be a folder \\(a str or path\\), got None"):
        run_transfer(None, "train.csv", "val.csv")
