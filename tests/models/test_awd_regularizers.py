"""AWD-LSTM regularizers: weight drop (one mask per forward pass, the same at every time step),
locked dropout (one mask per sequence, shared over time), embedding dropout (whole rows; the
tied decoder unmasked), AR/TAR against their formulas, the adaptive softmax, and the trainer
(penalty in the training loss only). NumPy references in float64; tolerance 1e-5."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.models import RecurrentLM, build_model
from lmscale.models import lm as lm_module
from lmscale.models import regularizers as reg
from lmscale.models.adaptive_softmax import adaptive_log_probs, parse_cutoffs
from lmscale.models.recurrent import LSTMLayer, MLSTMLayer
from tests.models.numpy_reference import np_rnn

T, B, I, H, V = 6, 4, 5, 8, 13
TOL = dict(atol=1e-5, rtol=1e-5)


def _row_keys(seed: int = 0, rows: int = B) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(rows))


@pytest.mark.parametrize("cls", [LSTMLayer, MLSTMLayer])
def test_weight_drop_is_one_mask_per_forward_pass_at_every_time_step(cls):
    """The layer's output equals a NumPy loop that uses one masked matrix at all T steps; the
    mask is DropConnect (entries 0 or w/(1-p)) and another step key gives another mask."""
    p = 0.5
    layer = cls(I, H, weight_norm=False, weight_drop=p, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    h0, c0 = (np.zeros((B, H), np.float32) for _ in range(2))
    key = jax.random.PRNGKey(7)
    run = jax.jit(lambda k: layer.scan_time_major(jnp.asarray(xs), (h0, c0), step_key=k)[0])
    hs = run(key)
    w = {"w_x": layer.w_x(), "w_h": reg.weight_drop(layer.w_h(), key, 1, p), "b": layer.bias[...]}
    if cls is MLSTMLayer:
        w.update(w_mx=layer.w_mx(), w_mh=reg.weight_drop(layer.w_mh(), key, 0, p))
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    ref, _, _ = np_rnn("mlstm" if cls is MLSTMLayer else "lstm", np.swapaxes(xs, 0, 1), h0, c0, w)
    np.testing.assert_allclose(np.asarray(hs), np.swapaxes(ref, 0, 1), **TOL)
    dropped, full = w["w_h"], np.asarray(layer.w_h(), np.float64)
    assert np.all((dropped == 0) | np.isclose(dropped, full / (1 - p)))
    assert 0.3 < np.mean(dropped == 0) < 0.7
    other = np.asarray(reg.weight_drop(layer.w_h(), jax.random.PRNGKey(8), 1, p))
    assert np.mean((other == 0) != (dropped == 0)) > 0.2
    assert not np.allclose(np.asarray(run(jax.random.PRNGKey(8))), np.asarray(hs))
    # Evaluation (no key): no drop.
    no_drop = jax.jit(lambda: layer.scan_time_major(jnp.asarray(xs), (h0, c0))[0])()
    w_eval = dict(w, w_h=full)
    if cls is MLSTMLayer:
        w_eval["w_mh"] = np.asarray(layer.w_mh(), np.float64)
    ref_eval, _, _ = np_rnn("mlstm" if cls is MLSTMLayer else "lstm", np.swapaxes(xs, 0, 1), h0,
                            c0, w_eval)
    np.testing.assert_allclose(np.asarray(no_drop), np.swapaxes(ref_eval, 0, 1), **TOL)


def test_trainer_step_keys_differ_between_steps_and_not_between_devices():
    from lmscale.training.steps import row_dropout_keys, step_dropout_key
    rng = jax.random.PRNGKey(1)
    k0, k1 = (step_dropout_key(jax.random.fold_in(rng, s)) for s in (0, 1))
    assert not np.array_equal(np.asarray(k0), np.asarray(k1))
    rows = np.asarray(row_dropout_keys(jax.random.fold_in(rng, 0), jnp.asarray(0), 8))
    assert not any(np.array_equal(np.asarray(k0), r) for r in rows)


def test_locked_dropout_mask_is_shared_over_time_and_per_row():
    p, F = 0.4, 32
    x = jnp.ones((T, B, F), jnp.float32)
    keys = _row_keys(3)
    out = np.asarray(jax.jit(lambda k: reg.locked_dropout(x, k, 5, p))(keys))
    assert np.all(out == out[:1])  # the same mask at every time step
    np.testing.assert_allclose(np.unique(out), [0.0, 1 / (1 - p)], rtol=1e-6)
    assert 0.2 < np.mean(out == 0) < 0.6
    assert not np.array_equal(out[0, 0], out[0, 1])  # rows differ
    # A row's mask depends on its own key only (not on the batch it is in).
    part = np.asarray(jax.jit(lambda k: reg.locked_dropout(x[:, 2:], k, 5, p))(keys[2:]))
    np.testing.assert_array_equal(part, out[:, 2:])


def test_embedding_dropout_drops_whole_rows_and_the_tied_decoder_is_unmasked():
    p = 0.5
    table = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (V, I)), jnp.float32)
    out = np.asarray(reg.embedding_dropout(table, jax.random.PRNGKey(2), 0, p))
    zero_rows = np.all(out == 0, axis=1)
    assert 0 < zero_rows.sum() < V
    np.testing.assert_allclose(out[~zero_rows], np.asarray(table)[~zero_rows] / (1 - p), **TOL)
    # In a tied 1-layer LSTM: input = masked rows, decoder = the unmasked embedding.
    model = RecurrentLM(kind="lstm", vocab_size=V, embed=I, hidden=H, layers=1, weight_norm=False,
                        embed_dropout=p, tie_embeddings=True, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, (B, T)), jnp.int32)
    step_key = jax.random.PRNGKey(4)
    logits, _ = jax.jit(lambda t: model(t, None, dropout_key=_row_keys(), step_key=step_key))(tokens)
    masked = reg.embedding_dropout(model.embedding.embedding[...], step_key, 0, p)
    xs = jnp.swapaxes(masked[tokens], 0, 1)
    hs, _, _ = model.layers[0].scan_time_major(xs, model.layers[0].initial_carry(B))
    ref = np.einsum("tbh,vh->btv", np.asarray(hs, np.float64),
                    np.asarray(model.embedding.embedding[...], np.float64))
    np.testing.assert_allclose(np.asarray(logits), ref + np.asarray(model.decoder_bias[...]), **TOL)


def test_ar_tar_equal_their_formulas():
    """AR = alpha mean((m h)^2) of the dropped last output, TAR = beta mean((h_t+1 - h_t)^2) of
    the undropped one; the logits come from the dropped output."""
    alpha, beta, p = 2.0, 3.0, 0.5
    model = RecurrentLM(kind="mlstm", vocab_size=V, embed=I, hidden=H, layers=2,
                        weight_norm=False, output_dropout=p, ar_alpha=alpha, tar_beta=beta,
                        rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, V, (B, T)), jnp.int32)
    keys = _row_keys(5)
    logits, _, penalty = jax.jit(lambda t: model.regularized_call(t, None, dropout_key=keys))(tokens)
    h = np.asarray(jax.jit(lambda t: model.features(t, None))(tokens)["hidden"][-1], np.float64)
    mask = np.asarray(reg.locked_mask(keys, lm_module._TAG_OUTPUT, p, B, H, jnp.float32))
    dropped = h * mask[:, None, :]  # [B, T, H]
    ar = alpha * np.mean(dropped ** 2)
    tar = beta * np.mean((h[:, 1:] - h[:, :-1]) ** 2)
    assert penalty.shape == (B,)
    np.testing.assert_allclose(float(jnp.mean(penalty)), ar + tar, rtol=1e-5)
    ref_logits = dropped @ np.asarray(model.decoder.kernel[...]) + np.asarray(model.decoder.bias[...])
    np.testing.assert_allclose(np.asarray(logits), ref_logits, **TOL)
    # No penalty without alpha/beta (the trainer then adds nothing).
    plain = RecurrentLM(kind="lstm", vocab_size=V, embed=I, hidden=H, rngs=nnx.Rngs(0))
    assert plain.regularized_call(tokens, None)[2] is None


def test_adaptive_softmax_sums_to_one_and_equals_full_softmax_without_cutoffs():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, V)).astype(np.float32)
    tails = rng.normal(size=(3, 5, 2)).astype(np.float32)
    full = adaptive_log_probs(jnp.asarray(logits), jnp.asarray(tails[..., :0]), ())
    np.testing.assert_allclose(np.asarray(full), np.asarray(jax.nn.log_softmax(logits)), **TOL)
    cuts = parse_cutoffs("4,9", V)
    lp = np.asarray(adaptive_log_probs(jnp.asarray(logits), jnp.asarray(tails), cuts), np.float64)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)
    # NumPy reference: head softmax over [words 0..3, tombstone 1, tombstone 2].
    head = np.concatenate([logits[..., :4], tails], -1).astype(np.float64)
    head = head - np.log(np.exp(head).sum(-1, keepdims=True))
    def cluster(a, b, k):
        x = logits[..., a:b].astype(np.float64)
        return head[..., 4 + k, None] + x - np.log(np.exp(x).sum(-1, keepdims=True))
    ref = np.concatenate([head[..., :4], cluster(4, 9, 0), cluster(9, V, 1)], -1)
    np.testing.assert_allclose(lp, ref, **TOL)
    # In a tied model: log-probabilities that sum to 1; cut-offs beyond V name the key.
    model = RecurrentLM(kind="qrnn", vocab_size=V, embed=I, hidden=H, layers=2,
                        tie_embeddings=True, adaptive_cutoffs="4,9", rngs=nnx.Rngs(0))
    out, _ = jax.jit(lambda t: model(t, None))(jnp.zeros((2, 3), jnp.int32))
    np.testing.assert_allclose(np.exp(np.asarray(out, np.float64)).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="model.adaptive_cutoffs"):
        parse_cutoffs("4,13", V)


def _awd_config(kind: str, **kw) -> ml_collections.ConfigDict:
    from lmscale.config import default_config
    c = default_config()
    c.model.update(kind=kind, hidden=H, embed=I, layers=2, weight_norm=False, embed_dropout=0.1,
                   input_dropout=0.2, hidden_dropout=0.2, output_dropout=0.3, weight_dropout=0.3,
                   ar_alpha=2.0, tar_beta=1.0, tie_embeddings=True, qrnn_zoneout=0.1, **kw)
    return c


@pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_train_step_adds_ar_tar_to_the_training_loss_only(k):
    """Logged loss = mean NLL over counted targets; the update's gradient = d(mean NLL + mean
    penalty) with the same keys (checked through grad_norm). k = 2: gradient accumulation over
    two segments of the batch (the penalty: the mean of the segments')."""
    from lmscale.models.registry import training_forward
    from lmscale.training import mesh as mesh_lib
    from lmscale.training.loss import cross_entropy_sums
    from lmscale.training.optimizer import make_optimizer
    from lmscale.training.state import create_state
    from lmscale.training.steps import make_train_step, row_dropout_keys, step_dropout_key
    cfg = _awd_config("qrnn")
    model = build_model(cfg.model, V, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(cfg.optim, 10)
    graphdef, state = create_state(model, tx, B, seed=0)
    rng = np.random.default_rng(5)
    weights = np.ones((B, T), np.float32)
    weights[1, :3] = 0  # uncounted targets: the loss is a mean over the counted ones
    resets = np.zeros((B, T), bool)
    resets[2, 4] = True
    batch = {"inputs": rng.integers(0, V, (B, T)).astype(np.int32),
             "targets": rng.integers(0, V, (B, T)).astype(np.int32),
             "weights": weights, "resets": resets}
    step = jax.jit(make_train_step(graphdef, tx, schedule, mesh_lib.make_mesh(jax.devices()[:1]),
                                   dropout=True, grad_accum_steps=k))
    _, metrics = step(state, batch)
    key = jax.random.fold_in(state.rng, state.step)
    width = T // k

    def reference(params, with_penalty):
        model = nnx.merge(graphdef, params)
        nats_sum, penalty_sum, carry = 0.0, 0.0, state.carry
        for j in range(k):
            seg = slice(j * width, (j + 1) * width)
            kj = key if k == 1 else jax.random.fold_in(key, j)
            logits, carry, penalty = training_forward(
                model, batch["inputs"][:, seg], carry, batch["resets"][:, seg],
                dropout_key=row_dropout_keys(kj, jnp.asarray(0), B), step_key=step_dropout_key(kj))
            carry = jax.lax.stop_gradient(carry)
            nats, _ = cross_entropy_sums(logits, batch["targets"][:, seg], batch["weights"][:, seg])
            nats_sum, penalty_sum = nats_sum + nats, penalty_sum + jnp.mean(penalty)
        nll = nats_sum / weights.sum()
        return nll + (penalty_sum / k if with_penalty else 0.0), nll

    both = jax.jit(lambda p: (jax.value_and_grad(lambda q: reference(q, True), has_aux=True)(p),
                              jax.grad(lambda q: reference(q, False)[0])(p)))
    ((_, nll), grads), plain = both(state.params)
    norm = lambda g: float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g))))
    np.testing.assert_allclose(float(metrics["loss"]), float(nll), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm(grads), rtol=1e-4)
    assert abs(norm(grads) - norm(plain)) > 1e-3 * norm(plain)  # the penalty did count


@pytest.mark.slow
def test_all_regularizers_train_identically_on_eight_devices_and_one():
    """QRNN and AWD-LSTM, every regularizer on: 3 steps on 8 fake devices = on 1 (per-step
    masks from the step key, per-row masks from the global row, the penalty's global mean)."""
    import json
    import os
    import subprocess
    import sys
    from tests.conftest import REPO, xla_flags
    env = dict(os.environ, XLA_FLAGS=xla_flags(8),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.models.awd_multi_device_worker"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    for kind in ("qrnn", "lstm"):
        r = result[kind]
        np.testing.assert_allclose(r["loss8"], r["loss1"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(r["norm8"], r["norm1"], rtol=1e-5)
        assert r["param_diff"] < 1e-5


def test_cutoffs_past_the_data_vocabulary_are_a_one_line_config_error(tmp_path, corpus):
    """The shipped WikiText-103 cut-offs on a smaller vocabulary: known only once the data is,
    said as the other config errors are (it was a 50-line traceback through jit)."""
    import subprocess
    from tests.conftest import REPO, tiny_train_command
    cmd = tiny_train_command(tmp_path / "run", corpus, **{"model.kind": "qrnn",
                                                           "model.adaptive_cutoffs": "100,300"})
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "below the vocabulary size 257" in lines[0], p.stderr[-2000:]
    assert "adaptive_cutoffs=" in lines[0]


def test_dropout_masks_do_not_change_under_jax_enable_x64():
    """A user's JAX_ENABLE_X64=1 drew each keep mask from float64 uniforms (a Python float p):
    other masks than the same run without it, and a resume across the setting not exact."""
    from lmscale.models.transformer_block import dropout
    key, keys = jax.random.PRNGKey(3), _row_keys(3)
    x = jnp.ones((B, T, H), jnp.float32)

    def masks():
        return [reg.embedding_dropout(jnp.ones((V, I), jnp.float32), key, 1, 0.3),
                reg.locked_mask(keys, 2, 0.3, B, H, jnp.float32),
                reg.row_bernoulli(key, 4, 0.7, T, B, H), reg.row_bernoulli(keys, 4, 0.7, T, B, H),
                lm_module._dropout_mask(key, 1, 0.7, (T, B, H)),
                lm_module._dropout_mask(keys, 1, 0.7, (T, B, H)),
                dropout(key, 5, 0.3, x), dropout(keys, 5, 0.3, x)]

    plain = masks()
    with jax.enable_x64(True):
        wide = masks()
    for a, b in zip(plain, wide):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_masks_of_two_tags_from_one_key_are_independent_and_per_row():
    """Each use folds its own tag into the key (module doc): two layers' or kinds' masks drawn
    from the same step key or row keys differ in about half their entries at p = 0.5; a locked
    mask from one key [2] is still one mask per row, not one for the batch."""
    key, keys, p = jax.random.PRNGKey(3), _row_keys(3), 0.5
    pairs = [[reg.weight_drop(jnp.ones((32, 32)), key, t, p) for t in (0, 1)],
             [reg.embedding_dropout(jnp.ones((256, 2)), key, t, p) for t in (0, 1)],
             [reg.locked_mask(keys, t, p, B, 64, jnp.float32) for t in (0, 1)],
             [reg.locked_mask(key, t, p, B, 64, jnp.float32) for t in (0, 1)],
             [reg.row_bernoulli(keys, t, p, T, B, 16) for t in (0, 1)],
             [reg.row_bernoulli(key, t, p, T, B, 16) for t in (0, 1)]]
    for a, b in pairs:
        assert 0.35 < np.mean(np.asarray(a) != np.asarray(b)) < 0.65
    one = np.asarray(reg.locked_mask(key, 0, p, B, 64, jnp.float32))  # one key: still per row
    assert one.shape == (B, 64) and not np.array_equal(one[0], one[1])
