"""Messages worded for their reader: the command-line tools name their flags, the Python API
(a notebook) config fields and arguments."""

from __future__ import annotations

import pytest

from lmscale import messages
from lmscale.messages import errors_for_caller, for_caller

MESSAGE = ("use another --workdir, the same model config (--config.model.hidden=64), or "
           "--config.resume=false; raise --config.train.steps; data.x='a b' (set "
           "--config.finetune.text_column / --config.finetune.label_column)")


def test_the_api_is_told_config_fields_and_the_cli_its_flags(monkeypatch):
    assert for_caller(MESSAGE) == (
        "use another workdir, the same model config (config.model.hidden = 64), or "
        "config.resume = False; raise config.train.steps; data.x='a b' (set "
        "config.finetune.text_column / config.finetune.label_column)")
    assert for_caller("--config.data.train=corpus.txt --config.optim.lr=0.5") == (
        "config.data.train = 'corpus.txt' config.optim.lr = 0.5")
    monkeypatch.setattr(messages, "_COMMAND_LINE", True)  # what run_cli sets
    assert for_caller(MESSAGE) == MESSAGE


def test_an_error_leaving_the_api_is_reworded_and_keeps_its_type():
    with pytest.raises(ValueError, match=r"^or config\.resume = False$"):
        with errors_for_caller():
            raise ValueError("or --config.resume=false")
    with pytest.raises(KeyError):  # str(e) is not its message: left as it is
        with errors_for_caller():
            raise KeyError("--config.x=1")
