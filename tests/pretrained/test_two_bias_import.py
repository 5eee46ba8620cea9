"""A sentiment-discovery checkpoint trains on with its two biases apart (``model.two_biases``),
as its recipe (and ``configs/mlstm4096.py``) trains them; ``convert --two_biases`` picks the form."""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from lmscale.config import load_config
from lmscale.convert import convert
from lmscale.pretrained import ConvertError
from lmscale.pretrained.sentiment_discovery import from_state_dict
from lmscale.pretrained.weights import params_to_numpy
from lmscale.pretrained.workdir import read_workdir, write_workdir
from lmscale.training.loop import train
from lmscale.training.restore import load_trained
from tests.conftest import tiny_config
from tests.pretrained import reference as ref

E, H = 8, 16


def test_an_import_trains_on_with_the_recipes_config_and_moves_both_biases(tmp_path, corpus):
    """Before, an import had one bias, so a config with model.two_biases (configs/mlstm4096.py)
    was refused as a different model."""
    sd = ref.make_sd_state_dict(257, E, H, 1, seed=11)
    workdir = write_workdir(from_state_dict(sd, "lm.pt"), str(tmp_path / "run"), batch_size=4)
    config, _ = load_config(os.path.join(workdir, "config.json"))
    assert config.model.two_biases
    overrides = {f"model.{k}": v for k, v in config.model.items()}
    overrides.update({"data.tokenizer": "sentiment_discovery", "train.steps": 2,
                      "train.eval_every": 0, "train.log_every": 1})
    train(tiny_config(corpus, **overrides), workdir)
    params = params_to_numpy(load_trained(workdir).params)
    rnn = sd["encoder"]["rnn"]
    for ours, theirs in (("bias", "b_ih"), ("bias_h", "b_hh")):
        moved = params[f"layers/0/{ours}"] - rnn[f"rnns.0.{theirs}"]
        assert np.abs(moved).max() > 1e-4, ours  # each trained (Adam: ~lr per step)
    # each its own Adam parameter: the sum moved twice as far as one bias would
    np.testing.assert_allclose(params["layers/0/bias"] - rnn["rnns.0.b_ih"],
                               params["layers/0/bias_h"] - rnn["rnns.0.b_hh"], atol=1e-6)
    back = read_workdir(workdir)
    assert back.two_biases and back.model_config().two_biases


def test_convert_two_biases_flag(tmp_path):
    files = str(tmp_path / "openai")
    ref.write_openai_files(files, E, H, seed=12)
    summary = convert("openai", files, str(tmp_path / "one"), "lmscale")
    assert summary["two_biases"] is False  # OpenAI's one b
    summary = convert("openai", files, str(tmp_path / "two"), "lmscale", two_biases="true")
    assert summary["two_biases"] is True
    config, _ = load_config(os.path.join(summary["to"], "config.json"))
    assert config.model.two_biases
    lm = load_trained(summary["to"])
    assert not np.asarray(nnx.to_pure_dict(lm.params)["layers"][0]["bias_h"]).any()
    back = convert("lmscale", summary["to"], str(tmp_path / "back"), "openai")
    assert back["two_biases"] is False
    for i in range(15):  # two biases (one of them zero) written as OpenAI's one: the same files
        np.testing.assert_array_equal(np.load(os.path.join(back["to"], f"{i}.npy")),
                                      np.load(os.path.join(files, f"{i}.npy")), err_msg=str(i))
    try:
        convert("lmscale", summary["to"], str(tmp_path / "x"), "openai", two_biases="true")
    except ConvertError as e:
        assert "--two_biases=auto or false" in str(e)
    else:
        raise AssertionError("OpenAI's layout with --two_biases=true was not refused")
