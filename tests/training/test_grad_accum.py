"""Gradient accumulation over consecutive truncated-BPTT segments, and the all-reduce dtype."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.state import create_state
from lmscale.training.steps import make_train_step
from tests.conftest import REPO

B, S, V = 4, 8, 20


def _setup(kind: str = "mlstm"):
    cfg = default_config()
    cfg.model.kind, cfg.model.hidden, cfg.model.embed, cfg.model.layers = kind, 16, 8, 2
    model = build_model(cfg.model, V, rngs=nnx.Rngs(0))
    tx = optax.sgd(1.0)  # the update is minus the gradient
    graphdef, state = create_state(model, tx, B, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (B, 2 * S + 1))
    resets = np.zeros((B, 2 * S), bool)
    resets[1, 3] = resets[2, S + 2] = True  # a document start inside each segment
    batch = {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
             "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
             "weights": jnp.ones((B, 2 * S), jnp.float32), "resets": jnp.asarray(resets)}
    return graphdef, tx, state, batch


def _step(graphdef, tx, k: int, reduce_dtype=jnp.float32):
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    return jax.jit(make_train_step(graphdef, tx, optax.constant_schedule(1.0), mesh, dropout=False,
                                   grad_accum_steps=k, grad_reduce_dtype=reduce_dtype))


def _grads(before, after):
    return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), before.params, after.params)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_accumulated_gradient_is_the_mean_of_the_segments_taken_one_by_one(kind):
    graphdef, tx, state, batch = _setup(kind)
    accumulated, m2 = _step(graphdef, tx, 2)(state, batch)
    one = _step(graphdef, tx, 1)
    halves = [{k: v[:, j * S:(j + 1) * S] for k, v in batch.items()} for j in (0, 1)]
    first, m_a = one(state, halves[0])
    # The second segment: the same parameters, the carry the first one left.
    second, m_b = one(state.replace(carry=first.carry), halves[1])
    want = jax.tree.map(lambda a, b: (a + b) / 2, _grads(state, first), _grads(state, second))
    got = _grads(state, accumulated)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    assert float(m2["loss"]) == pytest.approx((float(m_a["loss"]) + float(m_b["loss"])) / 2, rel=1e-6)
    for c, w in zip(jax.tree.leaves(accumulated.carry), jax.tree.leaves(second.carry)):
        np.testing.assert_allclose(c, w, rtol=1e-6, atol=1e-7)
    assert int(accumulated.acc["count"]) == B * 2 * S


def test_bfloat16_reduction_rounds_only_the_gradients():
    graphdef, tx, state, batch = _setup()
    exact, m32 = _step(graphdef, tx, 1)(state, batch)
    rounded, m16 = _step(graphdef, tx, 1, jnp.bfloat16)(state, batch)
    assert float(m16["loss"]) == float(m32["loss"]) and int(rounded.acc["count"]) == B * 2 * S
    for g, w in zip(jax.tree.leaves(_grads(state, rounded)), jax.tree.leaves(_grads(state, exact))):
        np.testing.assert_allclose(g, w, rtol=2**-7, atol=1e-6)  # bfloat16: 8 mantissa bits


def test_plan_counts_the_bfloat16_all_reduce_and_accumulated_tokens(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=2",
         "--config.parallel.grad_reduce_dtype=bfloat16", "--config.train.grad_accum_steps=2",
         f"--json={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = json.loads(out.read_text())
    by_dtype = {r["dtype"]: r for r in p["all_reduces_requested"]}  # XLA:CPU widens bf16 later
    assert by_dtype["bf16"]["bytes"] == 2 * p["params"] and by_dtype["f32"]["elements"] == 3
    assert p["seq_len"] == 2 * 128 and p["flops_per_step_train"] == 3 * p["flops_per_token_forward"] * 32 * 256
    # The printed summary names the halved size too, not only the size XLA:CPU reduces.
    asked = p["all_reduce_bytes_requested"] / 2**20
    assert f"the step asks for {asked:.1f} MiB, what a GPU backend reduces" in proc.stdout
    assert asked < 0.6 * p["all_reduce_bytes_per_step"] / 2**20


def test_accumulation_settings_are_checked():
    from lmscale.config import ConfigError, validate
    for overrides, message in (({"train.grad_accum_steps": 0}, "train.grad_accum_steps must be"),
                               ({"train.grad_accum_steps": 2, "train.variable_bptt": True},
                                "cannot be combined"),
                               ({"parallel.grad_reduce_dtype": "float16"},
                                "parallel.grad_reduce_dtype must be")):
        c = default_config()
        for key, value in overrides.items():
            section, name = key.split(".")
            c[section][name] = value
        with pytest.raises(ConfigError, match=message):
            validate(c)
