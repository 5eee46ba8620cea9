"""The mLSTM / LSTM layer (input projections and recurrence) with a hand-written backward.

Autodiff through ``lax.scan`` makes the cotangents of the loop constants W_mh and W_h carries
of the reverse scan: every step reads and writes a full [H, 4H] accumulator with a rank-B
update, and in bfloat16/float16 compute sums T contributions in the compute dtype. Here the
reverse loop carries only (dh, dc) in float32 and stores the per-step gate gradients dz_t
(and, for the mLSTM, dm_t * xm_t and dm_t * u_t); every weight gradient is formed after the
loop as one matmul over all T x B rows, accumulated in float32 (cuDNN's backward-data /
backward-weights split; Appleyard et al. 2016):

  dW_h = M^T dZ (mLSTM) or H_in^T dZ (LSTM);  dW_mh = H_in^T (dM * XM);
  [dW_x; db] = [X, 1]^T dZ;  dW_mx = X^T (dM * U);  dX = dZ W_x^T + (dM * U) W_mx^T
(db as the ones column's row of the dW_x matmul, not a separate pass over dZ: 1-3 % faster).

The loops themselves, and how they are laid out for XLA:CPU, are ``recurrent_loops``; with
remat (``Static.segment`` > 0) ``recurrent_segments`` runs them segment by segment. With
``Static.layout == "batch"`` (GPUs) and no remat, ``recurrent_batch_major``'s loops run instead.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models import recurrent_batch_major, recurrent_segments
from lmscale.models.recurrent_loops import (Static, backward, batch_major, cast, forward,
                                            forward_weights, forward_with, layout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(st: Static, x: jax.Array, w_x: jax.Array, b: jax.Array, w_mx: jax.Array | None,
               w_mh: jax.Array | None, w_h: jax.Array, h0: jax.Array, c0: jax.Array,
               keep: jax.Array | None, s_mh: jax.Array | None, s_h: jax.Array | None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array | None]:
    """Runs the layer; returns (hs [T, B, H] in dtype, (h, c) final, cs [T, B, H] | None).

    x [T, B, in] in the compute dtype; w_x [in, 4H], b [4H], w_mx [in, H] and w_mh [H, H]
    (None for the LSTM), w_h [H, 4H], in any float dtype (cast to the compute dtype inside;
    their gradients come back in their own dtype, accumulated in float32); h0, c0 [B, H] in
    the state dtype; keep: [T, B, 1] state dtype (0 where the state is reset before the step)
    or None; s_mh [H] and s_h [4H]: per-output-unit scales of w_mh and w_h (the matrices used
    are w_mh * s_mh and w_h * s_h: weight norm's g / ||v|| with w = v), or None.
    """
    if _batch_major(st, x.shape[0]):
        w = cast(st, w_x, b, w_mx, w_mh, w_h, s_mh, s_h)
        (h, c), hs, cs, _ = recurrent_batch_major.forward(
            st, x, recurrent_batch_major.weights(st, w, {"w_h": w_h, "w_mh": w_mh}), h0, c0,
            keep, save=False)
        return hs, (h, c), cs
    return forward_with(st, x, forward_weights(st, w_x, b, w_mx, w_mh, w_h, s_mh, s_h), h0, c0,
                        keep)


def _batch_major(st: Static, n_t: int) -> bool:
    """Whether ``recurrent_batch_major``'s loops run: the batch layout without remat
    (the remat segments run ``recurrent_loops``'s)."""
    return (st.layout == "batch"
            and recurrent_segments.segment_length(st.segment, n_t) == n_t)


def _fwd(st: Static, x: jax.Array, w_x: jax.Array, b: jax.Array, w_mx: jax.Array | None,
         w_mh: jax.Array | None, w_h: jax.Array, h0: jax.Array, c0: jax.Array,
         keep: jax.Array | None, s_mh: jax.Array | None, s_h: jax.Array | None
         ) -> tuple[Any, Any]:
    w = cast(st, w_x, b, w_mx, w_mh, w_h, s_mh, s_h)
    batch = _batch_major(st, x.shape[0])
    if batch:
        (h, c), hs, cs, saved = recurrent_batch_major.forward(
            st, x, recurrent_batch_major.weights(st, w, {"w_h": w_h, "w_mh": w_mh}), h0, c0,
            keep, save=True)
    elif recurrent_segments.segment_length(st.segment, x.shape[0]) < x.shape[0]:
        (h, c), hs, cs, saved = recurrent_segments.forward(st, x, layout(st, w), h0, c0, keep)
    else:
        (h, c), hs, cs, saved = forward(st, x, layout(st, w), h0, c0, keep, save=True)
    # Zero-size stand-ins carry the primal dtypes to the backward.
    like = {k: (None if v is None else jnp.zeros((0,), v.dtype)) for k, v in
            {"x": x, "w_x": w_x, "b": b, "w_mx": w_mx, "w_mh": w_mh, "w_h": w_h, "h0": h0,
             "c0": c0, "s_mh": s_mh, "s_h": s_h}.items()}
    # The directions as given (float32 masters), for the scales' gradients.
    unscaled = {"w_mh": w_mh if s_mh is not None else None, "w_h": w_h if s_h is not None else None}
    if not batch:
        hs, cs = batch_major(hs), (None if cs is None else batch_major(cs))
    return (hs, (h, c), cs), (x, w, saved, keep, like, unscaled)


def _bwd(st: Static, res: Any, cts: Any) -> tuple[Any, ...]:
    x, w, s, keep, like, unscaled = res
    dhs, (dh_t, dc_t), dcs = cts
    sdt = st.state_dtype
    n_t = x.shape[0]
    if _batch_major(st, n_t):
        d_x, grads, dh0, dc0 = recurrent_batch_major.backward(
            st, x, recurrent_batch_major.weights(st, w, unscaled), s, dhs,
            dcs if st.return_cells else None, dh_t.astype(sdt), dc_t.astype(sdt))
    else:
        d_x, grads, dh0, dc0 = _feature_major_backward(st, x, w, s, dhs, dcs, dh_t, dc_t)
    for name, scale_name in (("w_mh", "s_mh"), ("w_h", "s_h")):
        if w[scale_name] is not None:  # W = V * s: dV = dW * s, ds = sum over rows of V * dW
            grads[scale_name] = jnp.sum(unscaled[name].astype(sdt) * grads[name], axis=0)
            grads[name] = grads[name] * w[scale_name]
    names = ("w_x", "b", "w_mx", "w_mh", "w_h", "s_mh", "s_h")
    grads = {k: (None if like[k] is None else grads[k].astype(like[k].dtype)) for k in names}
    d_keep = None if keep is None else jnp.zeros_like(keep)
    return (d_x.astype(like["x"].dtype), grads["w_x"], grads["b"], grads["w_mx"], grads["w_mh"],
            grads["w_h"], dh0.astype(like["h0"].dtype), dc0.astype(like["c0"].dtype), d_keep,
            grads["s_mh"], grads["s_h"])


def _feature_major_backward(st: Static, x: jax.Array, w: dict[str, Any], s: dict[str, Any],
                            dhs: jax.Array, dcs: jax.Array | None, dh_t: jax.Array,
                            dc_t: jax.Array) -> tuple[Any, ...]:
    """``recurrent_loops.backward`` (or ``recurrent_segments``') from the layer's cotangents
    (batch-major, as the layer returns its results); (dx [T, B, in], grads, dh0, dc0 [B, H])."""
    sdt = st.state_dtype
    n_t, n_b = x.shape[:2]
    dhs_l = jnp.swapaxes(dhs, 1, 2)  # [T, H, B]
    dcs_l = jnp.swapaxes(dcs, 1, 2) if st.return_cells else None
    dh, dc = dh_t.T.astype(sdt), dc_t.T.astype(sdt)
    if "starts_h" in s:  # saved by recurrent_segments.forward
        d_x, grads, dh0, dc0 = recurrent_segments.backward(st, x, w, s, dhs_l, dcs_l, dh, dc)
    else:
        d_x, grads, dh0, dc0 = backward(st, x, w, s, dhs_l, dcs_l, dh, dc)
    return jnp.transpose(d_x.reshape(-1, n_t, n_b), (1, 2, 0)), grads, dh0.T, dc0.T


recurrence.defvjp(_fwd, _bwd)
