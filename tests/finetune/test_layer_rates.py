"""``finetune.layer_lr_decay``: discriminative rates per LM layer (ULMFiT), checked against the
groups written out by hand for each model family and against Adam's step at rate 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.config import ConfigError, default_config
from lmscale.finetuning import layer_rates
from lmscale.finetuning.head import init_classifier
from lmscale.training.optimizer import make_finetune_optimizer
from tests.conftest import TINY_TRANSFORMER, tiny_config


def _params(**overrides):
    config = tiny_config("unused.txt", **overrides)
    return init_classifier(config, 257, 2, jnp.float32)[1]


def test_each_family_groups_its_layers_from_the_top():
    d = 2.0
    lm = {k: v for k, v in layer_rates.factors_by_name(
        _params(**{"model.layers": 3}), d, 3).items() if k.startswith("['lm']")}
    for name, factor in lm.items():
        want = (1 / 8 if "['embedding']" in name else 1 / 4 if "['layers'][0]" in name else
                1 / 2 if "['layers'][1]" in name else 1.0)  # layers[2] and the decoder: the top
        assert factor == want, name
    qrnn = layer_rates.factors_by_name(_params(**{"model.kind": "qrnn", "model.layers": 2}), d, 2)
    assert qrnn["['lm']['layers'][0]['w']['v'].value"] == 0.5
    assert qrnn["['lm']['decoder']['kernel'].value"] == 1.0
    assert qrnn["['lm']['embedding']['embedding'].value"] == 0.25
    t = layer_rates.factors_by_name(_params(**TINY_TRANSFORMER), d, 2)
    assert t["['lm']['blocks']['qkv']['v'].value"] == [0.5, 1.0]  # stacked: block 0, block 1
    assert t["['lm']['blocks']['ln_ff']['scale'].value"] == [0.5, 1.0]
    assert t["['lm']['embedding'].value"] == t["['lm']['position_embedding'].value"] == 0.25
    assert t["['lm']['head']['v'].value"] == t["['lm']['head_bias'].value"] == 1.0


@pytest.mark.parametrize("overrides", [{"model.layers": 2}, TINY_TRANSFORMER],
                         ids=["mlstm", "transformer"])
def test_adam_steps_scale_by_each_layers_factor_and_the_state_is_unchanged(overrides):
    params = _params(**overrides)
    grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + 1.0
                                           ).reshape(p.shape), params)
    o = default_config().optim
    steps = {}
    states = {}
    for d in (1.0, 2.6):
        tx, _ = make_finetune_optimizer(o, 10, lr=1e-3, head_lr=1e-2, freeze_steps=0,
                                        layer_factor=layer_rates.checked(d, 2))
        state = tx.init(params)
        states[d] = jax.tree.structure(state)
        steps[d], _ = tx.update(grads, state, params)
    assert states[1.0] == states[2.6]  # a run resumes whatever the decay
    factors = layer_rates.factors_by_name(params, 2.6, 2)
    flat = jax.tree_util.tree_flatten_with_path(steps[2.6])[0]
    for (path, a), b in zip(flat, jax.tree.leaves(steps[1.0])):
        name = jax.tree_util.keystr(path)
        want = factors[name] if name.startswith("['lm']") else 1.0
        want = np.asarray(want, np.float32).reshape((-1,) + (1,) * (b.ndim - 1)) \
            if isinstance(want, list) else want
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) * want, rtol=1e-6, atol=0,
                                   err_msg=name)


def test_bad_decay_is_refused_and_one_changes_nothing():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="layer_lr_decay must be a finite number > 0"):
            layer_rates.checked(bad, 2)
    assert layer_rates.checked(1.0, 2) is None
    assert layer_rates.peak_rates(1.0, 2.0, 2) == [1.0, 0.5, 0.25]


def test_a_fine_tune_moves_the_embeddings_by_the_factor_and_records_the_rates(sst_run, data,
                                                                              tmp_path, capsys):
    """One Adam step from the same start: the 1-layer LM's embedding moves 1/2.6 as far."""
    import os
    from lmscale.config import load_config
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.finetuning.loop import finetune
    from lmscale.training.restore import load_trained
    from tests.finetune.conftest import ft_config
    start = jax.device_get(load_trained(sst_run).params)["embedding"]["embedding"]
    moved = {}
    for d in (1.0, 2.6):
        run = str(tmp_path / f"ft{d}")
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
            "train.steps": 1, "finetune.layer_lr_decay": d}), run)
        params = jax.device_get(load_classifier(run).params)
        moved[d] = np.asarray(params["lm"]["embedding"]["embedding"]) - np.asarray(start)
        derived = load_config(os.path.join(run, "config.json"))[1]
        assert derived["lm_layer_lrs"] == pytest.approx([3e-3, 3e-3 / d])
    # A resume with another decay is accepted (the state does not depend on it), said, and
    # the old record kept in history/.
    finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
        "train.steps": 2, "finetune.layer_lr_decay": 1.0}), str(tmp_path / "ft2.6"))
    assert ("note: resumed at step 1 with finetune.layer_lr_decay=1.0; the steps before it "
            "trained with finetune.layer_lr_decay=2.6") in capsys.readouterr().err
    assert os.listdir(tmp_path / "ft2.6" / "history")
    changed = np.abs(moved[1.0]) > 1e-4  # a full Adam step (3e-3 at the first), not rounding
    assert changed.any()
    np.testing.assert_allclose(moved[2.6][changed], moved[1.0][changed] / 2.6, rtol=1e-3)


def test_a_model_whose_parameters_have_no_layer_names_is_warned_about():
    """A model family of one's own naming its parameters otherwise (``cells``) had every one
    in the top group: layer_lr_decay and unfreeze_every did nothing, unsaid."""
    import numpy as np

    from lmscale.finetuning.layer_rates import ungrouped_note
    other = {"cells": [np.zeros(2), np.zeros(2)], "decoder": np.zeros(3)}
    named = {"layers": [np.zeros(2), np.zeros(2)], "embedding": np.zeros(3)}
    assert "none of this LM's has them" in ungrouped_note(other, 2, 2.6, 0)
    assert "none of this LM's has them" in ungrouped_note(other, 2, 1.0, 1)
    assert ungrouped_note(other, 2, 1.0, 0) is None  # neither asked for
    assert ungrouped_note(named, 2, 2.6, 1) is None


@pytest.mark.parametrize("groups", [None, "gradual"])
def test_the_fine_tuning_chain_clips_the_whole_gradient_by_its_global_norm(groups):
    """optim.clip bounds the global norm of the LM's and the head's gradients together before
    each part's Adam (removing the clip from make_finetune_optimizer passed every test)."""
    o = default_config().optim
    o.update(schedule="constant", warmup_steps=0, clip=1.0, weight_decay=0.0, eps=1.0)
    params = {"lm": {"w": jnp.array([3.0, -1.0])}, "head": {"b": jnp.array([0.5])}}
    grads = {"lm": {"w": jnp.array([6.0, 0.0])}, "head": {"b": jnp.array([8.0])}}  # norm 10
    groups_arg = None if groups is None else (lambda path, row=None: 0, [0], [1.0])
    tx, _ = make_finetune_optimizer(o, 10, lr=1.0, head_lr=1.0, freeze_steps=0,
                                    groups=groups_arg)
    updates, _ = tx.update(grads, tx.init(params), params)
    # eps=1 makes Adam's first step g / (|g| + 1): it sees the clipped gradient g / 10
    for got, g in ((updates["lm"]["w"], grads["lm"]["w"]), (updates["head"]["b"], grads["head"]["b"])):
        c = np.asarray(g) / 10.0
        np.testing.assert_allclose(got, -c / (np.abs(c) + 1.0), rtol=1e-5)
