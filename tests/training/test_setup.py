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


_PLACED = r"""
import json
import jax, numpy as np
from lmscale.training import mesh as mesh_lib
from lmscale.training.setup import build_train_setup
from lmscale.training.state import state_shardings
from tests.conftest import lowered_programs, tiny_config

mesh = mesh_lib.make_mesh()
config = tiny_config("unused.txt", **{"train.batch_size": 8})
with lowered_programs() as built:
    placed = build_train_setup(config, 257, decay_steps=10, lr=1e-3, mesh=mesh).state
jax.block_until_ready(placed)
plain = build_train_setup(config, 257, decay_steps=10, lr=1e-3).state
want = state_shardings(plain, mesh)
print(json.dumps({
    "programs": built,
    "shardings": all(a.sharding == s for a, s in zip(jax.tree.leaves(placed), jax.tree.leaves(want))),
    "carry_rows": sorted({s.data.shape[0] for x in jax.tree.leaves(placed.carry) for s in x.addressable_shards}),
    "equal": all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(plain)))}))
"""


def test_initial_state_is_computed_on_the_mesh_by_one_program():
    """Given the mesh, the one program writes the state into the step's shardings (params
    replicated, the carry's rows split over the devices): no copy from one device to the
    others afterwards (on several devices that was a second program, ``_multi_slice``)."""
    from tests.conftest import script_result, xla_flags
    out = script_result(_PLACED, XLA_FLAGS=xla_flags(4))
    assert out["programs"] == ["jit(initial_train_state)"], out
    assert out["shardings"] and out["equal"], out
    assert out["carry_rows"] == [2], out  # 8 rows over 4 devices
