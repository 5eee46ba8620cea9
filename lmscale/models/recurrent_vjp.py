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

Layout: feature-major inside the loops. Every per-step array is [features, B] and the
matmuls are W^T [4H, H] @ h^T [H, B] (forward) and W [H, 4H] @ dz^T [4H, B] (backward):
the big matrix is the left operand, which XLA:CPU's GEMM streams, while the right operand,
which it repacks on every call, is the small [H, B] state (with h @ W the whole weight
matrix would be repacked every step). Inputs and outputs are time-major [T, B, ...]; the
[T, B, F] <-> [T, F, B] transposes happen once per call, outside the loops.

Few operations per step (on CPU each costs dispatch time, and at small sizes that time rivals
the matmuls): the reset of step t+1 is applied at the end of step t, in the same fusion
that computes (h, c) (and, in the backward, in the fusion that starts the next step), so a
reset costs no extra pass; the forward saves only z (float32), c and u, and the backward
recomputes the gate activations and tanh(c) inside its gate fusion.
Without differentiation the primal runs a scan that saves nothing. Matmuls take
compute-dtype operands with float32 accumulation; the carry and gate math are float32
(float64 when computing in float64).
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


def _fm(x: jax.Array) -> jax.Array:
    """[T, B, F] <-> [T, F, B]."""
    return jnp.swapaxes(x, 1, 2)


def _activations(z: jax.Array) -> tuple[jax.Array, ...]:
    """(i, f, g, o) = sigmoid, sigmoid, tanh, sigmoid of the four row blocks of z [4H, B]."""
    i, f, g, o = jnp.split(z, 4, axis=0)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _next_keep(keep: jax.Array | None) -> jax.Array | None:
    """keep shifted one step earlier ([keep_1, ..., keep_{T-1}, 1]): applied at the end of a step."""
    if keep is None:
        return None
    return jnp.concatenate([keep[1:], jnp.ones_like(keep[:1])], axis=0)


def _forward(st: Static, pre: tuple[jax.Array, ...], w_mh: jax.Array | None, w_h: jax.Array,
             h0: jax.Array, c0: jax.Array, keep: jax.Array | None, save: bool
             ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """The forward scan, feature-major: pre [T, F, B], h0/c0 [H, B], keep [T, 1, B] or None.

    Returns ((h, c) [H, B], (hs, cs[, zs, us]) [T, F, B]); ``save`` adds the residuals.
    """
    dt, sdt = st.dtype, st.state_dtype
    wh_t = w_h.T  # [4H, H], once per call
    wmh_t = None if w_mh is None else w_mh.T

    def step(carry: tuple[jax.Array, jax.Array], inp: Any) -> tuple[Any, Any]:
        h, c = carry  # already reset for this step
        pre_t, keep_next = inp
        u = None
        if st.kind == "mlstm":
            zx, mx = pre_t
            u = jnp.dot(wmh_t, h.astype(dt))
            z = zx.astype(sdt) + jnp.dot(wh_t, mx * u, preferred_element_type=sdt)
        else:
            (zx,) = pre_t
            z = zx.astype(sdt) + jnp.dot(wh_t, h.astype(dt), preferred_element_type=sdt)
        i, f, g, o = _activations(z)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        out = (h.astype(dt), c if (st.return_cells or save) else None)
        if save:
            out += (z, u)
        if keep_next is not None:
            return (h * keep_next, c * keep_next), out
        return (h, c), out

    if keep is not None:
        h0, c0 = h0 * keep[0], c0 * keep[0]
    # The last step's keep_next is 1, so the carry out is (h_T, c_T), not reset.
    return jax.lax.scan(step, (h0, c0), (pre, _next_keep(keep)), unroll=st.unroll)


def _to_fm(st: Static, pre: tuple[jax.Array, ...], h0: jax.Array, c0: jax.Array,
           keep: jax.Array | None) -> tuple[Any, ...]:
    keep_fm = None if keep is None else jnp.swapaxes(keep, 1, 2)  # [T, 1, B]
    return tuple(_fm(p) for p in pre), h0.T, c0.T, keep_fm


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
    pre_fm, h0_fm, c0_fm, keep_fm = _to_fm(st, pre, h0, c0, keep)
    (h, c), (hs, cs) = _forward(st, pre_fm, *_cast(st, w_mh, w_h), h0_fm, c0_fm, keep_fm,
                                save=False)
    return _fm(hs), (h.T, c.T), (None if cs is None else _fm(cs))


def _fwd(st: Static, pre: tuple[jax.Array, ...], w_mh: jax.Array | None, w_h: jax.Array,
         h0: jax.Array, c0: jax.Array, keep: jax.Array | None) -> tuple[Any, Any]:
    wmh, wh = _cast(st, w_mh, w_h)
    pre_fm, h0_fm, c0_fm, keep_fm = _to_fm(st, pre, h0, c0, keep)
    (h, c), (hs, cs, zs, us) = _forward(st, pre_fm, wmh, wh, h0_fm, c0_fm, keep_fm, save=True)
    zeros_w = (None if w_mh is None else jnp.zeros((0,), w_mh.dtype), jnp.zeros((0,), w_h.dtype))
    zeros_pre = tuple(jnp.zeros((0,), p.dtype) for p in pre)
    res = (pre_fm, wmh, wh, h0_fm, c0_fm, keep_fm, hs, cs, zs, us, zeros_w, zeros_pre)
    return (_fm(hs), (h.T, c.T), _fm(cs) if st.return_cells else None), res


def _shift(first: jax.Array, stack: jax.Array, keep: jax.Array | None) -> jax.Array:
    """[first, stack[0], ..., stack[T-2]] times keep: the (reset) state entering each step."""
    prev = jnp.concatenate([first[None].astype(stack.dtype), stack[:-1]], axis=0)
    return prev if keep is None else prev * keep.astype(stack.dtype)


def _outer_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum over t, b of a[t, :, b] b[t, :, b]^T as one matmul: [T, I, B], [T, J, B] -> [I, J] f32."""
    return jax.lax.dot_general(a, b, (((0, 2), (0, 2)), ((), ())),
                               preferred_element_type=jnp.float32)


def _bwd(st: Static, res: Any, cts: Any) -> tuple[Any, ...]:
    pre, wmh, wh, h0, c0, keep, hs, cs, zs, us, (w_mh_like, w_h_like), pre_like = res
    dhs, (dh_t, dc_t), dcs = cts
    dt, sdt = st.dtype, st.state_dtype
    mlstm = st.kind == "mlstm"
    c_prev = _shift(c0, cs, keep)
    xm = pre[1] if mlstm else None

    def step(carry: tuple[jax.Array, jax.Array], inp: Any) -> tuple[Any, Any]:
        # dh: cotangent of the next step's h input before its reset (applied here, keep_next).
        dh, dc = carry
        dhs_t, dcs_t, z_t, c_t, cp_t, xm_t, keep_next = inp
        if keep_next is not None:
            dh, dc = dh * keep_next, dc * keep_next
        dh = dh + dhs_t.astype(sdt)
        if dcs_t is not None:
            dc = dc + dcs_t
        i, f, g, o = _activations(z_t)
        tc = jnp.tanh(c_t)
        dc = dc + dh * o * (1 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp_t * f * (1 - f),
                              dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=0)
        dzb = dz.astype(dt)
        dc = dc * f  # this step's reset is applied by the next iteration (its keep_next)
        if mlstm:
            dm = jnp.dot(wh, dzb, preferred_element_type=sdt)  # [H, 4H] @ [4H, B]
            dh = jnp.dot(wmh, (dm * xm_t).astype(dt), preferred_element_type=sdt)
            return (dh, dc), (dzb, dm)
        return (jnp.dot(wh, dzb, preferred_element_type=sdt), dc), (dzb, None)

    dhs_fm = _fm(dhs)
    dcs_in = _fm(dcs) if st.return_cells else None
    (dh0, dc0), (dz, dm) = jax.lax.scan(
        step, (dh_t.T.astype(sdt), dc_t.T.astype(sdt)),
        (dhs_fm, dcs_in, zs, cs, c_prev, xm, _next_keep(keep)), reverse=True, unroll=st.unroll)
    if keep is not None:
        dh0, dc0 = dh0 * keep[0], dc0 * keep[0]
    h_prev = _shift(h0.astype(dt), hs, keep)
    d_pre_x = _fm(dz).astype(pre_like[0].dtype)
    if mlstm:
        d_wh = _outer_sum(xm * us, dz)
        d_wmh = _outer_sum(h_prev, (dm * xm).astype(dt)).astype(w_mh_like.dtype)
        d_pre = (d_pre_x, _fm(dm * us).astype(pre_like[1].dtype))
    else:
        d_wh = _outer_sum(h_prev, dz)
        d_pre, d_wmh = (d_pre_x,), None
    d_keep = None if keep is None else jnp.zeros_like(jnp.swapaxes(keep, 1, 2))
    return (d_pre, d_wmh, d_wh.astype(w_h_like.dtype), dh0.T.astype(h0.dtype),
            dc0.T.astype(c0.dtype), d_keep)


recurrence.defvjp(_fwd, _bwd)
