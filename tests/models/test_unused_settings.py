"""Settings a model kind does not read: refused (the transformer's adaptive_cutoffs) or noted
(the regularizers of other kinds), never silently recorded in config.json as if applied."""

from __future__ import annotations

import json
import os

import pytest

from lmscale.config import ConfigError, default_config, validate
from lmscale.models.registry import unused_settings_note
from tests.conftest import TINY_TRANSFORMER, tiny_config


def _transformer(**fields):
    model = default_config().model
    model.kind = "transformer"
    for name, value in fields.items():
        model[name] = value
    return model


def test_transformer_refuses_adaptive_cutoffs(corpus):
    """--config.model.adaptive_cutoffs=500,1500 on a transformer trained a full-softmax head
    whose logits are raw scores, and config.json recorded the cut-offs as if applied."""
    config = tiny_config(corpus, **TINY_TRANSFORMER, **{"model.adaptive_cutoffs": "500,1500"})
    with pytest.raises(ConfigError, match=r"model.adaptive_cutoffs='500,1500' is not supported "
                                          r"by model.kind='transformer'"):
        validate(config)
    validate(tiny_config(corpus, **TINY_TRANSFORMER))  # "" (the default): fine


def test_awd_settings_on_a_transformer_are_noted():
    assert unused_settings_note(_transformer()) is None
    model = _transformer(weight_dropout=0.5, ar_alpha=2.0, embed_dropout=0.1, qrnn_zoneout=0.2)
    assert unused_settings_note(model) == (
        "note: model.embed_dropout=0.1, model.weight_dropout=0.5, model.ar_alpha=2.0 are "
        "settings of model.kind 'lstm', 'mlstm' or 'qrnn'; model.qrnn_zoneout=0.2 is a setting "
        "of model.kind='qrnn', unused by model.kind='transformer'")
    for name in ("input_dropout", "hidden_dropout", "output_dropout", "tar_beta"):
        assert f"model.{name}=0.3" in unused_settings_note(_transformer(**{name: 0.3}))


def test_transformer_settings_on_a_recurrent_kind_are_noted():
    model = default_config().model
    model.kind = "mlstm"
    assert unused_settings_note(model) is None
    model.attn_dropout, model.ff_dropout, model.weight_dropout = 0.1, 0.2, 0.3  # the last: read
    assert unused_settings_note(model) == (
        "note: model.attn_dropout=0.1, model.ff_dropout=0.2 are settings of "
        "model.kind='transformer', unused by model.kind='mlstm'")


def test_transformer_norm_and_positions_on_a_recurrent_kind_are_noted():
    """--config.model.positions=sinusoidal or norm=pre on an mLSTM were ignored without a note
    (as model.init=gpt2 is noted): config.json recorded them as if applied."""
    model = default_config().model
    model.positions, model.norm = "sinusoidal", "pre"
    assert unused_settings_note(model) == (
        "note: model.norm='pre', model.positions='sinusoidal' are settings of "
        "model.kind='transformer', unused by model.kind='mlstm'")
    assert unused_settings_note(_transformer(positions="sinusoidal", norm="pre")) is None


def test_a_transformer_run_prints_the_note(corpus, tmp_path, capfd):
    from lmscale.training.loop import train
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **TINY_TRANSFORMER, **{"model.weight_dropout": 0.5,
                                                     "train.steps": 1, "train.eval_every": 0,
                                                     "checkpoint.every": 1}), workdir)
    assert ("note: model.weight_dropout=0.5 is a setting of model.kind 'lstm', 'mlstm' or "
            "'qrnn', unused by model.kind='transformer'") in capfd.readouterr().err
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["weight_dropout"] == 0.5  # recorded as given, and noted


def test_between_layer_dropouts_of_one_recurrent_layer_are_noted():
    """model.dropout and hidden_dropout drop between stacked layers: with model.layers=1 (the
    quickstart, the paper's mLSTM) they changed nothing, bit for bit, and nothing said so."""
    model = default_config().model
    model.dropout, model.hidden_dropout = 0.5, 0.25
    assert unused_settings_note(model) == (
        "note: model.dropout=0.5, model.hidden_dropout=0.25 drop between stacked layers, unused "
        "with model.layers=1 (model.input_dropout and output_dropout drop the layer's input and "
        "output)")
    model.layers = 2
    assert unused_settings_note(model) is None
    assert unused_settings_note(_transformer(dropout=0.5, layers=1)) is None  # its blocks' dropout
    model.layers, model.hidden_dropout, model.attn_dropout = 1, 0.0, 0.1
    assert unused_settings_note(model).split("\n") == [
        "note: model.attn_dropout=0.1 is a setting of model.kind='transformer', unused by "
        "model.kind='mlstm'",
        "note: model.dropout=0.5 drops between stacked layers, unused with model.layers=1 "
        "(model.input_dropout and output_dropout drop the layer's input and output)"]
