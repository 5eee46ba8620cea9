"""The floor of ||v||^2 at 1e-12 in weight norm (TensorFlow's l2_normalize, as OpenAI's mLSTM
computes it): an all-zero column of v gives a zero column of w, not NaN, while every normal
weight gives bit-for-bit what the unfloored g * rsqrt(sum v^2) gave, in values and gradients
of a training step."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model
from lmscale.models.dtypes import at_least_float32
from lmscale.models.recurrent import scan_options
from lmscale.pretrained.weights import from_weight_norm
from lmscale.training.loss import cross_entropy_sums
from tests.conftest import REPO, TINY_TRANSFORMER, default_level_xla_flags, tiny_config

wn = importlib.import_module("lmscale.models.weight_norm")  # the module (lmscale.models exports
# a function of the same name)


def unfloored_unit_scale(g: jax.Array, v: jax.Array) -> jax.Array:
    """unit_scale as it was before the floor."""
    dtype = at_least_float32(v.dtype)
    v = v.astype(dtype)
    return g.astype(dtype) * jax.lax.rsqrt(jnp.sum(v * v, axis=0))


_BIT_IDENTICAL = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from lmscale.models import weight_norm as _  # noqa: F401
import importlib
wn = importlib.import_module("lmscale.models.weight_norm")
from lmscale.models.dtypes import at_least_float32

def unfloored_unit_scale(g, v):  # unit_scale as it was before the floor
    dtype = at_least_float32(v.dtype)
    v = v.astype(dtype)
    return g.astype(dtype) * jax.lax.rsqrt(jnp.sum(v * v, axis=0))

dtype = getattr(jnp, sys.argv[1])
rng = np.random.default_rng(0)
differ = []
with jax.enable_x64(dtype == jnp.float64):
    for scale in (1.0, 1e-3, 1e3):  # norms down to ~1e-3: far above the floor's 1e-6
        g = jnp.asarray(rng.uniform(0.1, 2.0, (257,)), dtype)
        v = jnp.asarray(rng.normal(0, scale, (64, 257)), dtype)
        pairs = [(jax.jit(wn.unit_scale)(g, v), jax.jit(unfloored_unit_scale)(g, v))]
        grads = [jax.jit(jax.grad(lambda g, v, f=f: jnp.sum(jnp.sin(f(g, v) * 3.0)),
                                  argnums=(0, 1)))(g, v)
                 for f in (wn.unit_scale, unfloored_unit_scale)]
        pairs += list(zip(*grads))
        differ += [int((np.asarray(a) != np.asarray(b)).sum()) for a, b in pairs]
print(json.dumps({"differ": differ}))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_unit_scale_is_bit_identical_to_the_unfloored_formula(dtype):
    """At XLA's default optimization level, as the tools compile (a process of its own: the
    suite's -O0 rounds rsqrt with and without the max differently under jaxlib 0.12, 1 ulp)."""
    import subprocess
    run = subprocess.run([sys.executable, "-c", _BIT_IDENTICAL, dtype], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": default_level_xla_flags()})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["differ"] == [0] * 9


def test_a_zero_column_gives_a_zero_column_not_nan():
    v = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    v[:, 3] = 0.0
    g = np.ones(5, np.float32)
    w = np.asarray(wn.weight_norm(jnp.asarray(g), jnp.asarray(v)))
    assert np.isfinite(w).all() and not w[:, 3].any()
    np.testing.assert_allclose(w[:, :3], v[:, :3] / np.linalg.norm(v[:, :3], axis=0), rtol=1e-6)
    w64 = from_weight_norm(g, v)  # the converters' NumPy form
    assert np.isfinite(w64).all() and not w64[:, 3].any()
    np.testing.assert_allclose(w64, w, rtol=1e-6, atol=1e-7)
    from lmscale.pretrained.weights import floored_columns
    assert floored_columns(v) == [3]


CASES = {"mlstm-feature": ({}, "feature", "float32"),
         "mlstm-batch": ({}, "batch", "float32"),
         "mlstm-bf16": ({}, "feature", "bfloat16"),
         "lstm-2-layers": ({"model.kind": "lstm", "model.layers": 2}, "feature", "float32"),
         "transformer": (TINY_TRANSFORMER, "feature", "float32")}


def training_step_differences() -> dict[str, int]:
    """Per case: how many elements of the loss and of every parameter's gradient of one
    training step of a small weight-normed model differ between the floored unit_scale and
    the unfloored formula swapped in (0: bit-identical)."""
    found = {}
    current = wn.unit_scale
    for case, (overrides, layout, dtype) in CASES.items():
        config = tiny_config("unused", **overrides)
        assert config.model.weight_norm
        model = build_model(config.model, 257, rngs=nnx.Rngs(0), dtype=jnp.dtype(dtype))
        graphdef, params = nnx.split(model, nnx.Param)
        tokens = np.random.default_rng(0).integers(1, 257, size=(4, 12)).astype(np.int32)
        inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
        carry = model.initial_carry(4)

        def loss(p):
            logits, _ = nnx.merge(graphdef, p)(inputs, carry)
            nats, count = cross_entropy_sums(logits, targets, jnp.ones(targets.shape))[:2]
            return nats / count

        def step(unit_scale):  # a fresh jit, traced with this unit_scale
            wn.unit_scale = unit_scale
            try:
                with scan_options(layout=layout):
                    return jax.tree_util.tree_leaves(
                        jax.device_get(jax.jit(jax.value_and_grad(loss))(params)))
            finally:
                wn.unit_scale = current

        floored, unfloored = step(current), step(unfloored_unit_scale)
        assert len(floored) == len(unfloored) > 3 and np.isfinite(floored[0])
        found[case] = sum(int((np.asarray(a) != np.asarray(b)).sum())
                          for a, b in zip(floored, unfloored))
    return found


def test_a_training_step_is_bit_identical():
    """Loss and every gradient of a training step (mLSTM feature- and batch-major, bfloat16,
    a 2-layer LSTM, a transformer), floored vs unfloored: equal bit for bit, under XLA's
    default compiler settings (the tools'). Run in a subprocess without the suite's
    --xla_backend_optimization_level=0: at that level XLA:CPU schedules a changed program's
    dots differently, and the LSTM's and the transformer's gradients move by an ulp (~1e-11)
    even with a custom JVP that repeats rsqrt's own backward exactly, so that level cannot
    tell the floor from the compiler; the mLSTMs are bit-identical there too."""
    added = os.environ.get("LMSCALE_TEST_XLA_FLAGS", "").split()
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in added)
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = ("import json; from tests.pretrained.test_weight_norm_floor import "
            "training_step_differences as f; print(json.dumps(f()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {case: 0 for case in CASES}


def test_to_weight_norm_of_a_zero_column_is_a_unit_v_with_zero_g():
    """A plain matrix's zero column becomes g = 0 and v = e_0 (norm 1), not v = 0: exported
    as g/v, PyTorch's unfloored weight norm would divide 0 by 0 there (NaN), and the
    import would note the column as floored."""
    from lmscale.pretrained.weights import floored_columns, to_weight_norm
    w = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    w[:, 1] = 0.0
    g, v = to_weight_norm(w)
    assert g[1] == 0 and v[:, 1].tolist() == [1.0, 0, 0, 0, 0, 0]
    assert floored_columns(v) == []
    np.testing.assert_allclose(from_weight_norm(g, v), w, rtol=1e-6, atol=1e-7)
