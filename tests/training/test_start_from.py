"""train.start_from refusals that need the new run's data: a source run that reads another
tokenization (the architecture, checked before the data, is tested in test_asgd_finetune)."""

from __future__ import annotations

import pytest

from lmscale.config import ConfigError
from lmscale.training.loop import train
from tests.conftest import tiny_config

RUN = {"train.steps": 2, "train.eval_every": 0, "checkpoint.every": 2}


def test_a_source_run_of_another_tokenization_is_refused_and_the_workdir_can_start_again(
        tmp_path, corpus):
    """Bytes + 1 (sentiment_discovery) there and raw bytes (openai) here: the same shapes but
    for the vocabulary, refused naming both, with no checkpoint left: the run started again
    with the source's tokenization starts from its weights."""
    source = str(tmp_path / "source")
    train(tiny_config(corpus, **RUN), source)
    workdir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"train.start_from='.*source' reads another "
                                          r"tokenization \(\{'kind': 'byte', 'offset': 1.*\} "
                                          r"there, \{'kind': 'byte', 'offset': 0.*\} here\)"):
        train(tiny_config(corpus, **RUN, **{"train.start_from": source,
                                            "data.tokenizer": "openai"}), workdir)
    result = train(tiny_config(corpus, **RUN, **{"train.start_from": source}), workdir)
    assert result["step"] == 2 and not result["already_trained"]
