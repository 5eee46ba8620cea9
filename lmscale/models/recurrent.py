"""mLSTM and LSTM recurrent layers over a whole sequence (jax.lax.scan over time).

Equations (sentiment-discovery / Krause et al. 2016), x @ W convention, per step t:
  mLSTM: m = (x W_mx) * (h W_mh);  z = x W_x + m W_h + b
  LSTM:  z = x W_x + h W_h + b
  i, f, g, o = split(z, 4);  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')
Shapes: W_x (in, 4H), W_mx (in, H), W_mh (H, H), W_h (H, 4H), b (4H,).

Speed: the default path (``recurrent_vjp``) lays the loop out for XLA (``recurrent_loops``);
the autodiff reference computes the input-side projections (x W_x + b and x W_mx) of all T
steps as one matmul before the scan. Weight norm is applied once per call,
and on W_mh and W_h it is folded into the products (the layers pass v and g / ||v||): the
normalized hidden-to-hidden matrices are never written.

Precision: ``dtype`` is the compute dtype of the matmuls (weights and inputs are cast to it).
Gate nonlinearities and the carry (h, c) are kept in float32 (at least), whatever ``dtype``.
Resets: before step t, rows with resets[t] True have h and c zeroed (h * (1 - reset)).

Gradients: by default the recurrence has a hand-written backward (``recurrent_vjp``) that
forms the recurrent weight gradients after the reverse scan as one float32-accumulated
matmul over all T x B rows. ``grad="autodiff"`` (argument, or ``scan_options``) keeps plain
autodiff through ``lax.scan``, the reference for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models import recurrent_loops, recurrent_segments, recurrent_vjp, regularizers
from lmscale.models.dtypes import at_least_float32
from lmscale.models.initializers import recurrent_uniform
from lmscale.models.weight_norm import make_matrix

Carry = tuple[jax.Array, jax.Array]
# (hs [T, B, H] in compute dtype, final (h, c), cs [T, B, H] or None)
ScanResult = tuple[jax.Array, Carry, jax.Array | None]


GRAD_IMPLS = ("custom", "autodiff")
LAYOUTS = ("auto", "feature", "batch")
FACTORS = ("compute", "float32")
SCANNED_KINDS = ("mlstm", "lstm")  # the model kinds whose layers are these: scan_options applies


@dataclasses.dataclass(frozen=True)
class ScanOptions:
    """How the recurrences are built (read when a function is traced).

    grad: "custom" (hand-written backward, recurrent_vjp) or "autodiff" (through lax.scan).
    unroll: unroll factor of the time loop (forward and backward; with grad="custom" and the
        feature layout the mLSTM's backward loop is unrolled only completely, see
        recurrent_loops.backward); 0: 2 with the batch layout (an H200's 4096-unit bf16 step:
        84.6 ms at 1, 82.7 at 2, 82.5 at 4) of the custom backward, else 1.
    layout: how the custom-backward loops are laid out: "feature" (``recurrent_loops``,
        tuned for XLA:CPU), "batch" (``recurrent_batch_major``, for XLA:GPU: fewer kernels
        per step), or "auto": "batch" on GPUs, else "feature". Remat runs "feature".
    factors: the dtype in which the batch-major loops save the gate derivative factors for
        the backward: "compute" (the compute dtype) or "float32". The forget gate and the
        output factor stay float32 (the cell's gradient is multiplied by them every step).
        On the H200 (4096 units, bf16) "compute" saves 2 GiB of 12.7 and about 1 % of the
        step's time (within the runs' spread); the recurrent weights' gradients at T = 256
        move from 0.31 % to 0.39 % off float32's in bf16 (fp16: 0.036 % to 0.043 %;
        autodiff: 0.65 %, 0.096 %; benchmarks/README.md, "GPU: fewer bytes").
    """
    grad: str = "custom"
    unroll: int = 0
    layout: str = "auto"
    factors: str = "compute"

    def loops_layout(self, remat_steps: int = 0, n_t: int = 1) -> str:
        """The layout of the loops that run over ``n_t`` steps: remat segments
        (``remat_steps``) run the feature-major ones whatever ``layout`` says."""
        if recurrent_segments.segment_length(remat_steps, n_t) < n_t:
            return "feature"
        return self.resolved_layout()

    def resolved_unroll(self, layout: str | None = None) -> int:
        """``unroll`` with 0 decided by the loops that run (``layout``, default
        ``resolved_layout()``): 2 for the batch-major ones, else 1."""
        if self.unroll:
            return self.unroll
        return 2 if (layout or self.resolved_layout()) == "batch" else 1

    def static(self, kind: str, dtype: Any, return_cells: bool, remat_steps: int, n_t: int
               ) -> recurrent_loops.Static:
        """The custom-backward loops' static options for a call over ``n_t`` steps."""
        layout = self.loops_layout(remat_steps, n_t)
        factors = jnp.dtype(dtype if self.factors == "compute" else self.factors).name
        return recurrent_loops.Static(kind, dtype, return_cells, self.resolved_unroll(layout),
                                      remat_steps, layout, factors)

    def resolved_layout(self) -> str:
        """``layout`` with "auto" decided by the default backend."""
        if self.layout != "auto":
            return self.layout
        return "batch" if jax.default_backend() == "gpu" else "feature"


# Per thread (and asyncio task): a block in one thread of a server or notebook does not change
# what another traces meanwhile (one module-level stack did).
_OPTIONS: contextvars.ContextVar[ScanOptions] = contextvars.ContextVar("lmscale_scan_options",
                                                                       default=ScanOptions())


def current_scan_options() -> ScanOptions:
    return _OPTIONS.get()


@contextlib.contextmanager
def scan_options(**changes: Any) -> Iterator[ScanOptions]:
    """Within the block, functions traced in this thread use these options (e.g.
    ``grad="autodiff"``); other threads keep theirs."""
    opts = dataclasses.replace(_OPTIONS.get(), **changes)
    if (opts.grad not in GRAD_IMPLS or opts.unroll < 0 or opts.layout not in LAYOUTS
            or opts.factors not in FACTORS):
        raise ValueError(f"bad scan options {opts}: grad in {GRAD_IMPLS}, unroll >= 0, "
                         f"layout in {LAYOUTS}, factors in {FACTORS}")
    token = _OPTIONS.set(opts)
    try:
        yield opts
    finally:
        _OPTIONS.reset(token)


def _keep_mask(resets: jax.Array | None, dtype: Any) -> jax.Array | None:
    """bool resets [T, B] -> keep [T, B, 1] in ``dtype`` (0 where reset), or None."""
    if resets is None:
        return None
    return jnp.logical_not(jnp.asarray(resets, bool))[..., None].astype(dtype)


def _recurrence(pre: tuple[jax.Array, ...], carry: Carry, resets: jax.Array | None,
                gates: Callable[[tuple[jax.Array, ...], jax.Array], jax.Array], dtype: Any,
                return_cells: bool, remat_steps: int = 0) -> ScanResult:
    """Shared LSTM-style scan (the autodiff path).

    pre: per-step input projections, each [T, B, ...]; gates(pre_t, h) -> z [B, 4H] in the
    state dtype. resets: bool [T, B] or None. Returns (hs [T, B, H] in ``dtype``, (h, c),
    cs [T, B, H] in the state dtype or None). ``remat_steps`` > 0: an outer scan over equal
    segments (``recurrent_segments.segment_length``) whose body, a scan over one segment, is
    ``jax.checkpoint``-ed: autodiff keeps each segment's starting state and recomputes the
    segment's residuals in the backward (the custom path's remat, done by JAX).
    """
    sdt = at_least_float32(dtype)
    h0, c0 = (jnp.asarray(a, sdt) for a in carry)

    def step(state: Carry, inputs: tuple[Any, ...]) -> tuple[Carry, Any]:
        h, c = state
        pre_t, reset_t = inputs
        if reset_t is not None:
            keep = jnp.logical_not(reset_t)[:, None]
            h = jnp.where(keep, h, jnp.zeros_like(h))
            c = jnp.where(keep, c, jnp.zeros_like(c))
        i, f, g, o = jnp.split(gates(pre_t, h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        out = (h.astype(dtype), c) if return_cells else (h.astype(dtype), None)
        return (h, c), out

    resets_in = None if resets is None else jnp.asarray(resets, bool)
    unroll, n_t = current_scan_options().unroll or 1, pre[0].shape[0]
    k = recurrent_segments.segment_length(remat_steps, n_t)
    if k == n_t:
        (h, c), (hs, cs) = jax.lax.scan(step, (h0, c0), (pre, resets_in), unroll=unroll)
        return hs, (h, c), cs

    @jax.checkpoint
    def segment(state: Carry, inputs: tuple[Any, ...]) -> tuple[Carry, Any]:
        return jax.lax.scan(step, state, inputs, unroll=min(unroll, k))

    split = lambda a: a.reshape(n_t // k, k, *a.shape[1:])  # [T, ...] -> [T / k, k, ...]
    (h, c), (hs, cs) = jax.lax.scan(segment, (h0, c0), jax.tree.map(split, (pre, resets_in)),
                                    unroll=max(1, unroll // k))
    hs, cs = jax.tree.map(lambda a: a.reshape(n_t, *a.shape[2:]), (hs, cs))
    return hs, (h, c), cs


def mlstm_scan(xs: jax.Array, carry: Carry, w_x: jax.Array, w_mx: jax.Array, w_mh: jax.Array,
               w_h: jax.Array, b: jax.Array, resets: jax.Array | None = None, *,
               dtype: Any = jnp.float32, return_cells: bool = False,
               grad: str | None = None, w_mh_scale: jax.Array | None = None,
               w_h_scale: jax.Array | None = None, remat_steps: int = 0) -> ScanResult:
    """Multiplicative LSTM over a time-major sequence.

    xs [T, B, in]; carry (h [B, H], c [B, H]); w_x (in, 4H), w_mx (in, H), w_mh (H, H),
    w_h (H, 4H), b (4H,); resets bool [T, B] or None; grad: "custom" | "autodiff"
    (default: ``scan_options``). ``w_mh_scale`` [H], ``w_h_scale`` [4H]: per-output-unit
    scales, the matrices used being w_mh * w_mh_scale and w_h * w_h_scale (weight norm
    folded into the products: ``WeightNormMatrix.factors``), or None. ``remat_steps`` > 0:
    the forward keeps only the state every that many steps and the backward recomputes the
    rest (``recurrent_segments.segment_length``; with grad "autodiff" by ``jax.checkpoint``):
    less memory, one more forward.
    Returns (hs [T, B, H] in ``dtype``, final (h, c) float32, cs [T, B, H] float32 or None).
    """
    sdt = at_least_float32(dtype)
    x = xs.astype(dtype)
    opts = current_scan_options()
    if (grad or opts.grad) == "custom":
        st = opts.static("mlstm", dtype, return_cells, remat_steps, xs.shape[0])
        h0, c0 = (jnp.asarray(a, sdt) for a in carry)
        return recurrent_vjp.recurrence(st, x, w_x, b, w_mx, w_mh, w_h, h0, c0,
                                        _keep_mask(resets, sdt), w_mh_scale, w_h_scale)
    w_mh = recurrent_loops.scaled(w_mh, w_mh_scale)
    w_h = recurrent_loops.scaled(w_h, w_h_scale)
    # the bias is added in the state dtype inside the step (rounded to the compute dtype, a
    # forget-gate bias of 30 was held to bfloat16's spacing, 0.125)
    pre_x = jnp.einsum("tbi,ij->tbj", x, w_x.astype(dtype))
    pre_m = jnp.einsum("tbi,ij->tbj", x, w_mx.astype(dtype))
    w_mh, w_h, b = w_mh.astype(dtype), w_h.astype(dtype), b.astype(sdt)

    def gates(pre_t: tuple[jax.Array, ...], h: jax.Array) -> jax.Array:
        zx, mx = pre_t
        m = mx * jnp.dot(h.astype(dtype), w_mh)
        return zx.astype(sdt) + b + jnp.dot(m, w_h, preferred_element_type=sdt)

    return _recurrence((pre_x, pre_m), carry, resets, gates, dtype, return_cells, remat_steps)


def lstm_scan(xs: jax.Array, carry: Carry, w_x: jax.Array, w_h: jax.Array, b: jax.Array,
              resets: jax.Array | None = None, *, dtype: Any = jnp.float32,
              return_cells: bool = False, grad: str | None = None,
              w_h_scale: jax.Array | None = None, remat_steps: int = 0) -> ScanResult:
    """Standard LSTM over a time-major sequence.

    xs [T, B, in]; carry (h [B, H], c [B, H]); w_x (in, 4H), w_h (H, 4H), b (4H,);
    resets bool [T, B] or None; ``w_h_scale`` and ``remat_steps`` as :func:`mlstm_scan`'s.
    Returns as :func:`mlstm_scan`.
    """
    sdt = at_least_float32(dtype)
    opts = current_scan_options()
    if (grad or opts.grad) == "custom":
        st = opts.static("lstm", dtype, return_cells, remat_steps, xs.shape[0])
        h0, c0 = (jnp.asarray(a, sdt) for a in carry)
        return recurrent_vjp.recurrence(st, xs.astype(dtype), w_x, b, None, None, w_h, h0, c0,
                                        _keep_mask(resets, sdt), None, w_h_scale)
    w_h = recurrent_loops.scaled(w_h, w_h_scale)
    pre_x = jnp.einsum("tbi,ij->tbj", xs.astype(dtype), w_x.astype(dtype))
    w_h, b = w_h.astype(dtype), b.astype(sdt)  # the bias added in the state dtype (as mLSTM's)

    def gates(pre_t: tuple[jax.Array, ...], h: jax.Array) -> jax.Array:
        (zx,) = pre_t
        return zx.astype(sdt) + b + jnp.dot(h.astype(dtype), w_h, preferred_element_type=sdt)

    return _recurrence((pre_x,), carry, resets, gates, dtype, return_cells, remat_steps)


class _RecurrentLayer(nnx.Module):
    """The matrices (mLSTM: ``multiplicative``) and the shared call logic; subclasses define
    ``_scan``."""

    multiplicative: bool = False  # the mLSTM's w_mx [in, H] and w_mh [H, H] too
    kind: str = ""  # recurrent_loops.Static's name of the cell: "mlstm" or "lstm"

    def __init__(self, in_features: int, hidden: int, *, weight_norm: bool = True,
                 weight_drop: float = 0.0, remat_steps: int = 0, two_biases: bool = False,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        """``remat_steps`` > 0: the training backward recomputes the forward in segments of
        that many steps, saving only their starting states (``mlstm_scan``). ``two_biases``:
        the gate bias is ``bias`` + ``bias_h`` [4H], PyTorch's and sentiment-discovery's
        b_ih + b_hh, each drawn from U(+-1/sqrt(H)) and trained as a parameter of its own
        (Adam moves their sum at twice the rate of one bias, and the clip norm counts its
        gradient twice); else one ``bias``, zero at the start."""
        init = recurrent_uniform(hidden)
        mat = lambda i, o: make_matrix(i, o, weight_norm=weight_norm, init=init, rngs=rngs)
        self.in_features, self.hidden, self.dtype = in_features, hidden, dtype
        self.weight_drop, self.remat_steps = float(weight_drop), int(remat_steps)
        self.w_x = mat(in_features, 4 * hidden)
        if self.multiplicative:
            self.w_mx = mat(in_features, hidden)
            self.w_mh = mat(hidden, hidden)
        self.w_h = mat(hidden, 4 * hidden)
        if two_biases:
            self.bias = nnx.Param(init(rngs.params(), (4 * hidden,), jnp.float32))
            self.bias_h = nnx.Param(init(rngs.params(), (4 * hidden,), jnp.float32))
        else:
            self.bias = nnx.Param(jnp.zeros((4 * hidden,), jnp.float32))

    def gate_bias(self) -> jax.Array:
        """The bias [4H] added to the gates' pre-activations (``bias`` + ``bias_h`` with two)."""
        bias_h = getattr(self, "bias_h", None)
        return self.bias[...] if bias_h is None else self.bias[...] + bias_h[...]

    def _scan(self, xs: jax.Array, carry: Carry, resets: jax.Array | None,
              return_cells: bool, step_key: jax.Array | None = None) -> ScanResult:
        raise NotImplementedError

    def _drop(self, w: jax.Array, step_key: jax.Array | None, tag: int) -> jax.Array:
        """Weight drop (DropConnect) of a hidden-to-hidden matrix: one mask per call, applied
        before the scan, so every time step sees the same mask (None key: no drop)."""
        if step_key is None:
            return w
        return regularizers.weight_drop(w, step_key, tag, self.weight_drop)

    def _recurrent_factors(self, name: str, step_key: jax.Array | None, tag: int
                           ) -> tuple[jax.Array, jax.Array | None]:
        """(V, s) of a hidden-to-hidden matrix W = V * s (s: weight norm's g / ||v||, or None),
        V weight-dropped. Dropping V drops the same elements of W (the mask is elementwise)."""
        v, scale = getattr(self, name).factors()
        return self._drop(v, step_key, tag), scale

    def scan_time_major(self, xs: jax.Array, carry: Carry, resets: jax.Array | None = None, *,
                        return_cells: bool = False, step_key: jax.Array | None = None,
                        row_keys: jax.Array | None = None) -> ScanResult:
        """xs [T, B, in], resets [T, B] -> (hs [T, B, H] in dtype, (h, c), cs [T, B, H] | None).

        ``step_key``: this layer's key of the forward pass, for weight drop (``weight_drop``
        > 0) on the hidden-to-hidden matrices; None in evaluation. ``row_keys``: unused."""
        return self._scan(xs, carry, resets, return_cells, step_key)

    def decode_weights(self) -> dict[str, jax.Array]:
        """The layer's weights as its forward loop reads them (weight norm applied, cast,
        transposed), for ``decode``. Computed once per generated sequence, not per token:
        per token, transposing W_h alone made a 4096-unit mLSTM generate 8x slower."""
        m = self.multiplicative
        w_mh, s_mh = self.w_mh.factors() if m else (None, None)
        w_h, s_h = self.w_h.factors()
        return recurrent_loops.forward_weights(self._static(), self.w_x(), self.gate_bias(),
                                               self.w_mx() if m else None, w_mh, w_h, s_mh, s_h)

    def decode(self, xs: jax.Array, carry: Carry, weights: dict[str, jax.Array],
               resets: jax.Array | None = None, return_cells: bool = False) -> ScanResult:
        """xs [T, B, in] (time-major, no dropout), resets [T, B] or None -> (hs [T, B, H] in the
        compute dtype, (h, c) float32, cs [T, B, H] float32 or None), as ``scan_time_major``
        computes them, with the weights of ``decode_weights`` (made once for many calls)."""
        sdt = at_least_float32(self.dtype)
        h0, c0 = (jnp.asarray(a, sdt) for a in carry)
        return recurrent_loops.forward_with(self._static(return_cells), xs.astype(self.dtype),
                                            weights, h0, c0, _keep_mask(resets, sdt))

    def _static(self, return_cells: bool = False) -> recurrent_loops.Static:
        return recurrent_loops.Static(self.kind, self.dtype, return_cells,
                                      current_scan_options().unroll or 1)

    def fix_unit(self, carry: Carry, unit: int, value: float, which: str) -> Carry:
        """The carry (h, c) with unit ``unit`` of c (``which="cell"``) or h set to ``value``."""
        h, c = carry
        if which == "cell":
            return h, c.at[:, unit].set(value)
        if which == "hidden":
            return h.at[:, unit].set(value), c
        raise ValueError(f"which must be 'cell' or 'hidden', got {which!r}")

    def __call__(self, xs: jax.Array, carry: Carry, resets: jax.Array | None = None, *,
                 return_cells: bool = False) -> Any:
        """xs [B, T, in]; carry (h, c) [B, H]; resets bool [B, T] or None.

        Returns (hs [B, T, H], (h, c)), or (hs, (h, c), cs [B, T, H] float32) with
        ``return_cells``. hs is in the compute dtype; the carry is float32.
        """
        hs, new_carry, cs = self._scan(jnp.swapaxes(xs, 0, 1), carry,
                                       None if resets is None else jnp.swapaxes(resets, 0, 1),
                                       return_cells, None)
        hs = jnp.swapaxes(hs, 0, 1)
        if return_cells:
            return hs, new_carry, jnp.swapaxes(cs, 0, 1)
        return hs, new_carry

    def initial_carry(self, batch_size: int) -> Carry:
        """Zero (h, c), float32 [B, H]; two distinct buffers, so both can be donated."""
        shape = (batch_size, self.hidden)
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


class MLSTMLayer(_RecurrentLayer):
    """Multiplicative LSTM layer; params w_x, w_mx, w_mh, w_h (each g/v or kernel) and bias."""

    multiplicative = True
    kind = "mlstm"

    def _scan(self, xs: jax.Array, carry: Carry, resets: jax.Array | None,
              return_cells: bool, step_key: jax.Array | None = None) -> ScanResult:
        # Weight drop on both matrices that act on the state: W_mh (h -> m) and W_h (m -> z).
        w_mh, s_mh = self._recurrent_factors("w_mh", step_key, 0)
        w_h, s_h = self._recurrent_factors("w_h", step_key, 1)
        return mlstm_scan(xs, carry, self.w_x(), self.w_mx(), w_mh, w_h, self.gate_bias(),
                          resets, dtype=self.dtype, return_cells=return_cells, w_mh_scale=s_mh,
                          w_h_scale=s_h, remat_steps=self.remat_steps)


class LSTMLayer(_RecurrentLayer):
    """Standard LSTM layer; params w_x, w_h (each g/v or kernel) and a single bias."""

    kind = "lstm"

    def _scan(self, xs: jax.Array, carry: Carry, resets: jax.Array | None,
              return_cells: bool, step_key: jax.Array | None = None) -> ScanResult:
        w_h, s_h = self._recurrent_factors("w_h", step_key, 1)
        return lstm_scan(xs, carry, self.w_x(), w_h, self.gate_bias(), resets, dtype=self.dtype,
                         return_cells=return_cells, w_h_scale=s_h, remat_steps=self.remat_steps)
