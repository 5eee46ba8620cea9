"""``model.two_biases``: an LSTM's gate bias as PyTorch's and sentiment-discovery's two
trained vectors b_ih + b_hh (each U(+-1/sqrt(H))), which Adam moves at twice the rate of
one bias; the forward and gradients against the one-bias model of their sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model
from lmscale.models.registry import unused_settings_note
from lmscale.pretrained.openai import openai_arrays
from lmscale.pretrained.sentiment_discovery import to_state_dict
from lmscale.pretrained.weights import path_key, weights_from_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.loss import cross_entropy_sums
from lmscale.training.setup import build_train_setup, jit_train_step
from tests.conftest import TINY_TRANSFORMER, tiny_config

H, B, T = 32, 4, 16


def _config(kind: str, two: bool, **more):
    return tiny_config("unused", **{"model.kind": kind, "model.layers": 2,
                                    "model.two_biases": two, "optim.warmup_steps": 0,
                                    "optim.schedule": "constant", **more})


def _folded(two_params, one_params):
    """``one_params`` holding ``two_params``' weights, each layer's bias their sum."""
    flat = {path_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(two_params)[0]}

    def take(path, x):
        key = path_key(path)
        if key.endswith("/bias") and key.startswith("layers/"):
            return flat[key] + flat[key + "_h"]
        return flat[key]
    return jax.tree_util.tree_map_with_path(take, one_params)


def _batch(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"inputs": rng.integers(1, 257, (B, T)).astype(np.int32),
            "targets": rng.integers(1, 257, (B, T)).astype(np.int32),
            "weights": np.ones((B, T), np.float32), "resets": rng.random((B, T)) < 0.1}


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_two_biases_start_as_pytorchs_and_one_bias_at_zero(kind):
    two = build_model(_config(kind, True).model, 257, rngs=nnx.Rngs(0))
    one = build_model(_config(kind, False).model, 257, rngs=nnx.Rngs(0))
    for layer in two.layers:
        for b in (np.asarray(layer.bias[...]), np.asarray(layer.bias_h[...])):
            assert b.shape == (4 * H,) and np.abs(b).max() <= H ** -0.5 and b.std() > 0.1 * H ** -0.5
        assert not np.array_equal(np.asarray(layer.bias[...]), np.asarray(layer.bias_h[...]))
    for layer in one.layers:
        assert not hasattr(layer, "bias_h") and not np.asarray(layer.bias[...]).any()


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_the_forward_is_the_one_bias_models_and_each_bias_gets_its_gradient(kind):
    """Logits equal the one-bias model's holding b_ih + b_hh; d loss / d b_ih = d loss /
    d b_hh = the one bias's gradient (autodiff through the custom backward's bias)."""
    two = build_model(_config(kind, True).model, 257, rngs=nnx.Rngs(0))
    one = build_model(_config(kind, False).model, 257, rngs=nnx.Rngs(0))
    g2, p2 = nnx.split(two, nnx.Param)
    g1, p1 = nnx.split(one, nnx.Param)
    p1 = _folded(p2, p1)
    batch = _batch()

    def loss(graphdef, params):
        model = nnx.merge(graphdef, params)
        logits, _ = model(jnp.asarray(batch["inputs"]), model.initial_carry(B),
                          resets=jnp.asarray(batch["resets"]))
        nats, count = cross_entropy_sums(logits, jnp.asarray(batch["targets"]),
                                         jnp.asarray(batch["weights"]))
        return nats / count

    l2, grad2 = jax.value_and_grad(lambda p: loss(g2, p))(p2)
    l1, grad1 = jax.value_and_grad(lambda p: loss(g1, p))(p1)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
    for l in range(2):
        want = np.asarray(grad1["layers"][l]["bias"][...])
        assert np.abs(want).max() > 1e-4
        for name in ("bias", "bias_h"):
            np.testing.assert_allclose(np.asarray(grad2["layers"][l][name][...]), want,
                                       rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(grad2["layers"][l]["w_h"]["v"][...]),
                                   np.asarray(grad1["layers"][l]["w_h"]["v"][...]),
                                   rtol=1e-5, atol=1e-8)


def _one_step(config, params=None):
    """The parameters before and after one real training step (``lmscale.train``'s jitted
    step: clip by global norm, Adam) on ``_batch``, from ``params`` if given."""
    mesh = mesh_lib.make_mesh()
    setup = build_train_setup(config, 257, decay_steps=100, lr=config.optim.lr, mesh=mesh)
    step, shardings = jit_train_step(setup, mesh)
    params = jax.tree.map(np.array, setup.state.params if params is None else params)
    state = jax.device_put(setup.state.replace(params=params, opt_state=setup.tx.init(params)),
                           shardings)  # donated to the step: ``params`` stay NumPy copies
    after, metrics = step(state, _batch())
    return params, after.params, float(metrics["grad_norm"])


def test_adam_moves_the_sum_of_two_biases_twice_as_fast():
    """Each of b_ih and b_hh gets the one bias's gradient and makes Adam's step of it, so
    their sum moves twice as far as one bias from the same weights (the first step:
    lr * g / (|g| + eps)); the other weights move alike. The global norm, which clipping
    reads, counts the bias's gradient twice."""
    two_before, two_after, norm2 = _one_step(_config("mlstm", True, **{"optim.clip": 0.0}))
    one_params = _one_step(_config("mlstm", False, **{"optim.clip": 0.0}))[0]
    one_before, one_after, norm1 = _one_step(_config("mlstm", False, **{"optim.clip": 0.0}),
                                             _folded(two_before, one_params))
    for l in range(2):
        moved_two = sum(np.asarray(two_after["layers"][l][n][...], np.float64)
                        - np.asarray(two_before["layers"][l][n][...], np.float64)
                        for n in ("bias", "bias_h"))
        moved_one = (np.asarray(one_after["layers"][l]["bias"][...], np.float64)
                     - np.asarray(one_before["layers"][l]["bias"][...], np.float64))
        assert np.abs(moved_one).max() > 1e-4
        np.testing.assert_allclose(moved_two, 2 * moved_one, atol=2e-6)
        np.testing.assert_allclose(np.asarray(two_after["layers"][l]["w_h"]["v"][...]),
                                   np.asarray(one_after["layers"][l]["w_h"]["v"][...]), atol=2e-6)
    assert norm2 > norm1


def test_the_other_kinds_note_the_setting_and_exports_keep_or_fold_the_pair():
    """A transformer or QRNN reads no two_biases (said in the unused-settings note); a
    two-bias model's weights keep both (sentiment-discovery's b_ih and b_hh), and OpenAI's
    one bias is their sum (the same logits)."""
    for kind in (TINY_TRANSFORMER, {"model.kind": "qrnn"}):
        note = unused_settings_note(tiny_config("unused", **kind, **{"model.two_biases": True}).model)
        assert note is not None and "two_biases" in note, note
    assert unused_settings_note(_config("lstm", True).model) is None
    from lmscale.data.tokenizer import ByteTokenizer
    model = build_model(_config("mlstm", True, **{"model.layers": 1}).model, 257,
                        rngs=nnx.Rngs(0))
    weights = weights_from_model(model, ByteTokenizer.sentiment_discovery())
    assert weights.two_biases and weights.model_config().two_biases
    np.testing.assert_array_equal(weights.params["layers/0/bias_h"],
                                  np.asarray(model.layers[0].bias_h[...]))
    rnn = to_state_dict(weights)["encoder"]["rnn"]
    np.testing.assert_array_equal(rnn["rnns.0.b_hh"], weights.params["layers/0/bias_h"])
    folded = weights.with_two_biases(False)
    np.testing.assert_array_equal(openai_arrays(folded)[7], openai_arrays(weights)[7])  # b
    tokens = jnp.asarray(_batch()["inputs"])
    want, _ = model(tokens, model.initial_carry(B))
    for w in (weights, folded):
        got, _ = w.to_model()(tokens, model.initial_carry(B))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
