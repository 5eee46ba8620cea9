"""Quasi-recurrent layer (QRNN, Bradbury et al. 2016; salesforce/pytorch-qrnn), time-major.

Per layer, with input x_t [B, I] and window k (1 or 2):
  source_t = x_t (k = 1)  or  [x_t, x_{t-1}] (k = 2; x_{-1} is the previous batch's last
  input, carried like the RNN state, and x_{t-1} is zeroed where a segment starts at t)
  [Z~, F~, O~] = source_t W + b        W (k*I, 3H): one projection for all three
  z = tanh(Z~), f = sigmoid(F~), o = sigmoid(O~)
  zoneout on f (training: f * Bernoulli(1 - zoneout) per element and step, no rescale;
  evaluation: f * (1 - zoneout)), as pytorch-qrnn
  fo-pooling: c_t = f_t * z_t + (1 - f_t) * c_{t-1};  h_t = o_t * c_t
A reset before step t zeroes c_{t-1} (and x_{t-1}).

The only sequential part is fo-pooling, which is linear in c: c_t = a_t c_{t-1} + b_t with
a_t = (1 - f_t) keep_t, b_t = f_t z_t. It runs as ``jax.lax.associative_scan`` over the pairs
(a, b) with (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2) (``pooling="associative"``) or as a
plain ``lax.scan`` (``"sequential"``, the default: 2-3x faster forward + backward on a 2-core
CPU, e.g. 10 vs 32 ms at T=128, B=32, H=256; see benchmarks/README.md).
The projection W is one matmul over all T x B rows; weight drop masks W once per call.
Carry per layer: (c [B, H],) for window 1, (c [B, H], x_prev [B, I]) for window 2; the
gate math and c are float32 (float64 when computing in float64).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models import fast_dot
from lmscale.models import regularizers as reg
from lmscale.models.dtypes import at_least_float32
from lmscale.models.initializers import symmetric_uniform
from lmscale.models.weight_norm import make_matrix

POOLINGS = ("sequential", "associative")
# (hs [T, B, H] in compute dtype, new carry, cs [T, B, H] float32 or None)
ScanResult = tuple[jax.Array, tuple[jax.Array, ...], jax.Array | None]


def fo_pool(f: jax.Array, z: jax.Array, c0: jax.Array, keep: jax.Array | None = None,
            pooling: str = "sequential") -> jax.Array:
    """c_t = f_t z_t + (1 - f_t) keep_t c_{t-1}; f, z [T, B, H], c0 [B, H], keep [T, B, 1] (0
    where a segment starts) or None. Returns all c [T, B, H]."""
    a = 1.0 - f
    if keep is not None:
        a = a * keep
    b = f * z
    if pooling == "sequential":
        def step(c, ab):
            a_t, b_t = ab
            c = a_t * c + b_t
            return c, c
        _, cs = jax.lax.scan(step, c0, (a, b))
        return cs
    if pooling != "associative":
        raise ValueError(f"model.qrnn_pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    b = b.at[0].add(a[0] * c0)  # fold the initial state into the first step

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    _, cs = jax.lax.associative_scan(combine, (a, b), axis=0)
    return cs


def qrnn_scan(xs: jax.Array, carry: tuple[jax.Array, ...], w: jax.Array, bias: jax.Array,
              resets: jax.Array | None = None, *, window: int = 1, zoneout: float = 0.0,
              zoneout_keys: jax.Array | None = None, pooling: str = "sequential",
              dtype: Any = jnp.float32, return_cells: bool = False) -> ScanResult:
    """One QRNN layer over a time-major sequence.

    xs [T, B, I]; carry (c [B, H],) or (c, x_prev [B, I]) for window 2; w (window*I, 3H);
    bias (3H,); resets bool [T, B] or None; zoneout_keys: row keys [B, 2] or one key (training
    zoneout) or None (evaluation: f scaled by 1 - zoneout).
    Returns (hs [T, B, H] in ``dtype``, new carry, cs [T, B, H] float32 or None).
    """
    sdt = at_least_float32(dtype)
    steps, batch, width = xs.shape
    keep = None if resets is None else jnp.logical_not(resets)[..., None]
    x = xs.astype(dtype)
    # Float32 results (``fast_dot.dense``: XLA:CPU's fast path and backward in 2-byte dtypes).
    y = fast_dot.dense(x, w[:width], dtype)
    new_carry_tail: tuple[jax.Array, ...] = ()
    if window == 2:
        x_prev = jnp.concatenate([carry[1].astype(dtype)[None], x[:-1]], axis=0)
        if keep is not None:
            x_prev = jnp.where(keep, x_prev, jnp.zeros_like(x_prev))
        y = y + fast_dot.dense(x_prev, w[width:], dtype)
        new_carry_tail = (xs[-1].astype(carry[1].dtype),)
    y = y + bias.astype(sdt)
    z_pre, f_pre, o_pre = jnp.split(y, 3, axis=-1)
    z, f, o = jnp.tanh(z_pre), jax.nn.sigmoid(f_pre), jax.nn.sigmoid(o_pre)
    hidden = z.shape[-1]
    if zoneout > 0.0:
        if zoneout_keys is None:
            f = f * (1.0 - zoneout)
        else:
            f = f * reg.row_bernoulli(zoneout_keys, 0, 1.0 - zoneout, steps, batch,
                                      hidden).astype(sdt)
    c0 = jnp.asarray(carry[0], sdt)
    cs = fo_pool(f, z, c0, None if keep is None else keep.astype(sdt), pooling)
    hs = (o * cs).astype(dtype)
    return hs, (cs[-1], *new_carry_tail), (cs if return_cells else None)


class QRNNLayer(nnx.Module):
    """QRNN layer; params ``w`` ((window*in, 3H): kernel, or g/v with weight norm) and ``bias``.

    ``weight_drop``: DropConnect rate on ``w`` (training only); ``zoneout``: rate on f.
    Init as PyTorch's nn.Linear: uniform(+-1/sqrt(window*in)) for w and bias.
    """

    def __init__(self, in_features: int, hidden: int, *, window: int = 1, zoneout: float = 0.0,
                 weight_drop: float = 0.0, pooling: str = "sequential",
                 weight_norm: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if window not in (1, 2):
            raise ValueError(f"model.qrnn_window must be 1 or 2, got {window}")
        if pooling not in POOLINGS:
            raise ValueError(f"model.qrnn_pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        bound = 1.0 / float(window * in_features) ** 0.5
        self.in_features, self.hidden, self.window, self.dtype = in_features, hidden, window, dtype
        self.zoneout, self.weight_drop, self.pooling = float(zoneout), float(weight_drop), pooling
        self.w = make_matrix(window * in_features, 3 * hidden, weight_norm=weight_norm,
                             init=symmetric_uniform(bound), rngs=rngs)
        self.bias = nnx.Param(symmetric_uniform(bound)(rngs.params(), (3 * hidden,), jnp.float32))

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, ...]:
        """(c [B, H],) or, for window 2, (c, x_prev [B, in]); float32 zeros."""
        c = jnp.zeros((batch_size, self.hidden), jnp.float32)
        if self.window == 2:
            return c, jnp.zeros((batch_size, self.in_features), jnp.float32)
        return (c,)

    def scan_time_major(self, xs: jax.Array, carry: tuple[jax.Array, ...],
                        resets: jax.Array | None = None, *, return_cells: bool = False,
                        step_key: jax.Array | None = None, row_keys: jax.Array | None = None
                        ) -> ScanResult:
        """xs [T, B, in], resets [T, B] -> (hs [T, B, H], carry, cs [T, B, H] | None).

        ``step_key`` (per forward pass, this layer's): weight-drop mask of ``w``;
        ``row_keys`` ([B, 2] or one key, this layer's): zoneout masks. None: evaluation."""
        w = self.w()
        if step_key is not None:
            w = reg.weight_drop(w, step_key, 0, self.weight_drop)
        return qrnn_scan(xs, tuple(carry), w, self.bias[...], resets, window=self.window,
                         zoneout=self.zoneout, zoneout_keys=row_keys, pooling=self.pooling,
                         dtype=self.dtype, return_cells=return_cells)

    holdable_states = ("cell",)  # fix_unit's ``which``: h is not carried

    def fix_unit(self, carry: tuple[jax.Array, ...], unit: int, value: float, which: str
                 ) -> tuple[jax.Array, ...]:
        """The carry with unit ``unit`` of c set (``which`` "cell"; h is not carried)."""
        if which not in self.holdable_states:
            raise ValueError(f"a QRNN carries only its cell state c; which must be 'cell', got {which!r}")
        return (carry[0].at[:, unit].set(value), *carry[1:])
