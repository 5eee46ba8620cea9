"""Remat of the recurrences (``remat_steps``; config ``model.remat="segments"``): the forward
keeps only each segment's starting state and the backward recomputes the segment. Same values
and gradients as keeping everything, in less memory."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.config import ConfigError, default_config, validate
from lmscale.models.recurrent_segments import segment_length
from lmscale.models.registry import build_model
from tests.models.test_recurrent_vjp import B, assert_same_gradients, loss_fn, problem, resets_tm

STEPS = 12


def _loss(kind: str, dtype: Any, grad: str, remat_steps: int, steps: int = STEPS):
    """loss_fn with resets (row 0's at t = 4, a segment's first step for 1, 2 and 4), cells
    returned, the weight norm folded into the products as the layers run it."""
    return loss_fn(kind, dtype, grad, resets_tm(steps), True, folded=True, remat_steps=remat_steps)


def test_segment_length_is_the_largest_divisor_not_above_the_request():
    assert segment_length(0, 12) == 12  # off
    assert segment_length(4, 12) == 4
    assert segment_length(5, 12) == 4
    assert segment_length(12, 12) == segment_length(50, 12) == 12  # one segment
    assert segment_length(6, 7) == 1  # a prime T: single steps


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("remat_steps", [1, 5])  # 12 segments of 1; 3 of 4
def test_same_values_and_gradients_as_saving_everything(kind, remat_steps):
    """float32: the loss and every gradient (g, v, bias, inputs, initial carry) equal the
    unsegmented custom backward's to 1e-6 and autodiff's to 1e-5."""
    p = problem(kind, seed=7, steps=STEPS)
    val_s, g_s = jax.value_and_grad(_loss(kind, jnp.float32, "custom", remat_steps))(p)
    val_c, g_c = jax.value_and_grad(_loss(kind, jnp.float32, "custom", 0))(p)
    val_a, g_a = jax.value_and_grad(_loss(kind, jnp.float32, "autodiff", 0))(p)
    # Tolerances as stated: a few float32 ulps (1e-7 relative is ~1.5 ulp at |loss| ~ 7, which
    # jaxlib 0.10.0's -O0 programs exceeded: 1.4e-7).
    assert float(val_s) == pytest.approx(float(val_c), rel=1e-6)
    assert float(val_s) == pytest.approx(float(val_a), rel=1e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree.leaves(g_c)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert_same_gradients(g_s, g_a)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_autodiff_remat_by_jax_checkpoint(kind):
    """grad="autodiff" with remat_steps: the scan in checkpointed segments gives autodiff's
    loss and gradients (to 1e-6), and at T = 256 in segments of 16 under 60 % of its
    temporaries (measured 55-56 %: what stays T long here is more than the custom path's,
    the input projections made before the scan and their cotangents)."""
    p = problem(kind, seed=7, steps=STEPS)
    val_r, g_r = jax.value_and_grad(_loss(kind, jnp.float32, "autodiff", 5))(p)  # 3 of 4
    val_a, g_a = jax.value_and_grad(_loss(kind, jnp.float32, "autodiff", 0))(p)
    assert float(val_r) == pytest.approx(float(val_a), rel=1e-7)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g_r), jax.tree.leaves(g_a)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    steps = 256
    p = problem(kind, seed=9, steps=steps, hidden=64)
    whole = _temporaries(_loss(kind, jnp.float32, "autodiff", 0, steps), p)
    segmented = _temporaries(_loss(kind, jnp.float32, "autodiff", 16, steps), p)
    assert segmented < 0.6 * whole, (segmented, whole)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_recomputes_the_same_forward(kind, dtype):
    """In bfloat16/float16 compute the recomputed segments are the forward that ran (the same
    operations from the same starting states): gradients within float32 summation-order noise
    of the unsegmented backward's, far below the compute dtype's rounding."""
    p = problem(kind, seed=8, steps=STEPS)
    g_s = jax.grad(_loss(kind, dtype, "custom", 4))(p)
    g_c = jax.grad(_loss(kind, dtype, "custom", 0))(p)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree.leaves(g_c)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def _temporaries(loss, p) -> int:
    return jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_segments_keep_a_fraction_of_the_memory(kind):
    """T = 256 in segments of 16: the compiled gradient's temporaries are under half the
    unsegmented ones (what stays T long: the outputs hs and cs, their cotangents, dx)."""
    steps, hidden = 256, 64
    p = problem(kind, seed=9, steps=steps, hidden=hidden)
    whole = _temporaries(_loss(kind, jnp.float32, "custom", 0, steps), p)
    segmented = _temporaries(_loss(kind, jnp.float32, "custom", 16, steps), p)
    assert segmented < whole / 2, (segmented, whole)


def _tiny_lm_config(kind: str, **model: Any):
    c = default_config()
    c.model.kind, c.model.hidden, c.model.embed, c.model.layers = kind, 8, 6, 1
    for name, value in model.items():
        c.model[name] = value
    c.train.seq_len, c.train.batch_size = STEPS, B
    return c


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_lm_from_config_same_gradients_with_remat(kind):
    """model.remat="segments" (model.remat_steps 4) builds layers that recompute; the LM's
    gradients equal those of model.remat="none"."""
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 11, (B, STEPS)), jnp.int32)
    resets = jnp.asarray(resets_tm(STEPS).T)
    grads = {}
    for remat in ("none", "segments"):
        config = _tiny_lm_config(kind, remat=remat, remat_steps=4)
        model = build_model(config.model, 11, rngs=nnx.Rngs(0))
        assert {layer.remat_steps for layer in model.layers} == {4 if remat == "segments" else 0}
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params: Any) -> jax.Array:
            logits, carry = nnx.merge(graphdef, params)(tokens, None, resets)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3]) + jnp.sum(carry[-1][1])

        grads[remat] = jax.grad(loss)(params)
    for got, want in zip(jax.tree.leaves(grads["segments"]), jax.tree.leaves(grads["none"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.remat"):
        validate(_tiny_lm_config("mlstm", remat="block"))  # the transformer's
    with pytest.raises(ConfigError, match="model.remat"):
        validate(_tiny_lm_config("qrnn", remat="segments"))
    with pytest.raises(ConfigError, match="model.remat_steps"):
        validate(_tiny_lm_config("lstm", remat="segments", remat_steps=0))
    with pytest.raises(ConfigError, match="model.remat_steps=5 must divide train.seq_len=12 "
                                          r"\(equal segments; e.g. 4\)"):
        validate(_tiny_lm_config("lstm", remat="segments", remat_steps=5))
    validate(_tiny_lm_config("lstm", remat="segments", remat_steps=4))
    validate(_tiny_lm_config("lstm", remat="segments", remat_steps=50))  # one segment
