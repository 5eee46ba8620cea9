"""The mLSTM / LSTM recurrence with a hand-written backward pass (``jax.custom_vjp``).

Autodiff through ``lax.scan`` makes the cotangents of the loop constants W_mh and W_h carries
of the reverse scan: every step reads and writes a full [H, 4H] accumulator with a rank-B
update, and in bfloat16/float16 compute sums T contributions in the compute dtype. Here the
reverse scan carries only (dh, dc) in float32 and emits the per-step gate gradients dz_t
(and, for the mLSTM, dm_t); the recurrent weight gradients are formed after the loop as one
matmul each over all T x B rows, accumulated in float32 (cuDNN's backward-data /
backward-weights split; Appleyard et al. 2016):

  mLSTM: dW_h = M^T dZ,  dW_mh = H_prev^T dU   with M = pre_m * U, dU = dM * pre_m
  LSTM:  dW_h = H_prev^T dZ

Forward (per step t, keep_t = 1 - reset_t):  h, c <- keep_t * (h, c);
  mLSTM: u = h W_mh, m = pre_m_t * u, z = pre_x_t + m W_h;  LSTM: z = pre_x_t + h W_h;
  i, f, g, o = sigmoid/sigmoid/tanh/sigmoid(split(z)); c' = f c + i g; h' = o tanh(c').
Residuals saved by the forward: the gate activations (float32), c and tanh(c) (float32), u
and hs (compute dtype). Without differentiation the primal runs a scan that saves nothing.
Matmuls take compute-dtype operands with float32 accumulation; the carry and gate math are
float32 (float64 when computing in float64).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Static:
    """Static options of one recurrence call (hashable: a custom_vjp nondiff argument)."""
    kind: str  # "mlstm" or "lstm"
    dtype: Any  # compute dtype of the matmuls
    return_cells: bool
    unroll: int = 1

    @property
    def state_dtype(self) -> Any:
        return jnp.promote_types(self.dtype, jnp.float32)


def _gates(z: jax.Array) -> jax.Array:
    """Activations [i, f, g, o] of pre-activations z [B, 4H]: sigmoid, sigmoid, tanh, sigmoid."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jnp.concatenate([jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g),
                            jax.nn.sigmoid(o)], axis=-1)


def _forward(st: Static, pre: tuple[jax.Array, ...], w_mh: jax.Array | None, w_h: jax.Array,
             h0: jax.Array, c0: jax.Array, keep: jax.Array | None, save: bool
             ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """The forward scan. ``save``: also stack the residuals (act, tanh(c), u) for the backward."""
    dt, sdt = st.dtype, st.state_dtype

    def step(carry: tuple[jax.Array, jax.Array], inp: Any) -> tuple[Any, Any]:
        h, c = carry
        pre_t, keep_t = inp
        if keep_t is not None:
            h, c = h * keep_t, c * keep_t
        hb = h.astype(dt)
        u = None
        if st.kind == "mlstm":
            zx, mx = pre_t
            u = jnp.dot(hb, w_mh)
            z = zx.astype(sdt) + jnp.dot(mx * u, w_h, preferred_element_type=sdt)
        else:
            (zx,) = pre_t
            z = zx.astype(sdt) + jnp.dot(hb, w_h, preferred_element_type=sdt)
        act = _gates(z)
        i, f, g, o = jnp.split(act, 4, axis=-1)
        c = f * c + i * g
        tc = jnp.tanh(c)
        h = o * tc
        out = (h.astype(dt), c if (st.return_cells or save) else None)
        if save:
            out += (act, tc, u)
        return (h, c), out

    return jax.lax.scan(step, (h0, c0), (pre, keep), unroll=st.unroll)


def _cast(st: Static, w_mh: jax.Array | None, w_h: jax.Array) -> tuple[Any, jax.Array]:
    return (None if w_mh is None else w_mh.astype(st.dtype)), w_h.astype(st.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(st: Static, pre: tuple[jax.Array, ...], w_mh: jax.Array | None, w_h: jax.Array,
               h0: jax.Array, c0: jax.Array, keep: jax.Array | None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array | None]:
    """Runs the recurrence; returns (hs [T, B, H] in dtype, (h, c) final, cs [T, B, H] | None).

    pre: (pre_x [T, B, 4H], pre_m [T, B, H]) for the mLSTM, (pre_x,) for the LSTM, in the
    compute dtype; w_mh [H, H] (None for the LSTM) and w_h [H, 4H] in any float dtype (cast
    to the compute dtype inside; their gradients come back in their own dtype, accumulated in
    float32); h0, c0 [B, H] in the state dtype; keep: [T, B, 1] state dtype (0 where the
    state is reset before the step) or None.
    """
    (h, c), (hs, cs) = _forward(st, pre, *_cast(st, w_mh, w_h), h0, c0, keep, save=False)
    return hs, (h, c), cs


def _fwd(st: Static, pre: tuple[jax.Array, ...], w_mh: jax.Array | None, w_h: jax.Array,
         h0: jax.Array, c0: jax.Array, keep: jax.Array | None) -> tuple[Any, Any]:
    wmh, wh = _cast(st, w_mh, w_h)
    (h, c), (hs, cs, act, tc, us) = _forward(st, pre, wmh, wh, h0, c0, keep, save=True)
    zeros_w = (None if w_mh is None else jnp.zeros((0,), w_mh.dtype), jnp.zeros((0,), w_h.dtype))
    res = (pre, wmh, wh, h0, c0, keep, hs, cs, act, tc, us, zeros_w)
    return (hs, (h, c), cs if st.return_cells else None), res


def _shift(first: jax.Array, stack: jax.Array, keep: jax.Array | None) -> jax.Array:
    """[first, stack[0], ..., stack[T-2]] times keep: the (reset) state entering each step."""
    prev = jnp.concatenate([first[None].astype(stack.dtype), stack[:-1]], axis=0)
    return prev if keep is None else prev * keep.astype(stack.dtype)


def _outer_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_t a_t^T b_t over all T x B rows as one matmul: [T, B, I], [T, B, J] -> [I, J] float32."""
    return jax.lax.dot_general(a, b, (((0, 1), (0, 1)), ((), ())),
                               preferred_element_type=jnp.float32)


def _bwd(st: Static, res: Any, cts: Any) -> tuple[Any, ...]:
    pre, wmh, wh, h0, c0, keep, hs, cs, act, tc, us, (w_mh_like, w_h_like) = res
    dhs, (dh_t, dc_t), dcs = cts
    dt, sdt = st.dtype, st.state_dtype
    mlstm = st.kind == "mlstm"
    c_prev = _shift(c0, cs, keep)
    xm = pre[1] if mlstm else None

    def step(carry: tuple[jax.Array, jax.Array], inp: Any) -> tuple[Any, Any]:
        dh, dc = carry
        dhs_t, dcs_t, act_t, tc_t, cp_t, xm_t, keep_t = inp
        dh = dh + dhs_t.astype(sdt)
        if dcs_t is not None:
            dc = dc + dcs_t
        i, f, g, o = jnp.split(act_t, 4, axis=-1)
        dc = dc + dh * o * (1 - tc_t * tc_t)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp_t * f * (1 - f),
                              dc * i * (1 - g * g), dh * tc_t * o * (1 - o)], axis=-1)
        dzb = dz.astype(dt)
        dc = dc * f
        if mlstm:
            dm = jnp.dot(dzb, wh.T, preferred_element_type=sdt)
            du = (dm * xm_t).astype(dt)
            dh = jnp.dot(du, wmh.T, preferred_element_type=sdt)
            out = (dzb, dm)
        else:
            dh = jnp.dot(dzb, wh.T, preferred_element_type=sdt)
            out = (dzb, None)
        if keep_t is not None:
            dh, dc = dh * keep_t, dc * keep_t
        return (dh, dc), out

    dcs_in = dcs if st.return_cells else None
    (dh0, dc0), (dz, dm) = jax.lax.scan(
        step, (dh_t.astype(sdt), dc_t.astype(sdt)),
        (dhs, dcs_in, act, tc, c_prev, xm, keep), reverse=True, unroll=st.unroll)
    h_prev = _shift(h0.astype(dt), hs, keep)
    d_pre_x = dz.astype(pre[0].dtype)
    if mlstm:
        u = us
        d_wh = _outer_sum(xm * u, dz)
        d_wmh = _outer_sum(h_prev, (dm * xm).astype(dt))
        d_pre = (d_pre_x, (dm * u).astype(xm.dtype))
        d_wmh = d_wmh.astype(w_mh_like.dtype)
    else:
        d_wh = _outer_sum(h_prev, dz)
        d_pre, d_wmh = (d_pre_x,), None
    d_keep = None if keep is None else jnp.zeros_like(keep)
    return (d_pre, d_wmh, d_wh.astype(w_h_like.dtype), dh0.astype(h0.dtype),
            dc0.astype(c0.dtype), d_keep)


recurrence.defvjp(_fwd, _bwd)
