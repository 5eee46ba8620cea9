"""The training setup initializes the state in one jitted program.

Executed eagerly, initialization built one small program per random draw, zero-fill and
cast (27 for the first of these models in a process, 37 for the transformer: 2-3 s of every
``lmscale.train`` start-up on the 2-core CPU); jitted, it is one.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmscale.training.setup import build_train_setup
from tests.conftest import TINY_TRANSFORMER, lowered_programs, tiny_config


@pytest.mark.parametrize("overrides", [
    {},  # the mLSTM
    {"model.kind": "lstm", "model.layers": 2},
    TINY_TRANSFORMER,
    {"model.kind": "qrnn", "model.layers": 2},
], ids=["mlstm", "lstm", "transformer", "qrnn"])
def test_initial_state_is_built_by_one_program(overrides, tmp_path):
    config = tiny_config(str(tmp_path / "unused.txt"), **overrides)
    with lowered_programs() as built:
        setup = build_train_setup(config, 257, decay_steps=10, lr=1e-3)
    assert len(built) == 1, built
    leaves = jax.tree.leaves(setup.state.params)
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert int(setup.state.step) == 0
    # the same values as the model built on its own from the same seed: jit changes only
    # how the draws are compiled (1 ulp where XLA fuses a scale into a normal draw)
    from flax import nnx
    from lmscale.models import build_model
    own = nnx.state(build_model(config.model, 257, rngs=nnx.Rngs(config.seed)), nnx.Param)
    for a, b in zip(jax.tree.leaves(own), leaves):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
