"""A fine-tune's classifier is initialized by one jitted program (as training's state,
tests/training/test_setup.py); eagerly, each random draw compiled a program of its own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmscale.finetuning.head import build_classifier, init_classifier
from lmscale.finetuning.loop import init_finetune_state
from lmscale.models import build_model
from lmscale.training.precision import Policy
from tests.conftest import TINY_TRANSFORMER, lowered_programs, tiny_config


@pytest.mark.parametrize("overrides", [{}, TINY_TRANSFORMER], ids=["mlstm", "transformer"])
def test_classifier_is_built_by_one_program_with_the_eager_values(overrides, tmp_path):
    config = tiny_config(str(tmp_path / "unused.txt"), **overrides)
    with config.unlocked():
        config.finetune.head_hidden = "8"
    with lowered_programs() as built:
        graphdef, params, max_len = init_classifier(config, 257, 3, jnp.float32)
    assert len(built) == 1, built
    lm = build_model(config.model, 257, rngs=nnx.Rngs(config.seed))
    eager = nnx.state(build_classifier(lm, 3, config.finetune, config.seed), nnx.Param)
    assert max_len == lm.max_len
    assert jax.tree.structure(eager) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_classifier_on_a_trained_lm_takes_its_leaves_and_draws_only_the_head(tmp_path):
    from lmscale.config import ConfigError
    from lmscale.models import model_params
    config = tiny_config(str(tmp_path / "unused.txt"))
    _, plain, _ = init_classifier(config, 257, 3, jnp.float32)
    _, trained = model_params(config.model, 257, seed=5)  # other values than config.seed's
    trained = jax.device_get(trained)
    with lowered_programs() as built:
        _, params, _ = init_classifier(config, 257, 3, jnp.float32, lm_params=trained)
    assert len(built) == 1, built
    assert jax.tree.structure(params) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params["lm"])):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    for a, b in zip(jax.tree.leaves(plain["head"]), jax.tree.leaves(params["head"])):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree.leaves(plain["lm"]), jax.tree.leaves(params["lm"])))
    narrow = tiny_config(str(tmp_path / "unused.txt"), **{"model.hidden": 16})
    _, other = model_params(narrow.model, 257, seed=5)
    with pytest.raises(ConfigError, match=r"LM parameter \('lm', .*\) has shape .*expected"):
        init_classifier(config, 257, 3, jnp.float32, lm_params=jax.device_get(other))


def test_finetune_state_is_one_program_with_the_precisions_loss_scale(tmp_path):
    config = tiny_config(str(tmp_path / "unused.txt"), **{"precision.compute": "float16"})
    _, params, _ = init_classifier(config, 257, 3, jnp.float16)
    tx = optax.adam(1e-3)
    with lowered_programs() as built:
        state = init_finetune_state(config, Policy.from_compute("float16"), tx, params)
    assert len(built) == 1, built
    assert int(state.step) == 0 and state.carry == ()
    assert state.loss_scale.dynamic and float(state.loss_scale.scale) == config.precision.loss_scale_init
    np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(jax.random.PRNGKey(config.seed + 1)))
    eager = tx.init(params)
    assert jax.tree.structure(eager) == jax.tree.structure(state.opt_state)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_finetune_state_placed_on_the_mesh_or_as_shapes(tmp_path):
    from lmscale.training import mesh as mesh_lib
    config = tiny_config(str(tmp_path / "unused.txt"))
    _, params, _ = init_classifier(config, 257, 3, jnp.float32)
    tx, policy, mesh = optax.adam(1e-3), Policy.from_compute("float32"), mesh_lib.make_mesh()
    with lowered_programs() as built:
        placed = init_finetune_state(config, policy, tx, params, mesh)
    assert len(built) == 1, built
    assert all(x.sharding == mesh_lib.replicated(mesh) for x in jax.tree.leaves(placed))
    with lowered_programs() as built:
        shapes = init_finetune_state(config, policy, tx, params, mesh, abstract=True)
    assert built == []
    assert jax.tree.structure(shapes) == jax.tree.structure(placed)
    for s, x in zip(jax.tree.leaves(shapes), jax.tree.leaves(placed)):
        assert isinstance(s, jax.ShapeDtypeStruct) and (s.shape, s.dtype) == (x.shape, x.dtype)
