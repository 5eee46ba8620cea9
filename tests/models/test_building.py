"""``built_in_one_program``: a module's parameters from one jitted program (the eager build's
values), or as shapes only with nothing computed; the builder's static part kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model, built_in_one_program, model_params
from tests.conftest import TINY_TRANSFORMER, lowered_programs, tiny_config


@pytest.mark.parametrize("overrides", [{}, TINY_TRANSFORMER], ids=["mlstm", "transformer"])
def test_model_params_are_one_program_with_the_eager_values(overrides, tmp_path):
    config = tiny_config(str(tmp_path / "unused.txt"), **overrides)
    with lowered_programs() as built:
        graphdef, params = model_params(config.model, 257, seed=3)
    assert len(built) == 1, built
    eager_graphdef, eager = nnx.split(build_model(config.model, 257, rngs=nnx.Rngs(3)), nnx.Param)
    assert graphdef == eager_graphdef
    assert jax.tree.structure(eager) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_abstract_gives_shapes_and_dtypes_and_computes_nothing(tmp_path):
    config = tiny_config(str(tmp_path / "unused.txt"))
    with lowered_programs() as built:
        graphdef, like = model_params(config.model, 257, dtype=jnp.bfloat16, abstract=True)
    assert built == []
    _, concrete = model_params(config.model, 257, dtype=jnp.bfloat16)
    assert jax.tree.structure(like) == jax.tree.structure(concrete)
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(concrete)):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert graphdef == nnx.split(build_model(config.model, 257, rngs=nnx.Rngs(0),
                                             dtype=jnp.bfloat16), nnx.Param)[0]


def test_the_builders_static_part_comes_back_as_built():
    static, arrays = built_in_one_program(lambda: ({"width": 5}, {"w": jnp.ones((5, 2))}))
    assert static == {"width": 5}
    assert isinstance(arrays["w"], jax.Array) and arrays["w"].shape == (5, 2)
