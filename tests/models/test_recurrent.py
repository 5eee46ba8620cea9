"""MLSTMLayer / LSTMLayer vs the NumPy reference; gradients vs finite differences; precision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from lmscale.models import LSTMLayer, MLSTMLayer, lstm_scan, mlstm_scan, weight_norm
from tests.models.helpers import layer_weights, randomize_params
from tests.models.numpy_reference import np_rnn

B, T, IN, H = 3, 7, 5, 8
LAYERS = {"mlstm": MLSTMLayer, "lstm": LSTMLayer}


def make_resets() -> np.ndarray:
    """Resets at different positions per row (row 2 has none; row 0 resets at t=0 and t=4)."""
    r = np.zeros((B, T), bool)
    r[0, 0] = r[0, 4] = True
    r[1, 2] = r[1, 3] = r[1, 6] = True
    return r


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(B, T, IN)).astype(np.float32)
    h0 = rng.uniform(-0.8, 0.8, (B, H)).astype(np.float32)
    c0 = rng.uniform(-1.5, 1.5, (B, H)).astype(np.float32)
    return xs, h0, c0


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("wn", [True, False])
@pytest.mark.parametrize("with_resets", [True, False])
def test_layer_matches_numpy(kind, wn, with_resets):
    layer = LAYERS[kind](IN, H, weight_norm=wn, rngs=nnx.Rngs(1))
    randomize_params(layer, seed=2)
    xs, h0, c0 = inputs()
    resets = make_resets() if with_resets else None
    hs, (h, c), cs = layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)),
                           None if resets is None else jnp.asarray(resets), return_cells=True)
    ref_hs, ref_cs, (ref_h, ref_c) = np_rnn(kind, xs, h0, c0, layer_weights(layer), resets)
    assert hs.shape == cs.shape == (B, T, H)
    assert h.dtype == c.dtype == cs.dtype == jnp.float32
    for got, want in [(hs, ref_hs), (cs, ref_cs), (h, ref_h), (c, ref_c)]:
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    # Without return_cells: same hs and carry, two outputs.
    hs2, (h2, c2) = layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)),
                          None if resets is None else jnp.asarray(resets))
    np.testing.assert_array_equal(np.asarray(hs2), np.asarray(hs))
    np.testing.assert_array_equal(np.asarray(c2), np.asarray(c))


def test_resets_zero_the_state():
    """A reset at t makes row outputs from t on independent of the state before t."""
    layer = MLSTMLayer(IN, H, rngs=nnx.Rngs(0))
    randomize_params(layer, seed=3)
    xs, h0, c0 = inputs()
    resets = np.zeros((B, T), bool)
    resets[:, 3] = True
    a, _ = layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)), jnp.asarray(resets))
    xs2 = xs.copy()
    xs2[:, :3] += 1.0
    b, _ = layer(jnp.asarray(xs2), (jnp.zeros((B, H)), jnp.zeros((B, H))), jnp.asarray(resets))
    np.testing.assert_allclose(np.asarray(a)[:, 3:], np.asarray(b)[:, 3:], atol=1e-6)
    assert not np.allclose(np.asarray(a)[:, :3], np.asarray(b)[:, :3])


def test_initial_weight_norm_is_identity():
    """At init g = ||v||, so the effective matrices equal v; uniform(+-1/sqrt(H)) init."""
    layer = MLSTMLayer(IN, H, rngs=nnx.Rngs(0))
    for name in ["w_x", "w_mx", "w_mh", "w_h"]:
        m = getattr(layer, name)
        np.testing.assert_allclose(np.asarray(m()), np.asarray(m.v[...]), rtol=1e-6, atol=1e-7)
        assert np.abs(np.asarray(m.v[...])).max() <= 1 / np.sqrt(H)
    assert layer.w_x.g.shape == (4 * H,) and layer.w_mh.v.shape == (H, H)
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), 0.0)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_scan_gradients_match_finite_differences(kind, x64):
    """d(loss)/d(g, v, b, inputs, initial carry) vs central differences, in float64."""
    rng = np.random.default_rng(5)
    f64 = lambda *s: jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float64)
    names = ["w_x", "w_h"] + (["w_mx", "w_mh"] if kind == "mlstm" else [])
    shapes = {"w_x": (IN, 4 * H), "w_h": (H, 4 * H), "w_mx": (IN, H), "w_mh": (H, H)}
    gs = {n: jnp.asarray(rng.uniform(0.5, 1.5, shapes[n][1:]), jnp.float64) for n in names}
    vs = {n: f64(*shapes[n]) for n in names}
    b, xs, h0, c0 = f64(4 * H), f64(T, B, IN), f64(B, H), f64(B, H)
    resets = jnp.asarray(make_resets().T)
    probe = f64(T, B, H)

    def loss(gs, vs, b, xs, h0, c0):
        w = {n: weight_norm(gs[n], vs[n]) for n in names}
        if kind == "mlstm":
            hs, (h, c), cs = mlstm_scan(xs, (h0, c0), w["w_x"], w["w_mx"], w["w_mh"], w["w_h"], b,
                                        resets, dtype=jnp.float64, return_cells=True)
        else:
            hs, (h, c), cs = lstm_scan(xs, (h0, c0), w["w_x"], w["w_h"], b, resets,
                                       dtype=jnp.float64, return_cells=True)
        assert hs.dtype == jnp.float64
        return jnp.sum(hs * probe) + jnp.sum(jnp.sin(h) + c ** 2) + jnp.sum(cs * probe)

    check_grads(loss, (gs, vs, b, xs, h0, c0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    grads = jax.grad(loss, argnums=(0, 1, 4, 5))(gs, vs, b, xs, h0, c0)
    for leaf in jax.tree.leaves(grads):
        assert float(jnp.abs(leaf).max()) > 0


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_bfloat16_close_to_float32(kind):
    """bfloat16 compute: outputs within atol 2e-2 of float32 (|h| < 1); carry stays float32."""
    layers = {dt: LAYERS[kind](IN, H, dtype=dt, rngs=nnx.Rngs(4)) for dt in (jnp.float32, jnp.bfloat16)}
    for layer in layers.values():
        randomize_params(layer, seed=6)
    xs, h0, c0 = inputs(1)
    resets = jnp.asarray(make_resets())
    out = {dt: layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)), resets, return_cells=True)
           for dt, layer in layers.items()}
    hs16, (h16, c16), cs16 = out[jnp.bfloat16]
    hs32, (h32, c32), cs32 = out[jnp.float32]
    assert hs16.dtype == jnp.bfloat16
    assert h16.dtype == c16.dtype == cs16.dtype == jnp.float32
    assert layers[jnp.bfloat16].w_x.v[...].dtype == jnp.float32  # params stay float32
    np.testing.assert_allclose(np.asarray(hs16, np.float32), np.asarray(hs32), atol=2e-2)
    np.testing.assert_allclose(np.asarray(c16), np.asarray(c32), atol=5e-2)
    np.testing.assert_allclose(np.asarray(h16), np.asarray(h32), atol=2e-2)


@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
@pytest.mark.parametrize("layout", ["feature", "batch"])
def test_a_reset_clears_a_state_that_overflowed(kind, layout):
    """A text whose float16 forward overflowed left NaN in its row's state, and the reset to
    the next packed text multiplied it by 0 (NaN): every later text of the row came back NaN.
    Here a NaN input at t = 1 in row 0, a reset at t = 3: from t = 3 on the row is finite and
    equals a fresh start."""
    from lmscale.models.recurrent import scan_options
    layer = (MLSTMLayer if kind == "mlstm" else LSTMLayer)(IN, H, rngs=nnx.Rngs(0))
    randomize_params(layer, seed=3)
    xs, h0, c0 = inputs()
    resets = np.zeros((B, T), bool)
    resets[:, 3] = True
    poisoned = xs.copy()
    poisoned[0, 1] = np.nan
    with scan_options(layout=layout):
        a, _ = layer(jnp.asarray(poisoned), (jnp.asarray(h0), jnp.asarray(c0)), jnp.asarray(resets))
        b, _ = layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)), jnp.asarray(resets))
    a, b = np.asarray(a), np.asarray(b)
    assert np.isnan(a[0, 1:3]).all()
    np.testing.assert_allclose(a[:, 3:], b[:, 3:], atol=1e-6)


def test_scan_options_of_one_thread_do_not_reach_another():
    """``with scan_options(...)`` pushed onto one stack for the process: a thread tracing a
    model while another (a notebook's, a server's) held a block traced with its options."""
    import threading
    from lmscale.models.recurrent import current_scan_options, scan_options
    inside, done, seen = threading.Event(), threading.Event(), []

    def hold() -> None:
        with scan_options(grad="autodiff", unroll=3):
            inside.set()
            done.wait(30)
            seen.append(current_scan_options().unroll)  # its own still

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(30)
        other = threading.Thread(target=lambda: seen.append(current_scan_options()))
        other.start()
        other.join(30)
        assert seen == [current_scan_options()] and seen[0].grad != "autodiff"
    finally:
        done.set()
        holder.join(30)
    assert seen[1] == 3 and current_scan_options().unroll != 3


def test_scan_options_end_with_their_block_nested_or_raised():
    from lmscale.models.recurrent import current_scan_options, scan_options
    default = current_scan_options()
    with scan_options(grad="autodiff"):
        with pytest.raises(RuntimeError), scan_options(unroll=2):
            assert current_scan_options().unroll == 2
            raise RuntimeError
        assert (current_scan_options().grad, current_scan_options().unroll) == (
            "autodiff", default.unroll)
    assert current_scan_options() == default
