"""Remat of the recurrence (``Static.segment`` > 0; config ``model.remat="segments"``).

The forward runs the sequence in equal segments of ``segment_length`` steps and keeps only the
state entering each ([T / k, B, H] twice) instead of the residuals of every step (the
mLSTM's [T, 4H, B] d and six [T, H, B] sequences). The backward takes the segments last to
first: it recomputes one segment's forward from its saved state, with the residuals of k steps,
runs ``recurrent_loops.backward`` through it with the (dh, dc) the later segment handed on, and
adds its weight gradients (float32). Memory: k steps of residuals instead of T; compute: one
more forward of the recurrence (about a third more recurrent FLOPs). The values are those of
one loop: each segment starts from the state the previous one ended with, and applies its
resets as the loop would.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models import recurrent_loops as loops
from lmscale.models.inplace import decode, encode, storage
from lmscale.models.recurrent_loops import Static


def largest_divisor(n: int, k: int) -> int:
    """The largest divisor of n not above k (k >= 1)."""
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def segment_length(segment: int, n_t: int) -> int:
    """Steps per remat segment for T = n_t: the largest divisor of T not above ``segment``
    (``Static.segment``, ``remat_steps``; T, one segment, when it is 0: remat off). The
    segments are equal, so one compiled loop body runs them all; a T with no divisor near
    the segment length gets shorter segments."""
    if segment <= 0 or segment >= n_t:
        return n_t
    return largest_divisor(n_t, segment)


def forward(st: Static, x: jax.Array, fw: dict[str, jax.Array], h0: jax.Array, c0: jax.Array,
            keep: jax.Array | None) -> tuple[Any, ...]:
    """``recurrent_loops.forward(..., save=True)``'s results (same arguments), but what is saved
    for the backward is the state entering each segment ({"starts_h", "starts_c"} [T / k, B,
    H]), the loop's weights "fw" and "keep"."""
    dt, sdt = st.dtype, st.state_dtype
    n_t, n_b = x.shape[:2]
    k = segment_length(st.segment, n_t)
    hidden = fw["wh_t"].shape[1]
    zeros = lambda shape, dtype: loops.varying_like(jnp.zeros(shape, storage(dtype)), x, h0, c0)
    outs = {"hs": (zeros((n_t, hidden, n_b), dt), dt)}
    if st.return_cells:
        outs["cs"] = (zeros((n_t, hidden, n_b), sdt), sdt)
    starts = {"starts_h": zeros((n_t // k, n_b, hidden), sdt),
              "starts_c": zeros((n_t // k, n_b, hidden), sdt)}

    def segment(j: jax.Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        h, c, bufs, starts = carry
        starts = {"starts_h": starts["starts_h"].at[j].set(h),
                  "starts_c": starts["starts_c"].at[j].set(c)}
        (h, c), hs_j, cs_j, _ = loops.forward(st, _piece(x, j, k), fw, h, c, _piece(keep, j, k),
                                              save=False)
        bufs = dict(bufs)
        for name, value in (("hs", hs_j), ("cs", cs_j)):
            if name in bufs:
                bufs[name] = jax.lax.dynamic_update_slice_in_dim(
                    bufs[name], encode(value, outs[name][1]), j * k, axis=0)
        return h, c, bufs, starts

    bufs = {name: buf for name, (buf, _) in outs.items()}
    h, c, bufs, starts = jax.lax.fori_loop(0, n_t // k, segment, (h0, c0, bufs, starts),
                                           unroll=_segments_unroll(st, n_t))
    saved = {**starts, "fw": fw, "keep": keep}
    return (h, c), decode(bufs["hs"], dt), bufs.get("cs"), saved


def _segments_unroll(st: Static, n_t: int) -> bool:
    """The segments' loops are unrolled only with the time loops completely (``st.unroll``
    >= T: no loop left, as XLA's FLOP count of a step needs)."""
    return st.unroll >= n_t


def _piece(seq: jax.Array | None, j: jax.Array, k: int) -> jax.Array | None:
    """Steps [j k, (j + 1) k) of a time-major sequence [T, ...] (None: None)."""
    return None if seq is None else jax.lax.dynamic_slice_in_dim(seq, j * k, k, axis=0)


def backward(st: Static, x: jax.Array, w: dict[str, Any], s: dict[str, Any], dhs_l: jax.Array,
             dcs_l: jax.Array | None, dh: jax.Array, dc: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, jax.Array]:
    """``recurrent_loops.backward`` (same arguments and results) from what ``forward`` saved:
    the segments last to first (module doc)."""
    n_t, n_b = x.shape[:2]
    n_seg = s["starts_h"].shape[0]
    k = n_t // n_seg
    names = [n for n in ("w_x", "b", "w_mx", "w_mh", "w_h") if w[n] is not None]
    zeros = lambda shape: loops.varying_like(jnp.zeros(shape, jnp.float32), x, dh, dc, dhs_l)
    grads = {n: zeros(w[n].shape) for n in names}
    d_x = zeros((x.shape[2], n_t, n_b)).astype(st.state_dtype)

    def segment(i: jax.Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        dh, dc, d_x, grads = carry
        j = n_seg - 1 - i
        x_j = _piece(x, j, k)
        # The barrier on the segment's starting state keeps XLA from merging this forward with
        # the first one where both are unrolled (XLA 0.12 did, in the FLOP test's unrolled step).
        h_j, c_j = jax.lax.optimization_barrier((s["starts_h"][j], s["starts_c"][j]))
        _, _, _, saved = loops.forward(st, x_j, s["fw"], h_j, c_j, _piece(s["keep"], j, k),
                                       save=True)
        dx_j, g_j, dh, dc = loops.backward(st, x_j, w, saved, _piece(dhs_l, j, k),
                                           _piece(dcs_l, j, k), dh, dc)
        d_x = jax.lax.dynamic_update_slice_in_dim(d_x, dx_j.reshape(-1, k, n_b), j * k, axis=1)
        return dh, dc, d_x, {n: grads[n] + g_j[n] for n in names}

    dh0, dc0, d_x, grads = jax.lax.fori_loop(0, n_seg, segment, (dh, dc, d_x, grads),
                                             unroll=_segments_unroll(st, n_t))
    return d_x.reshape(d_x.shape[0], -1), grads, dh0, dc0
