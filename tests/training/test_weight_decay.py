"""Weight decay: coupled L2 (torch's weight_decay) or decoupled (AdamW), on all parameters or
only the weight matrices, for training and fine-tuning, checked against the update written
out in NumPy from the equations; a resume that would move or mask the decay is refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.config import ConfigError, default_config
from lmscale.config_checks import validate_optim
from lmscale.training.optimizer import make_finetune_optimizer, make_optimizer, matrices

LR, WD, EPS = 0.1, 0.5, 1e-8
PARAMS = {"w": np.array([[3.0, -1.0], [0.5, 2.0]], np.float32), "b": np.array([0.5, -4.0], np.float32)}
GRADS = {"w": np.array([[0.6, -0.8], [0.1, 0.0]], np.float32), "b": np.array([0.2, 0.3], np.float32)}


def optim(**fields):
    o = default_config().optim
    o.update(schedule="constant", clip=0.0, eps=EPS, weight_decay=WD, **fields)
    return o


def first_adam_step(g: np.ndarray) -> np.ndarray:
    """Adam's first direction with bias correction: m̂ / (sqrt(v̂) + eps) = g / (|g| + eps)."""
    return g / (np.abs(g) + EPS)


def update(o, params=PARAMS, grads=GRADS):
    tx, _ = make_optimizer(o, 10, lr=LR)
    params = jax.tree.map(jnp.asarray, params)
    updates, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(params), params)
    return jax.tree.map(np.asarray, updates)


@pytest.mark.parametrize("on", ["all", "matrices"])
def test_coupled_and_decoupled_adam_steps_equal_the_equations(on):
    decayed = {"w": 1.0, "b": 1.0 if on == "all" else 0.0}
    coupled = update(optim(weight_decay_style="coupled", weight_decay_on=on))
    decoupled = update(optim(weight_decay_style="decoupled", weight_decay_on=on))
    for k in PARAMS:
        wd = WD * decayed[k]
        # coupled: Adam of (g + wd p); decoupled (AdamW): Adam of g, plus wd p, times lr.
        np.testing.assert_allclose(coupled[k], -LR * first_adam_step(GRADS[k] + wd * PARAMS[k]),
                                   rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(decoupled[k], -LR * (first_adam_step(GRADS[k]) + wd * PARAMS[k]),
                                   rtol=2e-5, atol=1e-7)
    # the two differ where decay applies (Adam normalizes coupled L2 away where |wd p| >> |g|)
    assert not np.allclose(coupled["w"], decoupled["w"])


def test_decoupled_sgd_is_lr_times_grad_plus_decay():
    out = update(optim(name="sgd", weight_decay_style="decoupled", weight_decay_on="matrices"))
    np.testing.assert_allclose(out["w"], -LR * (GRADS["w"] + WD * PARAMS["w"]), rtol=2e-5)
    np.testing.assert_allclose(out["b"], -LR * GRADS["b"], rtol=2e-5)


def test_matrices_are_per_layer_in_a_transformers_stacked_blocks():
    """The transformer stacks its L blocks' params [L, ...]: a bias [L, d] is not a matrix;
    embeddings, projections and the head are; norm scales, biases and gains are not."""
    from lmscale.models.building import model_params
    from tests.conftest import TINY_TRANSFORMER, tiny_config
    for overrides in (TINY_TRANSFORMER, {"model.kind": "mlstm"}):
        params = model_params(tiny_config("unused", **overrides).model, 256)[1]
        flags = {jax.tree_util.keystr(k).replace(".value", ""): v
                 for k, v in jax.tree_util.tree_leaves_with_path(matrices(params))}
        decayed = sorted(k for k, v in flags.items() if v)
        if overrides is TINY_TRANSFORMER:
            assert decayed == ["['blocks']['fc1']['v']", "['blocks']['fc2']['v']",
                               "['blocks']['out']['v']", "['blocks']['qkv']['v']", "['embedding']",
                               "['head']['v']", "['position_embedding']"]
        else:
            assert decayed == ["['decoder']['kernel']", "['embedding']['embedding']",
                               "['layers'][0]['w_h']['v']", "['layers'][0]['w_mh']['v']",
                               "['layers'][0]['w_mx']['v']", "['layers'][0]['w_x']['v']"]


def test_fine_tuning_decays_each_part_and_holds_the_frozen_lm():
    o = optim(weight_decay_style="decoupled", weight_decay_on="matrices")
    tx, _ = make_finetune_optimizer(o, 10, lr=LR, head_lr=2 * LR, freeze_steps=1)
    params = {"lm": jax.tree.map(jnp.asarray, PARAMS), "head": jax.tree.map(jnp.asarray, PARAMS)}
    grads = {"lm": jax.tree.map(jnp.asarray, GRADS), "head": jax.tree.map(jnp.asarray, GRADS)}
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["lm"]["w"], 0.0)  # frozen for its first update
    np.testing.assert_allclose(updates["head"]["w"],
                               -2 * LR * (first_adam_step(GRADS["w"]) + WD * PARAMS["w"]), rtol=2e-5)
    np.testing.assert_allclose(updates["head"]["b"], -2 * LR * first_adam_step(GRADS["b"]), rtol=2e-5)
    updates, _ = tx.update(grads, state, params)  # unfrozen: the LM's first Adam step, decayed
    np.testing.assert_allclose(updates["lm"]["w"],
                               -LR * (first_adam_step(GRADS["w"]) + WD * PARAMS["w"]), rtol=2e-5)


def test_bad_weight_decay_settings_are_one_line_errors():
    for key, value in (("weight_decay_style", "adamw"), ("weight_decay_on", "weights")):
        config = default_config()
        config.optim[key] = value
        with pytest.raises(ConfigError, match=f"optim.{key} must be one of .* got '{value}'"):
            validate_optim(config.optim)


def test_a_resume_that_moves_or_masks_the_decay_is_refused():
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.resume import check_resumable

    def config(**optim_fields):
        c = default_config()
        c.data.train = "corpus"
        c.optim.update(**optim_fields)
        return c

    legacy = config(weight_decay=1e-4).to_dict()  # a checkpoint before the two fields
    del legacy["optim"]["weight_decay_style"], legacy["optim"]["weight_decay_on"]
    check_resumable({"config": legacy}, config(weight_decay=1e-4), "W")
    check_resumable({"config": legacy}, config(weight_decay=2e-4), "W")  # same chain
    for key, value in (("weight_decay_style", "decoupled"), ("weight_decay_on", "matrices")):
        with pytest.raises(CheckpointMismatchError, match=f"trained with optim.{key}="):
            check_resumable({"config": legacy}, config(weight_decay=1e-4, **{key: value}), "W")
        # without decay the fields place nothing: another value is no other chain
        check_resumable({"config": config().to_dict()}, config(**{key: value}), "W")


def test_a_fine_tune_recorded_before_it_applied_weight_decay_resumes_as_it_trained():
    """Fine-tuning ignored optim.weight_decay, optim.name and train.variable_bptt but recorded
    them: its checkpoints have no decay link. Resumed with the recorded values the check passed
    and orbax failed (list of 3 vs 2); resumed with decay off it was refused for a false reason."""
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.resume import check_same_optimizer
    old = default_config().to_dict()
    del old["optim"]["weight_decay_style"], old["optim"]["weight_decay_on"]
    old["optim"].update(weight_decay=0.01, name="sgd")
    old["train"]["variable_bptt"] = True
    now = default_config()
    check_same_optimizer(old, now.to_dict(), "W", fine_tuning=True)  # as it trained: no decay
    now.optim.weight_decay = 0.01
    with pytest.raises(CheckpointMismatchError, match=r"trained with optim.weight_decay=0; resuming "
                                                      r"it with optim.weight_decay=0.01 is refused"):
        check_same_optimizer(old, now.to_dict(), "W", fine_tuning=True)
    again = now.to_dict()  # a fine-tune recorded since: its decay and form count
    check_same_optimizer(again, now.to_dict(), "W", fine_tuning=True)
    now.optim.weight_decay_on = "matrices"
    with pytest.raises(CheckpointMismatchError, match="trained with optim.weight_decay_on='all'"):
        check_same_optimizer(again, now.to_dict(), "W", fine_tuning=True)


def test_sgd_may_switch_the_decay_style_on_resume():
    """Without Adam, coupled and decoupled decay are the same chain (and the same step)."""
    from lmscale.training.resume import check_same_optimizer
    old, new = default_config(), default_config()
    for c, style in ((old, "coupled"), (new, "decoupled")):
        c.optim.update(name="sgd", weight_decay=1e-4, weight_decay_style=style)
    check_same_optimizer(old.to_dict(), new.to_dict(), "W")
    np.testing.assert_allclose(update(optim(name="sgd", weight_decay_style="coupled"))["w"],
                               update(optim(name="sgd", weight_decay_style="decoupled"))["w"], rtol=1e-6)
