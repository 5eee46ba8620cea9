"""The forward and backward loops of the mLSTM / LSTM layer, laid out for XLA.

``recurrent_vjp`` makes them the layer's differentiable ``recurrence`` (its docstring: why
the weight gradients are formed after the reverse loop); ``recurrent_segments`` runs them
segment by segment for remat; ``forward_with`` is the decoder's step (no residuals).

Forward (per step t, keep_t = 1 - reset_t):  h, c <- (h, c) where keep_t, else 0;
  mLSTM: u = h W_mh, m = xm_t * u with xm_t = x_t W_mx, z = x_t W_x + m W_h + b;
  LSTM:  z = x_t W_x + h W_h + b;
  i, f, g, o = sigmoid/sigmoid/tanh/sigmoid(split(z)); c' = f c + i g; h' = o tanh(c').

How it is laid out, each choice measured on XLA:CPU (benchmarks/README.md, issue 11):
- Feature-major steps: per-step arrays are [F, B] and the matmuls W^T [4H, K] @ [K, B]: the
  big matrix is the GEMM operand XLA:CPU streams, the small state the one it repacks.
- x_t W_x is computed inside the step, a small matmul added to m W_h (one concatenated
  [W_h; W_x] matmul measured the same). For in << H this costs in/H more in-loop FLOPs and
  saves writing, transposing and reading back the [T, B, 4H] projection (the step is bound
  by memory passes at this machine's ~6 GB/s). The mLSTM's x_t W_mx comes from the same
  matmul ([W_x W_mx]^T x_t, [5H, B]) and is saved time-major for the backward: 3-5 % faster
  at 256 units than one [T*B, in] x [in, H] matmul and a transpose before the loop.
- Software-pipelined forward: the carry holds the next step's z, so the gate fusion (five
  transcendentals) reads loop-carried arrays only. XLA:CPU emits a fusion that slices a
  per-step slice of a sequence again (z_t split into i, f, g, o) unvectorized, 6-8x slower.
  Iteration i finishes step i-1 and prepares step i (the first only prepares step 0: a z
  computed before the loop would see W_h transposed, and XLA:CPU runs such a bfloat16 dot
  in float32); step T-1 is finished after the loop, which has no dot. The carry is only
  (z, c): what a step's preparation computes from h is saved at once, so XLA copies one
  carried [H, B] array per step, not five.
- The forward saves what the backward multiplies by, not the gates: d_t = (g i(1-i),
  c_in f(1-f), i(1-g^2), tanh(c) o(1-o)) [4H, B], p_t = o (1 - tanh(c)^2) and f_t. The
  backward step is then dc += dh p_t; dz_t = d_t * (dc, dc, dc, dh); dc <- dc f_t: one
  vectorized fusion with no transcendental, no concatenation (XLA:CPU's concatenate fusion
  ran at ~4 ns per element) and no sub-sliced sequence.
- The backward allocates nothing per step: dz_t overwrites d_t, and (mLSTM) dm_t * xm_t and
  dm_t * u_t overwrite xm_t and u_t, residuals only step t reads (each is read back after
  the write, which lets XLA update it in place). Fresh buffers cost a zero-fill, page faults
  and strided writes; with the previous item, the step took 9 % less at 1024 and 12 % less
  at 256 units.
- Sequences read inside a loop are time-major [T, F, B] (a contiguous slice per step); the
  forward's sequences only consumed by the weight-gradient matmuls are written feature-major
  [F, T, B], and the backward's are transposed once, so each gradient is one
  [F, T*B] x [F', T*B]^T matmul.
- Sequences saved in bfloat16 (and float16, alike) are buffers of their uint16 bits
  (``lmscale.models.inplace``): XLA:CPU runs a bfloat16 dynamic-update-slice in float32 on
  the whole buffer, so each step's write cost a pass over the sequence (the bfloat16 step
  was 3x slower at 1024 units, 5.7x at 256); an integer buffer is updated in place.
- Weight norm folded into the products: W_mh and W_h may come as a direction V and a
  per-output-unit scale s (W = V * s, ``weight_norm.unit_scale``). The loop multiplies the
  products' results by s (u = s * (V^T h), z = s * (V^T m)) and the backward its gradients
  by s before the products (dm = V (s * dz)); after the loop dV = (M^T dZ) * s and ds is the
  column sum of V * (M^T dZ). The normalized W is never written: XLA wrote it twice (once per
  layout) and transposed one copy, three passes over the largest weight every step.
- Remat (``Static.segment`` > 0, ``recurrent_segments``): the forward keeps only the state
  entering each segment of that many steps, and the backward recomputes a segment's residuals
  before running ``backward`` through it.
Resets of step t+1 are applied at the end of step t. Without differentiation nothing is
saved. Matmuls take compute-dtype operands with float32 accumulation; the carry and the
gate math are float32 (float64 when computing in float64).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models.dtypes import at_least_float32
from lmscale.models.fast_dot import dot_columns
from lmscale.models.inplace import decode as _decode
from lmscale.models.inplace import encode as _encode
from lmscale.models.inplace import storage as _storage


@dataclasses.dataclass(frozen=True)
class Static:
    """Static options of one recurrence call (hashable: a custom_vjp nondiff argument)."""
    kind: str  # "mlstm" or "lstm"
    dtype: Any  # compute dtype of the matmuls
    return_cells: bool
    unroll: int = 1  # of the loops; the mLSTM's backward only when complete (see backward)
    segment: int = 0  # remat: > 0 saves only each segment's starting state (recurrent_segments)
    layout: str = "feature"  # "feature": these loops (XLA:CPU); "batch": recurrent_batch_major
    factors: str = "float32"  # dtype of the gate factors the batch-major loops save

    @property
    def state_dtype(self) -> Any:
        return at_least_float32(self.dtype)

    @property
    def mlstm(self) -> bool:
        return self.kind == "mlstm"


def _lead(t: jax.Array, seq: jax.Array, dtype: Any = None) -> jax.Array:
    """seq[t] of a time-major [T, F, B] sequence (t is clamped into range); ``dtype``: the
    values' dtype when seq is a buffer of ``_storage(dtype)``."""
    value = jax.lax.dynamic_index_in_dim(seq, t, axis=0, keepdims=False)
    return value if dtype is None else _decode(value, dtype)


def _put_lead(buf: jax.Array, t: jax.Array, value: jax.Array, dtype: Any) -> jax.Array:
    """buf[t] = value in ``dtype`` of a time-major buffer of ``_storage(dtype)``."""
    return jax.lax.dynamic_update_index_in_dim(buf, _encode(value, dtype), t, axis=0)


def _put_mid(buf: jax.Array, t: jax.Array, value: jax.Array, dtype: Any) -> jax.Array:
    """buf[:, t] = value in ``dtype`` of a feature-major [F, T, B] buffer of ``_storage(dtype)``."""
    return jax.lax.dynamic_update_index_in_dim(buf, _encode(value, dtype), t, axis=1)


def varying_like(buf: jax.Array, *refs: Any) -> jax.Array:
    """``buf`` marked as varying over the manual mesh axes the ``refs`` vary over (inside
    ``shard_map``, a loop-carried buffer must have the type of the values written to it)."""
    axes = set()
    for r in refs:
        if r is not None:
            aval = jax.typeof(r)
            mat = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10; .vma before
            axes |= set(mat.varying if mat is not None else getattr(aval, "vma", ()))
    return jax.lax.pcast(buf, tuple(sorted(axes)), to="varying") if axes else buf


def _rows(x: jax.Array) -> jax.Array:
    """[F, T, B] -> [F, T*B] (a bitcast)."""
    return x.reshape(x.shape[0], -1)


def _all_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum over all T*B rows of a_r b_r^T: [I, T, B], [J, T, B] -> [I, J] float32, one matmul."""
    return jax.lax.dot_general(_rows(a), _rows(b), (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _gates(z: jax.Array, bias: jax.Array) -> tuple[jax.Array, ...]:
    """(i, f, g, o) = sigmoid, sigmoid, tanh, sigmoid of the row blocks of z + b, z [4H, B]."""
    i, f, g, o = jnp.split(z + bias, 4, axis=0)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _keep_next(keep: jax.Array | None, t: jax.Array, n_t: int) -> jax.Array | None:
    """keep of step t+1 ([1, B]), 1 after the last step; None without resets."""
    if keep is None:
        return None
    return jnp.where(t + 1 < n_t, _lead(t + 1, keep), jnp.ones_like(keep[0]))


def layout(st: Static, w: dict[str, Any]) -> dict[str, jax.Array]:
    """The forward loop's weights, from the compute-dtype weights ``w``: {"wh_t": W_h^T
    [4H, H], "wmh_t": W_mh^T [H, H] (mLSTM), "wx_t": W_x^T [4H, in] or [W_x W_mx]^T [5H, in]
    (x_t's projections in one in-loop matmul), "bias": [4H, 1] in the state dtype, and the
    weight-norm scales "s_h" [4H, 1] and "s_mh" [H, 1] (state dtype) when given}.

    Transposing is a pass over the weights (W_h^T of a 4096-unit mLSTM: 268 MB). XLA does
    not hoist it out of an enclosing loop, so a decoder that runs one step per token computes
    this once (``forward_weights``) instead of once per token."""
    out = {"wh_t": w["w_h"].T,
           "wx_t": (jnp.concatenate([w["w_x"], w["w_mx"]], axis=1) if st.mlstm else w["w_x"]).T,
           "bias": w["b"].astype(st.state_dtype)[:, None]}
    if st.mlstm:
        out["wmh_t"] = w["w_mh"].T
    for name in ("s_h", "s_mh"):
        if w.get(name) is not None:
            out[name] = _column(w[name])
    return out


def _column(scale: jax.Array | None) -> jax.Array | None:
    """A per-unit scale [F] as a column [F, 1], to multiply feature-major [F, B] arrays."""
    return None if scale is None else scale[:, None]


def scaled(y: jax.Array, scale: jax.Array | None) -> jax.Array:
    """y times ``scale`` broadcast against it (a weight norm's per-unit g / ||v||); None: y."""
    return y if scale is None else y * scale


def forward_weights(st: Static, w_x: jax.Array, b: jax.Array, w_mx: jax.Array | None,
                    w_mh: jax.Array | None, w_h: jax.Array, s_mh: jax.Array | None = None,
                    s_h: jax.Array | None = None) -> dict[str, jax.Array]:
    """The weights of ``recurrent_vjp.recurrence`` (same arguments) in the forward loop's
    layout, for ``forward_with``: compute them once, run many calls (one per generated
    token)."""
    return layout(st, cast(st, w_x, b, w_mx, w_mh, w_h, s_mh, s_h))


def forward_with(st: Static, x: jax.Array, fw: dict[str, jax.Array], h0: jax.Array,
                 c0: jax.Array, keep: jax.Array | None
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array | None]:
    """``recurrent_vjp.recurrence`` (same x, h0, c0, keep and results) with weights from
    ``forward_weights``; not differentiable (a decoder's step)."""
    (h, c), hs, cs, _ = forward(st, x, fw, h0, c0, keep, save=False)
    return batch_major(hs), (h, c), (None if cs is None else batch_major(cs))


def forward(st: Static, x: jax.Array, fw: dict[str, jax.Array], h0: jax.Array, c0: jax.Array,
            keep: jax.Array | None, save: bool) -> tuple[Any, ...]:
    """The forward loop.

    x [T, B, in] (compute dtype); fw: the weights in the loop's layout (``layout``); h0, c0
    [B, H] state dtype; keep [T, B, 1] or None. Returns ((h, c) [B, H], hs [T, H, B],
    cs [T, H, B] | None, saved): ``saved`` (with ``save``) holds the residuals of the
    backward, else None.
    """
    dt, sdt = st.dtype, st.state_dtype
    n_t, n_b = x.shape[:2]
    hidden = fw["wh_t"].shape[1]
    x_lead = jnp.transpose(x, (0, 2, 1))  # [T, in, B]
    wh_t, wmh_t, wx_t, bias = fw["wh_t"], fw.get("wmh_t"), fw["wx_t"], fw["bias"]
    if n_t == 1:  # XLA drops a loop of one trip and folds the transposes into its dots: in
        # bfloat16, a form XLA:CPU's DotThunk rejects at run time ("BF16 x BF16 = F32"; an
        # evaluation's 1-token tail). A barrier keeps the transposed weights arrays of their own.
        wh_t, wmh_t, wx_t = jax.lax.optimization_barrier((wh_t, wmh_t, wx_t))
    sh, smh = fw.get("s_h"), fw.get("s_mh")  # a product's result is multiplied by these
    keep_l = None if keep is None else jnp.swapaxes(keep, 1, 2)  # [T, 1, B]

    h0, c0 = h0.T, c0.T
    zeros = lambda shape, dtype: varying_like(jnp.zeros(shape, _storage(dtype)), x, h0, c0)
    lead = lambda dtype: zeros((n_t, hidden, n_b), dtype)
    mid = lambda dtype: zeros((hidden, n_t, n_b), dtype)
    bufs: dict[str, jax.Array] = {"hs": lead(dt)}
    if st.return_cells:
        bufs["cs"] = lead(sdt)
    if save:
        bufs.update(d=zeros((n_t, 4 * hidden, n_b), sdt),
                    f=lead(sdt), p=lead(sdt), h_in=mid(dt))
        if st.mlstm:
            bufs.update(u=lead(dt), m=mid(dt), xm=lead(dt))

    def prepare(h: jax.Array, t: jax.Array, bufs: dict[str, jax.Array]
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """z - b [4H, B] (state dtype) of step t from its (reset) input state h [H, B]; saves
        h, and (mLSTM) u, m and xm_t, of step t."""
        if save:
            bufs["h_in"] = _put_mid(bufs["h_in"], t, h, dt)
        zx = dot_columns(wx_t, _lead(t, x_lead), sdt)
        if not st.mlstm:
            return zx + scaled(dot_columns(wh_t, h.astype(dt), sdt), sh), bufs
        xm_t = zx[4 * hidden:].astype(dt)
        u = scaled(dot_columns(wmh_t, h.astype(dt), sdt), smh).astype(dt)
        m = xm_t * u
        if save:
            bufs["m"] = _put_mid(bufs["m"], t, m, dt)
            bufs["u"] = _put_lead(bufs["u"], t, u, dt)
            bufs["xm"] = _put_lead(bufs["xm"], t, xm_t, dt)
        return zx[:4 * hidden] + scaled(dot_columns(wh_t, m, sdt), sh), bufs

    def finish(z: jax.Array, c_in: jax.Array, t: jax.Array, bufs: dict[str, jax.Array]
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """(h, c) [H, B] of step t from its z - b and (reset) input cell c_in; saves hs (and
        cs), and what the backward multiplies by."""
        ig, f, g, o = _gates(z, bias)
        c = f * c_in + ig * g
        tc = jnp.tanh(c)
        h = o * tc
        bufs["hs"] = _put_lead(bufs["hs"], t, h, dt)
        if "cs" in bufs:
            bufs["cs"] = _put_lead(bufs["cs"], t, c, sdt)
        if save:
            # dz = d_t * (dc, dc, dc, dh) and dc += dh * p_t in the backward (module doc).
            for k, dk in enumerate((g * ig * (1 - ig), c_in * f * (1 - f), ig * (1 - g * g),
                                    tc * o * (1 - o))):
                bufs["d"] = jax.lax.dynamic_update_slice(
                    bufs["d"], dk[None].astype(sdt), (t, k * hidden, jnp.zeros_like(t)))
            bufs["f"] = _put_lead(bufs["f"], t, f, sdt)
            bufs["p"] = _put_lead(bufs["p"], t, o * (1 - tc * tc), sdt)
        return h, c, bufs

    def step(i: jax.Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        # Iteration i finishes step i-1 and prepares step i; iteration 0 only prepares step 0
        # (its gate math runs on a zero z, writes junk at 0 that iteration 1 overwrites, and
        # is discarded). Step 0's preactivation is thus computed in the loop like every other:
        # outside it, XLA:CPU upcasts a bfloat16 dot whose weight it sees transposed to
        # float32, on a float32 copy of W_h. The carry is only (z, c): what prepare computes
        # from h is saved at once (XLA copies one carried [H, B] array per step, not five).
        z, c_in, bufs = carry  # step i-1's z - b and (reset) input cell
        h, c, bufs = finish(z, c_in, jnp.maximum(i - 1, 0), dict(bufs))
        first = i == 0
        h, c = jnp.where(first, h0, h), jnp.where(first, c0, c)
        if keep_l is not None:  # step i's resets, applied to its input state
            keep = _lead(i, keep_l) > 0  # a select, not a product: NaN x 0 is NaN, and a
            h, c = jnp.where(keep, h, 0), jnp.where(keep, c, 0)  # text that overflowed passed it on
        z, bufs = prepare(h, i, bufs)
        return z, c, bufs

    z0 = zeros((4 * hidden, n_b), sdt)
    z, c_in, bufs = jax.lax.fori_loop(0, n_t, step, (z0, c0, bufs), unroll=min(st.unroll, n_t))
    h, c, bufs = finish(z, c_in, jnp.asarray(n_t - 1), dict(bufs))  # the last step: no reset after
    saved = None
    if save:
        saved = {k: v for k, v in bufs.items() if k not in ("hs", "cs")}
        saved.update(keep=keep_l)
    return (h.T, c.T), _decode(bufs["hs"], dt), bufs.get("cs"), saved


def batch_major(seq: jax.Array) -> jax.Array:
    """[T, F, B] -> [T, B, F] (the loops' outputs as the layer returns them)."""
    return jnp.swapaxes(seq, 1, 2)


def cast(st: Static, w_x: jax.Array, b: jax.Array, w_mx: jax.Array | None,
         w_mh: jax.Array | None, w_h: jax.Array, s_mh: jax.Array | None = None,
         s_h: jax.Array | None = None) -> dict[str, Any]:
    """The matrices in the compute dtype; the scales (multiplying float32 results) and the
    gate bias (added to float32 pre-activations) in the state dtype."""
    w = {"w_x": w_x, "b": b, "w_mx": w_mx, "w_mh": w_mh, "w_h": w_h, "s_mh": s_mh, "s_h": s_h}
    dtype = lambda k: st.state_dtype if k.startswith("s_") or k == "b" else st.dtype
    return {k: (None if v is None else v.astype(dtype(k))) for k, v in w.items()}


def backward(st: Static, x: jax.Array, w: dict[str, Any], s: dict[str, Any],
             dhs_l: jax.Array, dcs_l: jax.Array | None, dh: jax.Array, dc: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, jax.Array]:
    """The backward of one forward loop over x [T, B, in], from its residuals ``s``.

    dhs_l [T, H, B] (and dcs_l): the cotangents of hs (cs); dh, dc [H, B] (state dtype): those
    of the final state. Returns (dx [in, T*B] state dtype, {"w_x", "b", "w_mx", "w_mh",
    "w_h": float32 gradients of the matrices as used (W, not V)}, dh0, dc0 [H, B]: those of
    the initial state, before its reset)."""
    dt, sdt = st.dtype, st.state_dtype
    n_t, hidden, n_b = s["f"].shape
    keep_l = s["keep"]
    # Step t's gradients overwrite residuals that only step t reads: dz_t goes into d[t],
    # and (mLSTM) dm_t * xm_t into xm[t], dm_t * u_t into u[t]. No buffer is allocated.
    bufs = {"d": s["d"]}
    if st.mlstm:
        bufs.update(xm=s["xm"], u=s["u"])
    is_dc = (jnp.arange(4) < 3)[:, None, None]  # rows of dz scaled by dc (i, f, g), else dh (o)
    # A product with W = V * s takes the cotangent s * ct (in the compute dtype).
    sh, smh = _column(w["s_h"]), _column(w["s_mh"])  # [4H, 1], [H, 1]

    def step(k: jax.Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        # (dh, dc): cotangents of the state entering step t+1, after its reset.
        t = n_t - 1 - k
        dh, dc, bufs = carry
        bufs = dict(bufs)
        keep_next = _keep_next(keep_l, t, n_t)
        if keep_next is not None:
            dh, dc = dh * keep_next, dc * keep_next
        dh = dh + _lead(t, dhs_l).astype(sdt)
        if dcs_l is not None:
            dc = dc + _lead(t, dcs_l)
        dc = dc + dh * _lead(t, s["p"])
        scale = jnp.where(is_dc, dc[None], dh[None])  # [4, H, B]
        dz = (_lead(t, bufs["d"]).reshape(4, hidden, n_b) * scale).reshape(4 * hidden, n_b)
        bufs["d"] = _put_lead(bufs["d"], t, dz, sdt)
        dz = scaled(_lead(t, bufs["d"]), sh).astype(dt)  # read back: d updated in place
        dc = dc * _lead(t, s["f"])
        if st.mlstm:
            dm = jnp.dot(w["w_h"], dz, preferred_element_type=sdt)  # [H, 4H] @ [4H, B]
            bufs["u"] = _put_lead(bufs["u"], t, dm * _lead(t, bufs["u"], dt), dt)
            bufs["xm"] = _put_lead(bufs["xm"], t, dm * _lead(t, bufs["xm"], dt), dt)
            dh = jnp.dot(w["w_mh"], scaled(_lead(t, bufs["xm"], dt), smh).astype(dt),
                         preferred_element_type=sdt)
        else:
            dh = jnp.dot(w["w_h"], dz, preferred_element_type=sdt)
        return dh, dc, bufs

    # The mLSTM's backward loop is not partly unrolled: with two steps in one body XLA reads
    # step t-1's d from the buffer as it was before step t's in-place write, and so copies
    # the whole [T, 4H, B] buffer every step (unroll 2 took 2.6x as long at 256 units). A
    # full unroll (no loop left, as XLA's FLOP count of a step needs) is kept.
    unroll = 1 if st.mlstm and st.unroll < n_t else st.unroll
    dh0, dc0, bufs = jax.lax.fori_loop(0, n_t, step, (dh, dc, bufs), unroll=unroll)
    if keep_l is not None:
        dh0, dc0 = dh0 * keep_l[0], dc0 * keep_l[0]
    mid = lambda seq: jnp.swapaxes(_decode(seq, dt), 0, 1).astype(dt)  # [T, F, B] -> [F, T, B]
    dz = mid(bufs["d"])
    x_ftb = jnp.transpose(x, (2, 0, 1))  # [in, T, B]
    # [in + 1, T, B]: the inputs and a row of ones, whose product with dZ is db = sum dZ.
    x_ones = jnp.concatenate([x_ftb, jnp.ones((1, n_t, n_b), x.dtype)])
    d_x = jnp.dot(w["w_x"], _rows(dz), preferred_element_type=sdt)  # [in, T*B]
    g_x = _all_rows(x_ones, dz)
    grads = {"w_x": g_x[:-1], "b": g_x[-1]}
    if st.mlstm:
        dmu, dmx = mid(bufs["u"]), mid(bufs["xm"])
        d_x = d_x + jnp.dot(w["w_mx"], _rows(dmu), preferred_element_type=sdt)
        grads.update(w_mx=_all_rows(x_ftb, dmu), w_mh=_all_rows(_decode(s["h_in"], dt), dmx),
                     w_h=_all_rows(_decode(s["m"], dt), dz))
    else:
        grads["w_h"] = _all_rows(_decode(s["h_in"], dt), dz)
    return d_x, grads, dh0, dc0
