"""What a user of an imported checkpoint met (a walk from a sentiment-discovery .pt through
training, fine-tuning and export): each a clear path or a refusal that names it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lmscale.config import ConfigError, load_config, validate
from lmscale.pretrained import ConvertError
from lmscale.pretrained.sentiment_discovery import from_state_dict
from lmscale.pretrained.workdir import write_workdir
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.loop import train
from tests.conftest import tiny_config
from tests.pretrained import reference as ref


def imported_workdir(tmp_path, batch_size: int = 4) -> tuple[str, dict]:
    sd = ref.make_sd_state_dict(257, 8, 16, 1, seed=21)
    weights = from_state_dict(sd, "lm.pt")
    weights.source = {**weights.source, "format": "sentiment-discovery"}
    workdir = write_workdir(weights, str(tmp_path / "sd"), batch_size=batch_size)
    config, _ = load_config(os.path.join(workdir, "config.json"))
    overrides = {f"model.{k}": v for k, v in config.model.items()}
    overrides.update({"data.tokenizer": "sentiment_discovery", "train.steps": 2,
                      "train.eval_every": 0})
    return workdir, overrides


def test_another_batch_for_an_import_names_the_re_import(tmp_path, corpus):
    """It named --config.resume=false, which trains random weights in the import's place."""
    workdir, overrides = imported_workdir(tmp_path)
    with pytest.raises(CheckpointMismatchError) as e:
        train(tiny_config(corpus, **{**overrides, "train.batch_size": 8}), workdir)
    message = str(e.value)
    assert "holds imported weights (lmscale.convert) saved with train.batch_size=4" in message
    assert "lmscale.convert ... --batch_size=8" in message and "not the imported ones" in message


def test_init_from_is_refused_by_lm_training(tmp_path, corpus):
    """lmscale.train ignored it: random weights, and config.json named the LM it did not use."""
    config = tiny_config(corpus)
    config.unlock()
    config.init_from = str(tmp_path / "lm")
    with pytest.raises(ConfigError, match=r"init_from=.* is read by lmscale\.finetune .* pass "
                                          r"their workdir \(or a copy of it\) as --workdir"):
        validate(config)


def test_gpt2_style_keys_are_named_a_transformer():
    sd = {"transformer.wte.weight": np.zeros((4, 2), np.float32),
          "transformer.h.0.attn.c_attn.weight": np.zeros((2, 6), np.float32)}
    with pytest.raises(ConvertError, match="is a transformer checkpoint"):
        from_state_dict(sd, "gpt.pt")


def test_a_truncated_pt_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    from lmscale.pretrained.sentiment_discovery import load_pt
    path = tmp_path / "lm.pt"
    torch.save({"a": torch.zeros(1000)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=r"lm\.pt is not a readable PyTorch file \(\w+: the file "
                                           r"is truncated or damaged"):
        load_pt(str(path))


def test_a_run_started_from_an_openai_import_keeps_its_framing(tmp_path, corpus):
    """train.start_from an OpenAI import: the new run recorded no preprocess, so featurize,
    transfer, score and generate on it read texts without OpenAI's '\\n ' + text + ' '."""
    import json

    from lmscale.pretrained import preprocessor_for
    from lmscale.pretrained.openai import load_openai
    ref.write_openai_files(str(tmp_path / "oa"), 8, 16, seed=0)
    imported = write_workdir(load_openai(str(tmp_path / "oa")), str(tmp_path / "imported"), batch_size=4)
    config, _ = load_config(os.path.join(imported, "config.json"))
    overrides = {f"model.{k}": v for k, v in config.model.items()}
    overrides.update({"data.tokenizer": "openai", "train.steps": 2, "train.eval_every": 0,
                      "train.start_from": imported})
    run = str(tmp_path / "run")
    train(tiny_config(corpus, **overrides), run)
    derived = json.load(open(os.path.join(run, "config.json")))["derived"]
    source = json.load(open(os.path.join(imported, "config.json")))["derived"]
    assert derived["preprocess"] == source["preprocess"] == "openai"
    assert derived["pretrained"] == source["pretrained"] and "carried" not in derived["started_from"]
    assert preprocessor_for(derived)("hi") == b"\n hi "
