"""finetune.lm_dropout: the LM's own dropouts in fine-tuning's training steps, as a multiple of
the rates it was trained with (ULMFiT's drop_mult); none by default, never at prediction."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.config import ConfigError
from tests.finetune.conftest import ft_config


@pytest.fixture(scope="module")
def dropout_lm(sst_run, tmp_path_factory) -> str:
    """sst_run's weights recorded as trained with AWD dropouts (2 of them reach its states;
    output_dropout, the decoder's input, does not)."""
    lm = tmp_path_factory.mktemp("dropout_lm") / "lm"
    shutil.copytree(sst_run, lm, ignore=shutil.ignore_patterns("best", "transfer", "features"))
    record = json.load(open(lm / "config.json"))
    record["model"].update(input_dropout=0.4, weight_dropout=0.3, output_dropout=0.6)
    json.dump(record, open(lm / "config.json", "w"))
    return str(lm)


def _classifier(lm_dir: str, data, factor: float):
    from lmscale.finetuning.head import init_classifier
    from lmscale.finetuning.loop import load_lm, resolve_config
    from flax import nnx
    lm = load_lm(lm_dir)
    config = resolve_config(ft_config(lm_dir, data["sst_train"], data["sst_val"],
                                      **{"finetune.lm_dropout": factor}), lm)
    graphdef, params, _ = init_classifier(config, lm.tokenizer.vocab_size, 2,
                                          lm_params=jax.device_get(lm.params))
    return nnx.merge(graphdef, params)


def test_the_rates_are_scaled_and_the_masks_are_the_lms_own(dropout_lm, data):
    from lmscale.finetuning.head import LM_DROPOUT_TAG
    model = _classifier(dropout_lm, data, 0.5)
    lm = model.lm
    assert (lm.input_dropout, lm.layers[0].weight_drop, lm.output_dropout) == (0.2, 0.15, 0.0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 200, (4, 12)), jnp.int32)
    lengths = jnp.asarray([12, 5, 9, 1])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key_data(jax.random.key(3)), i))(
        jnp.arange(4))
    step_key = jax.random.key_data(jax.random.key(9))
    plain = model.features(tokens, lengths)
    dropped = model.features(tokens, lengths, None, keys, step_key)
    assert not np.allclose(plain, dropped)  # the masks act
    # ... and are the LM's own training masks for the rows' keys, apart from the head's
    out = lm.features(tokens, lm.initial_carry(4), dropout_key=jax.vmap(
        lambda k: jax.random.fold_in(k, LM_DROPOUT_TAG))(keys), step_key=step_key)
    np.testing.assert_array_equal(dropped[:, :lm.feature_width],
                                  np.asarray(out["cell"][-1])[np.arange(4), np.asarray(lengths) - 1])
    # a row's masks follow its key, not the batch it is in (1 and N devices train alike)
    half = model.features(tokens[2:], lengths[2:], None, keys[2:], step_key)
    np.testing.assert_allclose(half, dropped[2:], rtol=1e-6, atol=1e-6)
    # without keys (prediction) it reads as the classifier without dropout
    none = _classifier(dropout_lm, data, 0.0)
    assert (none.lm.input_dropout, none.lm.layers[0].weight_drop) == (0.0, 0.0)
    np.testing.assert_array_equal(plain, none.features(tokens, lengths))
    np.testing.assert_array_equal(none.features(tokens, lengths, None, keys, step_key), plain)


@pytest.mark.parametrize("factor, lm, message", [
    (-0.5, "dropout", "finetune.lm_dropout must be >= 0"),
    (0.5, "plain", "finetune.lm_dropout=0.5 scales the LM's own dropout rates that reach its "
                   "states, and this LM has none"),
    (3.0, "dropout", "finetune.lm_dropout=3.0 makes model.input_dropout=0.4 a rate of 1.2; "
                     "rates must stay below 1"),
])
def test_bad_factors_are_refused_before_any_folder(sst_run, dropout_lm, data, tmp_path, factor,
                                                   lm, message):
    from lmscale.finetuning.loop import finetune
    init = dropout_lm if lm == "dropout" else sst_run
    with pytest.raises(ConfigError, match=message):
        finetune(ft_config(init, data["sst_train"], data["sst_val"],
                           **{"finetune.lm_dropout": factor}), str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


def test_a_fine_tune_with_the_lms_dropouts_trains_otherwise_and_resumes_exactly(dropout_lm, data,
                                                                                tmp_path, capsys):
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    kw = {"train.steps": 4, "train.eval_every": 4, "checkpoint.every": 2, "finetune.freeze_steps": 2,
          "optim.decay_steps": 4}
    runs = {}
    for name, extra in (("none", {}), ("half", {"finetune.lm_dropout": 0.5}),
                        ("parts", {"finetune.lm_dropout": 0.5, "train.steps": 2})):
        runs[name] = str(tmp_path / name)
        finetune(ft_config(dropout_lm, data["sst_train"], data["sst_val"], **{**kw, **extra}),
                 runs[name])
    said = capsys.readouterr().err
    assert ("note: the LM's dropouts (model.input_dropout=0.4, model.weight_dropout=0.3) apply in "
            "training steps times finetune.lm_dropout=0.5") in said
    assert "fine-tuning reads the texts without it (finetune.lm_dropout=0.5 applies half" in said
    finetune(ft_config(dropout_lm, data["sst_train"], data["sst_val"],
                       **{**kw, "finetune.lm_dropout": 0.5}), runs["parts"])
    losses = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train"]
    assert losses(runs["half"]) != losses(runs["none"])  # the masks reach the loss
    assert losses(runs["parts"]) == losses(runs["half"])  # and follow the step: resumed exactly


def test_only_the_rates_that_vanish_at_evaluation_are_scaled():
    """A QRNN's zoneout is part of its evaluation (f times 1 - zoneout): scaled with the others,
    the default lm_dropout=0 read the texts otherwise than the LM (0.018 apart) and prediction
    depended on the factor; output_dropout, never drawn in fine-tuning, made factors refused."""
    from flax import nnx
    from lmscale.config import default_config
    from lmscale.models import build_model
    from lmscale.models.registry import feature_dropouts, with_dropouts_scaled
    model = default_config().model
    model.kind, model.layers, model.hidden, model.embed = "qrnn", 2, 16, 8
    model.qrnn_zoneout, model.input_dropout, model.output_dropout = 0.3, 0.2, 0.6
    assert feature_dropouts(model) == {"input_dropout": 0.2}
    for factor in (0.0, 0.5):
        scaled = with_dropouts_scaled(model, factor)
        assert (scaled.qrnn_zoneout, scaled.input_dropout, scaled.output_dropout) == (
            0.3, 0.2 * factor, 0.0)
        lm, again = (build_model(m, 40, rngs=nnx.Rngs(0)) for m in (model, scaled))
        tokens = jnp.asarray(np.random.default_rng(1).integers(1, 40, (3, 9)), jnp.int32)
        np.testing.assert_array_equal(lm.features(tokens, None)["cell"],
                                      again.features(tokens, None)["cell"])


def test_a_resume_with_another_factor_is_said():
    from lmscale.config import default_config
    from lmscale.finetuning.settings import resumed_otherwise
    config = default_config()
    config.finetune.lm_dropout = 0.5
    assert resumed_otherwise({"config": {"finetune": {}}}, config, 40) == [
        "note: resumed at step 40 with finetune.lm_dropout=0.5; the steps before it trained "
        "with finetune.lm_dropout=0.0"]
