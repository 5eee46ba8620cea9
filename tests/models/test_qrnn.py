"""QRNN: fo-pooling and the layer against NumPy loops written from the equations; both poolings
equal; the window-2 input carried across batches and zeroed at resets; zoneout; the LM
(decode = full pass, features, fix_unit); FLOPs. Tolerances: float32 vs float64, 1e-5."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model, flops_per_token
from lmscale.models import regularizers as reg
from lmscale.models.qrnn import POOLINGS, fo_pool, qrnn_scan
from tests.models.numpy_reference import sigmoid

T, B, I, H = 9, 3, 5, 4
TOL = dict(atol=1e-5, rtol=1e-5)


def np_fo_pool(f, z, c0, resets):
    """c_t = f_t z_t + (1 - f_t) c_{t-1}, c_{t-1} zeroed where resets[t]; time-major."""
    c, out = np.array(c0, np.float64), []
    for t in range(f.shape[0]):
        c = np.where(resets[t][:, None], 0.0, c)
        c = f[t] * z[t] + (1.0 - f[t]) * c
        out.append(c)
    return np.stack(out)


def np_qrnn(xs, c0, x_prev, w, b, resets, window, f_mult=None):
    """The QRNN layer from its equations, one step at a time (float64). f_mult: [T, B, H]
    multiplier of f (zoneout) or None. Returns (hs, cs, (c, x_last))."""
    xs, c = np.asarray(xs, np.float64), np.array(c0, np.float64)
    prev = np.array(x_prev, np.float64)
    hs, cs = [], []
    for t in range(xs.shape[0]):
        keep = ~resets[t][:, None]
        prev, c = prev * keep, c * keep
        src = xs[t] if window == 1 else np.concatenate([xs[t], prev], axis=1)
        y = src @ w + b
        z, f, o = np.tanh(y[:, :H]), sigmoid(y[:, H:2 * H]), sigmoid(y[:, 2 * H:])
        if f_mult is not None:
            f = f * f_mult[t]
        c = f * z + (1 - f) * c
        hs.append(o * c)
        cs.append(c)
        prev = xs[t]
    return np.stack(hs), np.stack(cs), (c, prev)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    resets = np.zeros((T, B), bool)
    resets[0, 1] = resets[4, 0] = resets[6, 2] = True
    return rng, resets


@pytest.mark.parametrize("pooling", POOLINGS)
def test_fo_pool_matches_numpy_loop_with_resets(pooling):
    rng, resets = _data()
    f = rng.uniform(0, 1, (T, B, H)).astype(np.float32)
    z = rng.uniform(-1, 1, (T, B, H)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (B, H)).astype(np.float32)
    keep = jnp.asarray(~resets, jnp.float32)[..., None]
    got = jax.jit(fo_pool, static_argnums=4)(jnp.asarray(f), jnp.asarray(z), jnp.asarray(c0),
                                             keep, pooling)
    np.testing.assert_allclose(np.asarray(got), np_fo_pool(f, z, c0, resets), **TOL)


def test_associative_and_sequential_pooling_agree_in_value_and_gradient():
    rng, resets = _data(1)
    f, z = (jnp.asarray(rng.uniform(0.05, 0.95, (T, B, H)), jnp.float32) for _ in range(2))
    c0 = jnp.asarray(rng.uniform(-1, 1, (B, H)), jnp.float32)
    keep = jnp.asarray(~resets, jnp.float32)[..., None]
    loss = lambda p: lambda f, z, c0: jnp.sum(jnp.sin(fo_pool(f, z, c0, keep, p)))
    ga = jax.jit(jax.grad(loss("associative"), argnums=(0, 1, 2)))(f, z, c0)
    gs = jax.jit(jax.grad(loss("sequential"), argnums=(0, 1, 2)))(f, z, c0)
    for a, s in zip(ga, gs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(s), **TOL)


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_layer_matches_numpy_and_carries_across_batches(window, pooling):
    """Two batches of T steps with the carry passed on = one NumPy pass over 2T steps."""
    rng, resets = _data(2)
    resets2 = np.concatenate([resets, np.roll(resets, 1, axis=1)])  # [2T, B]
    xs = rng.uniform(-1, 1, (2 * T, B, I)).astype(np.float32)
    w = rng.uniform(-0.5, 0.5, (window * I, 3 * H)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, (3 * H,)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (B, H)).astype(np.float32)
    x_prev = rng.uniform(-1, 1, (B, I)).astype(np.float32)
    carry = (jnp.asarray(c0),) + ((jnp.asarray(x_prev),) if window == 2 else ())
    scan = jax.jit(lambda *a: qrnn_scan(*a, window=window, pooling=pooling, return_cells=True))
    outs = []
    for half in (slice(0, T), slice(T, 2 * T)):
        hs, carry, cs = scan(jnp.asarray(xs[half]), carry, jnp.asarray(w), jnp.asarray(b),
                             jnp.asarray(resets2[half]))
        outs.append((hs, cs))
    ref_h, ref_c, (c_last, x_last) = np_qrnn(xs, c0, x_prev, w, b, resets2, window)
    np.testing.assert_allclose(np.concatenate([np.asarray(o[0]) for o in outs]), ref_h, **TOL)
    np.testing.assert_allclose(np.concatenate([np.asarray(o[1]) for o in outs]), ref_c, **TOL)
    np.testing.assert_allclose(np.asarray(carry[0]), c_last, **TOL)
    assert len(carry) == window and all(a.shape[0] == B for a in carry)  # batch-leading leaves
    if window == 2:
        np.testing.assert_allclose(np.asarray(carry[1]), x_last, **TOL)


def test_zoneout_training_masks_f_and_evaluation_scales_it():
    rng, resets = _data(3)
    xs = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    w = rng.uniform(-0.5, 0.5, (I, 3 * H)).astype(np.float32)
    b = np.zeros(3 * H, np.float32)
    c0 = np.zeros((B, H), np.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(B))
    args = (jnp.asarray(xs), (jnp.asarray(c0),), jnp.asarray(w), jnp.asarray(b), jnp.asarray(resets))
    train, _, _ = jax.jit(lambda k: qrnn_scan(*args, zoneout=0.3, zoneout_keys=k))(keys)
    mask = np.asarray(reg.row_bernoulli(keys, 0, 0.7, T, B, H), np.float64)
    assert 0.5 < mask.mean() < 0.9
    np.testing.assert_allclose(np.asarray(train), np_qrnn(xs, c0, c0[:, :0], w, b, resets, 1,
                                                          mask)[0], **TOL)
    evaluation, _, _ = jax.jit(lambda: qrnn_scan(*args, zoneout=0.3))()
    np.testing.assert_allclose(np.asarray(evaluation),
                               np_qrnn(xs, c0, c0[:, :0], w, b, resets, 1,
                                       np.full((T, B, H), 0.7))[0], **TOL)


def _qrnn_config(**kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(kind="qrnn", hidden=8, embed=6, layers=2, dropout=0.0,
                                       weight_norm=False, qrnn_window=2))
    c.update(kw)
    return c


def test_qrnn_lm_decodes_token_by_token_like_the_full_pass():
    model = build_model(_qrnn_config(), 11, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (B, T)), jnp.int32)
    logits, carry = jax.jit(lambda t: model(t, None))(tokens)
    state, steps = model.init_decode(B), []
    decode = jax.jit(model.decode_step)
    for t in range(T):
        out, state = decode(tokens[:, t], state)
        steps.append(out)
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(logits), **TOL)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(carry)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    feats = jax.jit(lambda t: model.features(t, None))(tokens)
    assert feats["hidden"].shape == feats["cell"].shape == (2, B, T, 8)
    np.testing.assert_allclose(np.asarray(feats["cell"][-1, :, -1]), np.asarray(carry[-1][0]), **TOL)
    fixed = model.fix_unit(state, 3, 0.5, "cell")
    assert np.all(np.asarray(fixed[-1][0][:, 3]) == 0.5)
    with pytest.raises(ValueError, match="cell"):
        model.fix_unit(state, 3, 0.5, "hidden")


def test_qrnn_flops_per_token():
    # layer 0: window 2, in 6 -> 3*8; layer 1: window 1, in 8 -> 3*8; decoder 8*11.
    assert flops_per_token(_qrnn_config(), 11) == 2 * (2 * 6 * 24 + 8 * 24 + 8 * 11)
    tied = _qrnn_config(tie_embeddings=True, adaptive_cutoffs="4")
    # tied: the last layer is embed (6) wide; one tombstone.
    assert flops_per_token(tied, 11) == 2 * (2 * 6 * 24 + 8 * 18 + 6 * (11 + 1))


def test_bad_qrnn_fields_name_the_key():
    from lmscale.config import ConfigError, default_config, validate
    for key, value, match in (("qrnn_window", 3, "model.qrnn_window"),
                              ("qrnn_pooling", "fast", "model.qrnn_pooling"),
                              ("qrnn_zoneout", 1.0, "model.qrnn_zoneout"),
                              ("weight_dropout", -0.1, "model.weight_dropout"),
                              ("adaptive_cutoffs", "10,5", "model.adaptive_cutoffs"),
                              ("ar_alpha", -1.0, "model.ar_alpha")):
        c = default_config()
        c.model.kind = "qrnn"
        c.model[key] = value
        with pytest.raises(ConfigError, match=match):
            validate(c)


@pytest.mark.parametrize("name", ["awd_lstm_char", "awd_lstm_char_cpu", "qrnn_char",
                                  "qrnn_char_cpu"])
def test_awd_and_qrnn_configs_validate(name):
    from lmscale.config import config_from_file, validate
    from lmscale.models.recurrent_kinds import layer_sizes
    from tests.conftest import REPO
    config = config_from_file(str(REPO / "configs" / f"{name}.py"))
    validate(config)
    sizes = layer_sizes(config.model)
    if not name.endswith("_cpu"):  # the full recipes tie (the CPU variants do not)
        assert config.model.tie_embeddings and sizes[-1] == config.model.embed
    assert flops_per_token(config.model, 257) > 0


@pytest.mark.slow
def test_qrnn_run_with_all_regularizers_resumes_bitwise(tmp_path):
    """8 steps in one go = 4 steps, checkpoint, resume to 8 (the window-2 input and c carried
    in the checkpoint; masks from the step and row)."""
    from lmscale.training.loop import train
    from lmscale.training.metrics import read_metrics
    from tests.conftest import tiny_config, write_corpus
    corpus = write_corpus(tmp_path / "corpus")
    o = {"model.kind": "qrnn", "model.layers": 2, "model.weight_norm": False,
         "model.input_dropout": 0.1, "model.hidden_dropout": 0.1, "model.output_dropout": 0.1,
         "model.weight_dropout": 0.2, "model.embed_dropout": 0.1, "model.ar_alpha": 1.0,
         "model.tar_beta": 1.0, "model.qrnn_zoneout": 0.1, "train.steps": 8,
         "optim.decay_steps": 8, "train.log_every": 1, "checkpoint.every": 4,
         "train.eval_every": 4}
    train(tiny_config(corpus, **o), str(tmp_path / "full"))
    train(tiny_config(corpus, **{**o, "train.steps": 4}), str(tmp_path / "split"))
    train(tiny_config(corpus, **o), str(tmp_path / "split"))
    records = lambda d: [(r["step"], r["split"], r["loss"]) for r in read_metrics(str(tmp_path / d))]
    assert len(records("full")) == 10 and records("split") == records("full")


def test_qrnn_settings_in_another_kind_are_noted():
    """--config.model.qrnn_zoneout=0.5 on an LSTM trained without zoneout, and config.json
    recorded 0.5 as if applied, without a word."""
    from lmscale.config import default_config
    from lmscale.models.registry import unused_settings_note
    model = default_config().model
    model.kind = "lstm"
    assert unused_settings_note(model) is None  # defaults: nothing to say
    model.qrnn_zoneout, model.qrnn_window = 0.5, 1
    assert unused_settings_note(model) == ("note: model.qrnn_window=1, model.qrnn_zoneout=0.5 are "
                                           "settings of model.kind='qrnn', unused by model.kind='lstm'")
    model.kind = "qrnn"
    assert unused_settings_note(model) is None


@pytest.mark.parametrize("window", [1, 2])
def test_weights_and_bias_drawn_as_pytorch_linear_on_the_window_input(window):
    # nn.Linear(window * in, 3H): U(+-1/sqrt(window * in)) for w and bias (pytorch-qrnn)
    from lmscale.models.qrnn import QRNNLayer
    layer = QRNNLayer(64, 128, window=window, rngs=nnx.Rngs(0))
    bound = 1 / np.sqrt(window * 64)
    for a in (np.asarray(layer.w()), np.asarray(layer.bias[...])):
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert np.asarray(layer.w()).shape == (window * 64, 3 * 128)


def test_weight_drop_masks_w_once_at_its_own_rate_and_not_in_evaluation():
    """DropConnect on the whole W (window 2: both halves) at ``weight_drop``'s rate, not
    zoneout's; entries 0 or w/(1-p); one mask for all T steps; no key: the full W."""
    from lmscale.models.qrnn import QRNNLayer
    p, zoneout = 0.5, 0.25
    layer = QRNNLayer(I, H, window=2, weight_drop=p, zoneout=zoneout, rngs=nnx.Rngs(0))
    rng, resets = _data(5)
    xs = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    carry = (np.zeros((B, H), np.float32), np.zeros((B, I), np.float32))
    key = jax.random.PRNGKey(7)
    run = jax.jit(lambda k: layer.scan_time_major(jnp.asarray(xs), carry, jnp.asarray(resets),
                                                  step_key=k)[0])
    full, b = np.asarray(layer.w(), np.float64), np.asarray(layer.bias[...], np.float64)
    dropped = np.asarray(reg.weight_drop(layer.w(), key, 0, p), np.float64)
    assert np.all((dropped == 0) | np.isclose(dropped, full / (1 - p)))
    assert 0.4 < np.mean(dropped == 0) < 0.6  # 5 * 2 * 12 entries at p = 0.5
    f_mult = np.full((T, B, H), 1 - zoneout)  # no row keys: evaluation's zoneout
    ref = np_qrnn(xs, *carry, dropped, b, resets, 2, f_mult)[0]
    np.testing.assert_allclose(np.asarray(run(key)), ref, **TOL)
    no_drop = layer.scan_time_major(jnp.asarray(xs), carry, jnp.asarray(resets))[0]
    np.testing.assert_allclose(np.asarray(no_drop), np_qrnn(xs, *carry, full, b, resets, 2,
                                                            f_mult)[0], **TOL)
