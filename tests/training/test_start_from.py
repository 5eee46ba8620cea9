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


def test_a_fine_tuned_classifier_as_source_is_refused_by_name_before_the_data(tmp_path, corpus):
    """A lmscale.finetune run has a config.json and the LM's architecture: it passed the
    check made before the data, and was refused once the data was prepared, as
    load_classifier's "load it with lmscale.load_classifier(...)", naming no setting."""
    from lmscale.finetuning.loop import finetune
    from tests.finetune.conftest import ft_config
    lm = str(tmp_path / "lm")
    train(tiny_config(corpus, **RUN), lm)
    labeled = tmp_path / "labeled.csv"
    labeled.write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(16)))
    tuned = str(tmp_path / "tuned")
    finetune(ft_config(lm, str(labeled), str(labeled), **{"train.steps": 1,
                                                          "train.eval_every": 0,
                                                          "checkpoint.every": 1}), tuned)
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^train.start_from='.*tuned' is a fine-tuned "
                                          r"classifier \(lmscale.finetune\), not a language "
                                          r"model: start from the LM it was fine-tuned from "
                                          r"\(.*lm\)$"):
        train(tiny_config(corpus, **RUN, **{"train.start_from": tuned}), str(workdir))
    with pytest.raises(ConfigError, match=r"is a fine-tuned classifier"):  # not "another model"
        train(tiny_config(corpus, **RUN, **{"train.start_from": tuned, "model.hidden": 24}),
              str(workdir))
    assert not (workdir / "data").exists()
