"""A sequence of one step in 2-byte compute (an evaluation's 1-token tail, seq_len=1): XLA
drops the recurrence's loop of one trip and folded the transposed weights into its dots, a
form XLA:CPU's DotThunk rejects at run time ("Unsupported element type for DotThunk::Execute:
BF16 x BF16 = F32"): a bfloat16 run whose validation split left a 1-token tail died there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model
from lmscale.training.loss import cross_entropy_sums
from lmscale.training.steps import make_eval_step
from tests.conftest import TINY_TRANSFORMER, tiny_config

KINDS = {"mlstm": {}, "lstm": {"model.kind": "lstm", "model.layers": 2,
                               "model.tie_embeddings": True},
         "qrnn": {"model.kind": "qrnn"}, "transformer": TINY_TRANSFORMER}


def _batch(tokens: np.ndarray) -> dict[str, jax.Array]:
    return {"inputs": jnp.asarray(tokens), "targets": jnp.asarray((tokens + 1) % 200),
            "weights": jnp.ones(tokens.shape, jnp.float32),
            "resets": jnp.zeros(tokens.shape, bool)}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_step_runs_and_equals_the_first_step_of_two(kind, dtype):
    model = build_model(tiny_config("unused", **KINDS[kind]).model, 257, rngs=nnx.Rngs(0),
                        dtype=jnp.dtype(dtype))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = np.random.default_rng(0).integers(1, 200, size=(4, 2)).astype(np.int32)
    step = jax.jit(make_eval_step(graphdef, None))
    _, one = jax.block_until_ready(step(params, model.initial_carry(4), _batch(tokens[:, :1])))
    _, two = step(params, model.initial_carry(4), _batch(tokens))
    assert np.isfinite(np.asarray(one)).all()
    # the first step's loss alone, from the two-step run's logits
    logits, _ = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, model.initial_carry(4)))(
        params, jnp.asarray(tokens))
    first = cross_entropy_sums(logits[:, :1], (jnp.asarray(tokens[:, :1]) + 1) % 200,
                               jnp.ones((4, 1)))[0]
    np.testing.assert_allclose(float(one[0]), float(first), rtol=2e-2)
    assert float(two[0]) > float(one[0])


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_one_step_gradients_run_in_bfloat16(kind):
    """seq_len=1 training: the hand-written backward's loops of one trip too."""
    model = build_model(tiny_config("unused", **KINDS[kind]).model, 257, rngs=nnx.Rngs(0),
                        dtype=jnp.bfloat16)
    graphdef, params = nnx.split(model, nnx.Param)
    batch = _batch(np.full((4, 1), 7, np.int32))

    def loss(p: object) -> jax.Array:
        logits, _ = nnx.merge(graphdef, p)(batch["inputs"], model.initial_carry(4))
        nats, count = cross_entropy_sums(logits, batch["targets"], batch["weights"])
        return nats / count

    grads = jax.block_until_ready(jax.jit(jax.grad(loss))(params))
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))
