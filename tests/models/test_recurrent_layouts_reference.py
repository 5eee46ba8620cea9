"""mLSTM / LSTM layers in both custom-backward layouts against the float64 NumPy reference
written from the equations (tests/models/numpy_reference.py), forward and gradients, in float32
and in the 2-byte compute dtypes.

Equations. mLSTM: Krause et al. 2016, "Multiplicative LSTM for sequence modelling", eqs.
18-23 (m_t = (W_mx x_t) * (W_mh h_{t-1}); the gates and the candidate from x_t and m_t), with
the candidate under tanh and PyTorch's gate order i, f, g, o as in sentiment-discovery
(Radford et al. 2017). LSTM: Hochreiter & Schmidhuber 1997 / Gers et al. 2000 (forget gate),
c_t = s(f) c_{t-1} + s(i) tanh(g), h_t = s(o) tanh(c_t). Weight norm: Salimans & Kingma 2016,
w = g v / ||v|| per output column.

Why: tests/models/test_recurrent.py compares the layer with NumPy only in the default layout
of the backend (XLA:CPU: "feature"); the "batch" layout (recurrent_batch_major, the default on
GPU) was compared only with autodiff of lmscale's own scan, and the float16 forward with
nothing. Here:
  * forward, both layouts, float32: atol = rtol = 1e-5 against float64 NumPy;
  * forward, bfloat16 compute: atol 6e-3 (8-bit significand, unit roundoff 2^-9 ~ 2e-3: the
    bfloat16 output h alone (|h| < 1) is off by up to 2e-3; 1.3e-3 seen over T = 7 steps);
    float16 compute: atol 1e-3 (unit roundoff 2^-12 ~ 2.4e-4; 1.9e-4 seen);
  * gradients of a scalar probe loss w.r.t. g, v, bias, inputs and the initial carry, custom
    backward in both layouts, float32, against central finite differences (step 1e-6) of the
    float64 NumPy forward: atol 2e-4 + rtol 1e-3 (float32 rounding of a sum over ~T*B*H terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.models.recurrent import scan_options
from tests.models.helpers import layer_weights, randomize_params
from tests.models.numpy_reference import np_rnn, np_weight_norm
from tests.models.test_recurrent import B, H, IN, LAYERS, T, inputs, make_resets

FORWARD_TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-5),
               jnp.bfloat16: dict(atol=6e-3, rtol=0),
               jnp.float16: dict(atol=1e-3, rtol=0)}


def _inputs(seed: int = 0):
    """test_recurrent's inputs, and random probes of the outputs for a scalar loss."""
    rng = np.random.default_rng(seed + 1000)
    return (*inputs(seed), rng.normal(size=(B, T, H)), rng.normal(size=(B, H)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("layout", ["feature", "batch"])
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_forward_matches_numpy_in_each_layout_and_dtype(kind, layout, dtype):
    layer = LAYERS[kind](IN, H, weight_norm=True, dtype=dtype, rngs=nnx.Rngs(1))
    randomize_params(layer, seed=2)
    xs, h0, c0, _, _ = _inputs()
    resets = make_resets()
    with scan_options(layout=layout):
        hs, (h, c), cs = layer(jnp.asarray(xs), (jnp.asarray(h0), jnp.asarray(c0)),
                               jnp.asarray(resets), return_cells=True)
    ref_hs, ref_cs, (ref_h, ref_c) = np_rnn(kind, xs, h0, c0, layer_weights(layer), resets)
    assert hs.dtype == dtype and c.dtype == jnp.float32
    tol = FORWARD_TOL[dtype]
    for name, got, want in [("hs", hs, ref_hs), ("cs", cs, ref_cs), ("h", h, ref_h), ("c", c, ref_c)]:
        np.testing.assert_allclose(np.asarray(got, np.float64), want, err_msg=name, **tol)


def _np_loss(kind, flat: dict, xs, h0, c0, resets, probe_h, probe_c) -> float:
    """The probe loss of the NumPy forward, from the raw parameters (g, v, bias)."""
    names = ["w_x", "w_h"] + (["w_mx", "w_mh"] if kind == "mlstm" else [])
    w = {n: np_weight_norm(flat[(n, "g")], flat[(n, "v")]) for n in names}
    w["b"] = flat[("bias",)]
    hs, _, (_, c) = np_rnn(kind, xs, h0, c0, w, resets)
    return float(np.sum(hs * probe_h) + np.sum(np.sin(c) * probe_c))


@pytest.mark.parametrize("layout", ["feature", "batch"])
@pytest.mark.parametrize("kind", ["mlstm", "lstm"])
def test_custom_backward_matches_finite_differences_of_numpy(kind, layout):
    layer = LAYERS[kind](IN, H, weight_norm=True, rngs=nnx.Rngs(3))
    randomize_params(layer, seed=4)
    xs, h0, c0, probe_h, probe_c = _inputs(5)
    resets = make_resets()
    graphdef, params = nnx.split(layer, nnx.Param)

    def loss(params, xs, h0, c0):
        model = nnx.merge(graphdef, params)
        hs, (_, c) = model(xs, (h0, c0), jnp.asarray(resets))
        return jnp.sum(hs * jnp.asarray(probe_h, jnp.float32)) + \
            jnp.sum(jnp.sin(c) * jnp.asarray(probe_c, jnp.float32))

    with scan_options(layout=layout, grad="custom"):
        g_params, g_xs, g_h0, g_c0 = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
            params, jnp.asarray(xs), jnp.asarray(h0), jnp.asarray(c0))
    got = {tuple(str(k) for k in path): np.asarray(v[...], np.float64)
           for path, v in nnx.to_flat_state(g_params)}
    flat = {tuple(str(k) for k in path): np.asarray(v[...], np.float64)
            for path, v in nnx.to_flat_state(params)}
    args = {"xs": np.asarray(xs, np.float64), "h0": np.asarray(h0, np.float64),
            "c0": np.asarray(c0, np.float64)}
    got.update({("xs",): np.asarray(g_xs, np.float64), ("h0",): np.asarray(g_h0, np.float64),
                ("c0",): np.asarray(g_c0, np.float64)})

    def evaluate(flat, args):
        return _np_loss(kind, flat, args["xs"], args["h0"], args["c0"], resets, probe_h, probe_c)

    rng = np.random.default_rng(6)
    eps = 1e-6
    checked = 0
    for key in got:
        holder = args if key[0] in args and len(key) == 1 else flat
        name = key[0] if holder is args else key
        base = holder[name]
        for flat_index in rng.choice(base.size, size=min(6, base.size), replace=False):
            idx = np.unravel_index(flat_index, base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            fd = (evaluate({**flat, name: plus} if holder is flat else flat,
                           {**args, name: plus} if holder is args else args)
                  - evaluate({**flat, name: minus} if holder is flat else flat,
                             {**args, name: minus} if holder is args else args)) / (2 * eps)
            np.testing.assert_allclose(got[key][idx], fd, atol=2e-4, rtol=1e-3,
                                       err_msg=f"{key}{idx}")
            checked += 1
    assert checked >= 6 * 8  # every leaf (g, v of each matrix, bias, xs, h0, c0) was probed
