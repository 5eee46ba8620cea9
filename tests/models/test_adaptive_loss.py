"""The adaptive softmax's loss without V-wide logits (models/adaptive_loss.py) against a NumPy
reference written from the equations (head softmax over the head words and one tombstone per
tail cluster; a tail word: its tombstone's log-probability plus its cluster's), and against
autodiff of the full ``adaptive_log_probs``. Tolerances: float32 sums rtol 1e-5, gradients
atol 1e-5; bfloat16 products rtol 2e-2 of the float32 sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models import adaptive_loss, build_model
from lmscale.models.adaptive_loss import adaptive_nll_sums
from lmscale.models.adaptive_softmax import adaptive_log_probs
from lmscale.training.loss import cross_entropy_sums, lm_loss_sums

N, H, V, CUTS = 300, 16, 50, (10, 25, 40)


def _data(seed: int = 0, empty_cluster: bool = False, all_counted: bool = False,
          one_cluster: bool = False):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, H)).astype(np.float32)
    words = (rng.normal(size=(V, H)) * 0.3).astype(np.float32)
    bias = (rng.normal(size=V) * 0.1).astype(np.float32)
    tails = (rng.normal(size=(3, H)) * 0.3).astype(np.float32)
    tail_bias = (rng.normal(size=3) * 0.1).astype(np.float32)
    targets = rng.integers(0, 25 if empty_cluster else V, N)  # no target in clusters 2 and 3
    weights = (rng.random(N) < 0.9).astype(np.float32)
    if all_counted:  # fractional weights, none 0
        weights = rng.uniform(0.2, 1.0, N).astype(np.float32)
    if one_cluster:  # every target in cluster 1, every row counted: the last chunk's padding
        targets = rng.integers(CUTS[0], CUTS[1], N)  # rows (row 0) must not count
        weights = rng.uniform(0.2, 1.0, N).astype(np.float32)
    return h, words, bias, tails, tail_bias, targets, weights


def np_adaptive_nll(h, words, bias, tails, tail_bias, targets, weights) -> float:
    h, words, tails = (np.asarray(x, np.float64) for x in (h, words, tails))
    logits = h @ words.T + bias
    lse = lambda x: np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    head = np.concatenate([logits[:, :CUTS[0]], h @ tails.T + tail_bias], -1)
    total, bounds = 0.0, (0, *CUTS, V)
    for n, y in enumerate(targets):
        if y < CUTS[0]:
            lp = head[n, y] - lse(head[n])
        else:
            i = int(np.searchsorted(CUTS, y, side="right"))  # 1..k
            a, b = bounds[i], bounds[i + 1]
            lp = (head[n, CUTS[0] + i - 1] - lse(head[n])) + logits[n, y] - lse(logits[n, a:b])
        total -= weights[n] * lp
    return total


def _full(h, words, bias, tails, tail_bias, targets, weights):
    lp = adaptive_log_probs(h @ words.T + bias, h @ tails.T + tail_bias, CUTS)
    return jnp.sum(-jnp.take_along_axis(lp, jnp.asarray(targets)[:, None], -1)[:, 0] * weights)


@pytest.mark.parametrize("chunk", [32, 1024], ids=["chunked", "one_chunk"])
@pytest.mark.parametrize("data", ["masked", "empty_clusters", "fractional", "one_cluster"])
def test_sums_and_gradients_match_the_equations_and_the_full_softmax(monkeypatch, chunk, data):
    monkeypatch.setattr(adaptive_loss, "CHUNK", chunk)
    h, words, bias, tails, tail_bias, targets, weights = _data(
        0, empty_cluster=data == "empty_clusters", all_counted=data == "fractional",
        one_cluster=data == "one_cluster")
    mine = lambda h, w, b, t, tb: adaptive_nll_sums(h, w, b, t, tb, CUTS, jnp.asarray(targets),
                                                    jnp.asarray(weights), jnp.float32, True)
    nats, count = jax.jit(mine)(h, words, bias, tails, tail_bias)
    np.testing.assert_allclose(float(nats), np_adaptive_nll(h, words, bias, tails, tail_bias,
                                                            targets, weights), rtol=1e-5)
    np.testing.assert_allclose(float(count), weights.sum(), rtol=1e-6)
    args = (jnp.asarray(h), jnp.asarray(words), jnp.asarray(bias), jnp.asarray(tails),
            jnp.asarray(tail_bias))
    got = jax.jit(jax.grad(lambda *a: mine(*a)[0], argnums=(0, 1, 2, 3, 4)))(*args)
    want = jax.grad(lambda *a: _full(*a, targets, weights), argnums=(0, 1, 2, 3, 4))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
    # a decoder kernel [H, V] (an untied model) gives the same sum and its gradient transposed
    kernel_loss = lambda k: adaptive_nll_sums(args[0], k, args[2], args[3], args[4], CUTS,
                                              jnp.asarray(targets), jnp.asarray(weights),
                                              jnp.float32, False)[0]
    np.testing.assert_allclose(float(kernel_loss(args[1].T)), float(nats), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(kernel_loss)(args[1].T)),
                               np.asarray(got[1]).T, atol=1e-5)


def test_bfloat16_products_stay_close_to_the_float32_sum():
    h, words, bias, tails, tail_bias, targets, weights = _data(1)
    got = adaptive_nll_sums(jnp.asarray(h, jnp.bfloat16), jnp.asarray(words), jnp.asarray(bias),
                            jnp.asarray(tails), jnp.asarray(tail_bias), CUTS, jnp.asarray(targets),
                            jnp.asarray(weights), jnp.bfloat16, True)[0]
    np.testing.assert_allclose(float(got), np_adaptive_nll(h, words, bias, tails, tail_bias,
                                                           targets, weights), rtol=2e-2)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_trainer_loss_of_a_model_with_cutoffs_is_its_log_probs_nll(tied):
    """``lm_loss_sums`` (the training and evaluation steps' loss) of a QRNN with an adaptive
    softmax equals the NLL of the log-probabilities the model returns (which generation reads),
    in value and in the parameters' gradients."""
    import ml_collections
    config = ml_collections.ConfigDict(dict(kind="qrnn", hidden=12, embed=8, layers=2,
                                            dropout=0.0, weight_norm=False, qrnn_window=2,
                                            tie_embeddings=tied, adaptive_cutoffs="10,25"))
    model = build_model(config, 40, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 40, (3, 7)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, 40, (3, 7)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 7)) < 0.8, jnp.float32)

    def fast(p):
        return lm_loss_sums(nnx.merge(graphdef, p), tokens, None, None, targets, weights)[0]

    def full(p):
        return cross_entropy_sums(nnx.merge(graphdef, p)(tokens, None)[0], targets, weights)[0]

    np.testing.assert_allclose(float(jax.jit(fast)(params)), float(full(params)), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(jax.jit(jax.grad(fast))(params)),
                    jax.tree.leaves(jax.grad(full)(params))):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)


def test_flops_count_the_logits_the_loss_forms():
    """FLOPs of a model with cut-offs: inference forms all V logits (+ k tombstones); the
    training loss the head's c_1 + k and each target's own cluster's, counted here token by
    token. ``plan``/``bench``/``train`` counted all V for training (at WT103's cut-offs 2.3x
    the QRNN's true FLOPs)."""
    from lmscale.config import default_config
    from lmscale.models import flops_per_token
    from lmscale.models.adaptive_softmax import loss_logits_per_token, tail_shares, zipf_id_counts
    from lmscale.training.flops import train_flops_per_token
    targets = _data()[5]
    bounds = (0, *CUTS, V)
    per_token = [CUTS[0] + len(CUTS) + (0 if y < CUTS[0] else
                 bounds[np.searchsorted(CUTS, y, side="right") + 1]
                 - bounds[np.searchsorted(CUTS, y, side="right")]) for y in targets]
    counts = np.bincount(targets, minlength=V)
    shares = tail_shares(CUTS, counts)
    assert loss_logits_per_token(CUTS, V, shares) == pytest.approx(np.mean(per_token), rel=1e-12)
    assert loss_logits_per_token(CUTS, V, None) == V + 3 and loss_logits_per_token((), V, None) == V
    c = default_config().model
    c.kind, c.hidden, c.embed, c.layers, c.adaptive_cutoffs = "lstm", H, 8, 1, "10,25,40"
    layers = 8 * 4 * H + H * 4 * H
    assert flops_per_token(c, V) == 2 * (layers + H * (V + 3))  # inference: every logit
    assert flops_per_token(c, V, tail_shares=shares) == 2 * (layers + round(H * np.mean(per_token)))
    assert train_flops_per_token(c, V, 4, id_counts=counts) == 3 * flops_per_token(
        c, V, tail_shares=shares)
    # No data: Zipf's law over the frequency-ranked ids (padding 0 never a target).
    zipf = [sum(1 / i for i in range(a, b)) for a, b in zip(bounds[1:], bounds[2:])]
    harmonic = sum(1 / i for i in range(1, V))
    np.testing.assert_allclose(tail_shares(CUTS, zipf_id_counts(V)), np.array(zipf) / harmonic,
                               rtol=1e-12)
    assert train_flops_per_token(c, V, 4) == 3 * flops_per_token(
        c, V, tail_shares=tail_shares(CUTS, zipf_id_counts(V)))
    c.adaptive_cutoffs = ""  # without cut-offs nothing changes
    assert train_flops_per_token(c, V, 4, id_counts=counts) == 3 * 2 * (layers + H * V)


@pytest.mark.parametrize("counted", [False, True], ids=["all", "counted"])
def test_the_nll_of_every_token_without_v_wide_logits(counted):
    """``adaptive_token_nll`` (scoring): each target's NLL [N] equals the NumPy reference's,
    row by row (a target in every cluster; uncounted rows 0, their clusters not formed), and
    its weighted sum ``adaptive_nll_sums``; tied and untied word layouts alike."""
    from lmscale.models.adaptive_loss import adaptive_token_nll
    h, words, bias, tails, tail_bias, targets, weights = _data(seed=3)
    assert set(np.searchsorted(CUTS, targets, side="right").tolist()) == {0, 1, 2, 3}
    mask = weights if counted else None
    want = np.array([np_adaptive_nll(h[n:n + 1], words, bias, tails, tail_bias, targets[n:n + 1],
                                     np.ones(1)) for n in range(N)])
    if counted:
        want = want * (weights != 0)
    fn = jax.jit(adaptive_token_nll, static_argnums=(5, 7, 8))
    for layout, transposed in ((words, True), (words.T.copy(), False)):
        got = np.asarray(fn(h, layout, bias, tails, tail_bias, CUTS, targets, jnp.float32,
                            transposed, mask))
        assert got.shape == (N,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    total = adaptive_nll_sums(h, words, bias, tails, tail_bias, CUTS, targets, weights,
                              jnp.float32, True)[0]
    np.testing.assert_allclose(float(np.sum(got * weights)), float(total), rtol=1e-5)
