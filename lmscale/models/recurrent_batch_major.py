"""The mLSTM / LSTM loops laid out for XLA:GPU: batch-major steps, few kernels per step.

``recurrent_loops`` lays the loops out for XLA:CPU (feature-major [F, B] steps, many small
in-place writes, x_t's projections inside the step). On an H200 that layout ran each small
write, slice and add as a kernel of its own: about 17 kernels per loop iteration, 34 ms of a
100 ms step of the 4096-unit mLSTM at 256 x 256 besides the GEMMs (benchmarks/README.md, "GPU:
first measurement"). Here (``Static.layout == "batch"``; the default on GPUs, see
``recurrent.ScanOptions``) one step is, per time step t, with [B, F] arrays:

  forward:  u = h W_mh;  a = [xm_t * u, x_t]  (LSTM: a = [h, x_t]);  z = a [W_h; W_x] + b;
            gates, c, h; saved: a, u, d = [d_i, d_f, d_g, d_o] ([B, 4H], ``Static.factors``:
            the compute dtype by default, see ``recurrent.ScanOptions``) and [f, p] (float32);
  backward: dh += dhs_t; dc += dh p; dz = d * (dc, dc, dc, dh); dc <- dc f;
            dm = dz W_h^T; du = dm * xm_t, dxm = dm * u; dh = du W_mh^T;

- x_t W_x is part of the step's one large GEMM (K = H + in), not a second GEMM and an add
  of two [B, 4H] float32 arrays; xm = x W_mx is one GEMM over all T x B rows before the loop.
- What a step saves leaves it as the loop's per-step outputs, one array per kind of value,
  not eleven in-place writes, into buffers not zero-filled first (``_scan``).
- The state entering step t (for dW_mh) is not saved: it is hs shifted by one step, reset.
- The weight norm's scales are applied to the matrices once per call (a pass over W_h, 0.1 ms
  on a GPU), from the float32 directions (rounded to the compute dtype once), not folded into
  the products as ``recurrent_loops`` does for XLA:CPU: in bf16/fp16 the two layouts round
  differently, equally far from float32.
- After the backward loop, as there: [dW_h; dW_x] = A^T dZ, dW_mh = H_in^T dU, dW_mx = X^T dXM,
  db = the sum of dZ, dx = dZ W_x^T + dXM W_mx^T: matmuls over all T x B rows, float32.

Measured on the H200 (bf16, that shape): 98.8 ms a step with ``recurrent_loops``, 84.6 ms
with these loops, 82.7 ms unrolled by 2 (their default there), 80.4 ms with the buffers not
zero-filled and the gate factors in the compute dtype; about 10 kernels per loop iteration.
On XLA:CPU they are slower than ``recurrent_loops`` (the quickstart: 80.5 vs 72.6 ms), so
"auto" keeps those there. Same arguments and results as
``recurrent_loops.forward`` / ``backward`` where they are called (``recurrent_vjp``; in float32
to rounding, in bf16/fp16 to their rounding), except that sequences are time-major [T, B, F]
throughout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models.recurrent_loops import Static, scaled, varying_like


def _scan(step: Any, carry: Any, xs: Any, length: int, reverse: bool, unroll: int
          ) -> tuple[Any, Any]:
    """``lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)``, its per-step outputs
    written into uninitialized buffers (``lax.empty``: XLA:GPU's AllocateBuffer). lax.scan
    zero-fills them first: on the H200 a memset of every saved sequence before each loop, 2.3
    to 3.2 ms of an 83 ms step (benchmarks/README.md, "GPU: fewer bytes"). Every step writes
    its row, so no value of the uninitialized memory is read. On a CPU the buffers are zeros."""
    first = jax.tree.map(lambda a: a[0], xs)
    shapes = jax.eval_shape(lambda c, x: step(c, x)[1], carry, first)
    refs = jax.tree.leaves((carry, xs))
    bufs = jax.tree.map(lambda s: varying_like(jax.lax.empty((length, *s.shape), s.dtype), *refs),
                        shapes)

    def body(i: jax.Array, state: tuple[Any, Any]) -> tuple[Any, Any]:
        carry, bufs = state
        t = length - 1 - i if reverse else i
        x_t = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, t, 0, keepdims=False), xs)
        carry, out = step(carry, x_t)
        bufs = jax.tree.map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, t, 0),
                            bufs, out)
        return carry, bufs

    return jax.lax.fori_loop(0, length, body, (carry, bufs), unroll=unroll)


def weights(st: Static, w: dict[str, Any], masters: dict[str, Any]) -> dict[str, jax.Array]:
    """The loops' weights from the compute-dtype ones ``w`` (``recurrent_loops.cast``):
    {"w_cat": [W_h; W_x] [H + in, 4H] with W_h = V_h * s_h when scaled, "w_mh": W_mh [H, H]
    (mLSTM; scaled likewise), "w_mx": [in, H] (mLSTM), "bias": [4H] state dtype}. A scaled
    matrix is formed from its direction as given (``masters``: "w_h", "w_mh", float32) and
    rounded to the compute dtype once, as the feature-major loops' products round it."""
    def matrix(name: str, scale: str) -> jax.Array:
        if w[scale] is None:
            return w[name]
        return scaled(masters[name].astype(st.state_dtype), w[scale]).astype(st.dtype)

    out = {"w_cat": jnp.concatenate([matrix("w_h", "s_h"), w["w_x"]], axis=0),
           "bias": w["b"].astype(st.state_dtype)}
    if st.mlstm:
        out["w_mx"] = w["w_mx"]
        out["w_mh"] = matrix("w_mh", "s_mh")
    return out


def forward(st: Static, x: jax.Array, fw: dict[str, jax.Array], h0: jax.Array, c0: jax.Array,
            keep: jax.Array | None, save: bool) -> tuple[Any, ...]:
    """The forward loop. x [T, B, in] (compute dtype); fw from ``weights``; h0, c0 [B, H]
    state dtype; keep [T, B, 1] state dtype or None. Returns ((h, c) [B, H], hs [T, B, H]
    dtype, cs [T, B, H] | None, saved | None)."""
    dt, sdt = st.dtype, st.state_dtype
    w_cat, bias = fw["w_cat"], fw["bias"]
    xm = (jnp.einsum("tbi,ih->tbh", x, fw["w_mx"], preferred_element_type=sdt).astype(dt)
          if st.mlstm else None)

    def step(carry: tuple[jax.Array, jax.Array], inputs: tuple[Any, ...]
             ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        h, c = carry
        x_t, xm_t, keep_t = inputs
        if keep_t is not None:  # a select: NaN x 0 is NaN (an overflowed text passed it on)
            h, c = jnp.where(keep_t > 0, h, 0), jnp.where(keep_t > 0, c, 0)
        out = {}
        if st.mlstm:
            u = jnp.dot(h.astype(dt), fw["w_mh"], preferred_element_type=sdt).astype(dt)
            a = jnp.concatenate([xm_t * u, x_t], axis=1)
            if save:
                out["u"] = u
        else:
            a = jnp.concatenate([h.astype(dt), x_t], axis=1)
        z = jnp.dot(a, w_cat, preferred_element_type=sdt) + bias
        zi, zf, zg, zo = jnp.split(z, 4, axis=1)
        i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        out["hs"] = h_new.astype(dt)
        if st.return_cells:
            out["cs"] = c_new
        if save:
            out["a"] = a
            # dz = d * (dc, dc, dc, dh), dc += dh * p and dc <- dc * f in the backward.
            out["d"] = jnp.concatenate([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g),
                                        tc * o * (1 - o)], axis=1).astype(st.factors)
            out["fp"] = jnp.concatenate([f, o * (1 - tc * tc)], axis=1)
        return (h_new, c_new), out

    (h, c), ys = _scan(step, (h0, c0), (x, xm, keep), x.shape[0], False,
                       min(st.unroll, x.shape[0]))
    saved = None
    if save:
        saved = {"a": ys["a"], "d": ys["d"], "fp": ys["fp"], "keep": keep, "h0": h0.astype(dt),
                 "hs": ys["hs"]}
        if st.mlstm:
            saved.update(u=ys["u"], xm=xm)
    return (h, c), ys["hs"], ys.get("cs"), saved


def backward(st: Static, x: jax.Array, fw: dict[str, jax.Array], s: dict[str, Any],
             dhs: jax.Array, dcs: jax.Array | None, dh: jax.Array, dc: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, jax.Array]:
    """The backward of ``forward`` over x [T, B, in] from its residuals ``s``; fw: its
    weights. dhs [T, B, H] (and dcs): the cotangents of hs (cs); dh, dc [B, H] (state dtype):
    those of the final state. Returns (dx [T, B, in] state dtype, {"w_x", "b", "w_mx", "w_mh",
    "w_h": float32 gradients of the matrices as used}, dh0, dc0 [B, H]: those of the initial
    state, before its reset)."""
    dt, sdt = st.dtype, st.state_dtype
    n_t, n_b = x.shape[:2]
    hidden = dh.shape[1]
    w_h = fw["w_cat"][:hidden]
    keep = s["keep"]

    def step(carry: tuple[jax.Array, jax.Array], inputs: tuple[Any, ...]
             ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        dh, dc = carry  # cotangents of the state step t returned
        dhs_t, dcs_t, d, fp_t, u_t, xm_t, keep_t = inputs
        dh = dh + dhs_t.astype(sdt)
        if dcs_t is not None:
            dc = dc + dcs_t
        f, p = fp_t[:, :hidden], fp_t[:, hidden:]
        dc = dc + dh * p
        dz = (d * jnp.concatenate([dc, dc, dc, dh], axis=1)).astype(dt)
        dc = dc * f
        dm = jnp.dot(dz, w_h.T, preferred_element_type=sdt)  # [B, H]
        out = {"dz": dz}
        if st.mlstm:
            du = (dm * xm_t).astype(dt)
            out.update(du=du, dxm=(dm * u_t).astype(dt))
            dh = jnp.dot(du, fw["w_mh"].T, preferred_element_type=sdt)
        else:
            dh = dm
        if keep_t is not None:  # the reset at step t's start
            dh, dc = dh * keep_t, dc * keep_t
        return (dh, dc), out

    inputs = (dhs, dcs, s["d"], s["fp"], s.get("u"), s.get("xm"), keep)
    unroll = min(st.unroll, n_t)
    (dh0, dc0), ys = _scan(step, (dh, dc), inputs, n_t, True, unroll)
    rows = lambda seq: seq.reshape(n_t * n_b, -1)
    all_rows = lambda a, b: jax.lax.dot_general(rows(a), rows(b), (((0,), (0,)), ((), ())),
                                                preferred_element_type=jnp.float32)
    g_cat = all_rows(s["a"], ys["dz"])  # [H + in, 4H]
    grads = {"w_h": g_cat[:hidden], "w_x": g_cat[hidden:],
             "b": jnp.sum(ys["dz"], axis=(0, 1), dtype=jnp.float32)}
    d_x = jnp.einsum("tbg,ig->tbi", ys["dz"], fw["w_cat"][hidden:], preferred_element_type=sdt)
    if st.mlstm:
        # The state entering each step, as the forward used it: h0, then hs, each reset.
        h_in = jnp.concatenate([s["h0"][None], s["hs"][:-1]], axis=0)
        if keep is not None:
            h_in = h_in * keep.astype(dt)
        grads.update(w_mh=all_rows(h_in, ys["du"]), w_mx=all_rows(x, ys["dxm"]))
        d_x = d_x + jnp.einsum("tbh,ih->tbi", ys["dxm"], fw["w_mx"], preferred_element_type=sdt)
    return d_x, grads, dh0, dc0
