"""TransformerLM: decoder-only transformer language model (fairseq / sentiment-discovery).

    x_0 = sqrt(d) * E[tokens] + P[positions];  x_0 = Drop(x_0)   (init "gpt2": E[tokens] + P)
    post-norm ("post", the seed):  x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(FF(x)))
    pre-norm ("pre"):              x = x + Drop(Attn(LN(x)));  x = x + Drop(FF(LN(x))); final LN
    FF(x) = FC2(Drop_ff(GeLU_tanh(FC1(x))));  logits = x W_out + b_out  (or x E^T if tied)

Causal multi-head self-attention (softmax in float32) restricted to the token's segment:
``resets[b, t]`` starts a new segment at t (segment id = cumsum of resets along time) and
positions restart at 0 there, so a document read mid-batch is modelled as if alone.

Parameters are float32; matmuls run in the compute ``dtype``; LayerNorm, softmax, the
residual stream and the logits are float32. The L blocks' parameters are stacked [L, ...]
and applied by one ``jax.lax.scan`` (``scan_layers=True``) or a Python loop (the same
numbers to ~1e-6, the same checkpoint layout). Decoding (``decode_step``) loops over the
layers on per-layer params and matrices that ``prepare_decode`` slices and normalizes once
per sequence, one key/value cache per layer updated in place. The module holds parameters
only: dropout draws from an explicit ``dropout_key``.

The attention input projection is one fused (d, 3d) matrix [q | k | v] (fairseq's
``in_proj``); with weight norm each output unit has its own scale, so this is exactly
separate weight-normed q, k, v matrices. The block, LayerNorm, positions and dropout live in
``lmscale.models.transformer_block``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models import attention as attn
from lmscale.models import fast_dot, kv_cache
from lmscale.models.registry import ModelKind, register
from lmscale.models.transformer_block import (ATTN_PROBS, GPT2_STD, SITES_PER_BLOCK, Block, Drop,
                                              LayerNorm, dropout, normal_init, sinusoidal)
from lmscale.models.weight_norm import make_matrix

NORMS = ("post", "pre")
INITS = ("fairseq", "gpt2")
POSITIONS = ("learned", "sinusoidal")
REMATS = ("none", "block")
DecodeState = dict[str, jax.Array]


def check_args(*, layers: Any, d_model: Any, heads: Any, d_ff: Any, max_len: Any, norm: Any,
               positions: Any, remat: Any, dropout: Any, attn_dropout: Any, ff_dropout: Any,
               init: Any = "fairseq", **_: Any) -> None:
    """Raise ValueError naming the bad ``model.*`` key."""
    for name, value in (("layers", layers), ("d_model", d_model), ("heads", heads),
                        ("d_ff", d_ff), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if d_model % heads:
        raise ValueError(f"model.d_model={d_model} is not divisible by model.heads={heads}")
    for name, value, allowed in (("norm", norm, NORMS), ("positions", positions, POSITIONS),
                                 ("remat", remat, REMATS), ("init", init, INITS)):
        if value not in allowed:
            raise ValueError(f"model.{name} must be one of {list(allowed)}, got {value!r}")
    if init == "gpt2" and positions == "sinusoidal":  # amplitude 1 against embeddings of 0.02
        raise ValueError("model.init='gpt2' adds token embeddings of scale 0.02 unscaled, which "
                         "sinusoidal positions (amplitude 1) would swamp: use model.positions="
                         "'learned' (GPT-2's) or model.init='fairseq'")
    for name, value in (("dropout", dropout), ("attn_dropout", attn_dropout),
                        ("ff_dropout", ff_dropout)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"model.{name} must be in [0, 1), got {value}")


STACKED_LAYERS = "blocks"  # every block's params stacked [L, ...] (the weight-decay mask reads it)


class TransformerLM(nnx.Module):
    """Decoder-only transformer LM (see module docstring).

    Params: ``embedding`` [V, d] and ``position_embedding`` [max_len, d] (learned only;
    normal(0, d^-1/2), never weight-normed); ``blocks``: one Block with every param stacked
    [L, ...]; ``final_norm`` (pre-norm only); ``head`` (d, V) (normal(0, d^-1/2), weight-normed
    with ``weight_norm``) and ``head_bias`` [V] unless ``tie_embeddings`` (then logits =
    x E^T, no bias). Block projections Xavier-uniform, biases zero. ``init`` "gpt2": nanoGPT's,
    after the GPT-2 paper (OpenAI's released code draws positions at 0.01, unscaled), instead: embeddings, positions, projections and head N(0, 0.02^2), the
    residual projections ``out`` and ``fc2`` N(0, (0.02 / sqrt(2 L))^2), and the token
    embeddings added unscaled (GPT-2 has no sqrt(d)).
    """

    feature_states = ("hidden",)

    def __init__(self, *, vocab_size: int, layers: int, d_model: int, heads: int, d_ff: int,
                 max_len: int, norm: str = "post", positions: str = "learned",
                 dropout: float = 0.0, attn_dropout: float = 0.0, ff_dropout: float = 0.0,
                 weight_norm: bool = False, tie_embeddings: bool = False, remat: str = "none",
                 scan_layers: bool = True, init: str = "fairseq", dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        check_args(layers=layers, d_model=d_model, heads=heads, d_ff=d_ff, max_len=max_len,
                   norm=norm, positions=positions, remat=remat, dropout=dropout,
                   attn_dropout=attn_dropout, ff_dropout=ff_dropout, init=init)
        self.vocab_size, self.d_model, self.heads = vocab_size, d_model, heads
        self.max_len, self.norm, self.positions = max_len, norm, positions
        self.remat, self.scan_layers = remat, scan_layers
        self.rates = (float(attn_dropout), float(dropout), float(ff_dropout), float(dropout))
        self.dropout, self.dtype, self.tie_embeddings = float(dropout), dtype, bool(tie_embeddings)
        self.embed_scale = 1.0 if init == "gpt2" else math.sqrt(d_model)
        init_fn = normal_init(GPT2_STD if init == "gpt2" else d_model ** -0.5)
        self.embedding = nnx.Param(init_fn(rngs.params(), (vocab_size, d_model), jnp.float32))
        self.position_embedding = (nnx.Param(init_fn(rngs.params(), (max_len, d_model), jnp.float32))
                                   if positions == "learned" else None)
        blocks = [Block(d_model, heads, d_ff, norm=norm, weight_norm=weight_norm, rngs=rngs,
                        init=init, layers=layers) for _ in range(layers)]
        states = [nnx.split(b)[1] for b in blocks]
        self.blocks = nnx.merge(nnx.split(blocks[0])[0],
                                jax.tree.map(lambda *a: jnp.stack(a), *states))
        self.num_layers = layers
        self.final_norm = LayerNorm(d_model) if norm == "pre" else None
        if self.tie_embeddings:
            self.head, self.head_bias = None, None
        else:
            self.head = make_matrix(d_model, vocab_size, weight_norm=weight_norm, init=init_fn,
                                    rngs=rngs)
            self.head_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))

    @property
    def feature_width(self) -> int:
        return self.d_model

    def initial_carry(self, batch_size: int) -> tuple[()]:
        """Nothing is carried between batches."""
        return ()

    # ---- pieces -------------------------------------------------------------------------
    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """int [B, T] x2 -> float32 [B, T, d] = sqrt(d) E[tokens] + P[positions] (init "gpt2":
        E[tokens] + P[positions])."""
        x = self.embedding[...][tokens] * self.embed_scale
        if self.position_embedding is not None:
            return x + self.position_embedding[...][positions]
        return x + sinusoidal(positions, self.d_model)

    def _logits(self, x: jax.Array, head_t: jax.Array | None = None) -> jax.Array:
        """float32 [..., d] -> float32 [..., V] (matmul in the compute dtype). ``head_t``: the
        output matrix transposed, [V, d], computed beforehand (a decoder's; ``kv_cache.dense_t``)."""
        b = None if self.tie_embeddings else self.head_bias[...]
        if head_t is not None:
            return kv_cache.dense_t(x, head_t, b, self.dtype)
        if self.tie_embeddings:  # the embedding [V, d] is the output matrix transposed
            y = fast_dot.dense(x, self.embedding[...], self.dtype, w_transposed=True)
        else:
            y = fast_dot.dense(x, self.head(), self.dtype)
        return y if b is None else y + b

    def _drop_fn(self, key: jax.Array | None, layer: jax.Array | int) -> Drop:
        def drop(site: int, x: jax.Array) -> jax.Array:
            rate = self.rates[site]
            if key is None or rate == 0.0:
                return x
            return dropout(key, 1 + SITES_PER_BLOCK * layer + site, rate, x)
        return drop

    def _apply_blocks(self, x: jax.Array, apply: Callable, xs: Any) -> tuple[jax.Array, Any]:
        """Run ``apply(params_l, x, layer, xs_l) -> (x, y_l)`` over the layers (scan or loop).

        Returns (x, ys stacked along a leading layer axis). With ``frozen_layers`` = k set on
        the model (gradual unfreezing sets it per step), the lowest k blocks' parameters are
        under ``stop_gradient`` and scanned apart from the rest: no backward pass through them
        when nothing below them trains (one scan over every block would run it, for zeros)."""
        graphdef, params = nnx.split(self.blocks)
        step = lambda p, x, l, xs_l: apply(nnx.merge(graphdef, p), x, l, xs_l)
        if self.remat == "block":
            step = jax.checkpoint(step, prevent_cse=not self.scan_layers)
        layer_ids = jnp.arange(self.num_layers, dtype=jnp.int32)
        frozen = getattr(self, "frozen_layers", 0)
        if self.scan_layers:
            run = lambda p, x, ids, xs: jax.lax.scan(lambda x, a: step(a[0], x, a[1], a[2]), x,
                                                     (p, ids, xs))
            if not 0 < frozen < self.num_layers:
                return run(params, x, layer_ids, xs)
            low = lambda a: jax.tree.map(lambda v: v[:frozen], a)
            high = lambda a: jax.tree.map(lambda v: v[frozen:], a)
            x, ys_low = run(jax.lax.stop_gradient(low(params)), x, layer_ids[:frozen], low(xs))
            x, ys_high = run(high(params), x, layer_ids[frozen:], high(xs))
            return x, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys_low, ys_high)
        ys = []
        for l in range(self.num_layers):
            take = lambda a: a[l]
            p_l = jax.tree.map(take, params)
            x, y = step(jax.lax.stop_gradient(p_l) if l < frozen else p_l, x, layer_ids[l],
                        jax.tree.map(take, xs))
            ys.append(y)
        return x, jax.tree.map(lambda *a: jnp.stack(a), *ys)

    def _run(self, tokens: jax.Array, resets: jax.Array | None, dropout_key: jax.Array | None,
             collect: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """tokens [B, T] -> (final x float32 [B, T, d], block outputs float32 [L, B, T, d] if
        ``collect`` else None)."""
        b, t = tokens.shape
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds model.max_len={self.max_len}")
        steps = jnp.arange(t, dtype=jnp.int32)
        if resets is None:
            positions, mask = jnp.broadcast_to(steps, (b, t)), None
        else:
            resets = resets.astype(bool)
            positions = steps - jax.lax.cummax(jnp.where(resets, steps, 0), axis=1)
            seg = jnp.cumsum(resets.astype(jnp.int32), axis=1)
            mask = ((steps[:, None] >= steps[None, :])[None]
                    & (seg[:, :, None] == seg[:, None, :]))[:, None]  # [B, 1, T, T]
        if dropout_key is not None:
            dropout_key = jnp.asarray(dropout_key)
        x = self._embed(tokens, positions)
        if dropout_key is not None and self.dropout > 0.0:
            x = dropout(dropout_key, 0, self.dropout, x)
        explicit = dropout_key is not None and self.rates[ATTN_PROBS] > 0.0
        on_cpu = fast_dot.on_cpu()
        full_mask = (jnp.tril(jnp.ones((t, t), bool))[None, None] if mask is None else mask)

        def apply(block: Block, x: jax.Array, layer: jax.Array, _: Any):
            drop = self._drop_fn(dropout_key, layer)

            def attend(q, k, v):
                if explicit:
                    return attn.explicit(q, k, v, full_mask, lambda p: drop(ATTN_PROBS, p)), None
                if on_cpu:  # its own backward, in XLA:CPU's fast forms (models/attention.py)
                    return attn.attention(q, k, v, mask), None
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None,
                                                    implementation=None), None

            x, _ = block(x, attend, drop, self.dtype)
            return x, (x if collect else None)

        x, hidden = self._apply_blocks(x, apply, None)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, hidden

    # ---- the LM interface ---------------------------------------------------------------
    def __call__(self, tokens: jax.Array, carry: Any = (), resets: jax.Array | None = None, *,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, tuple[()]]:
        """tokens int32 [B, T] (T <= max_len); carry ``()`` (ignored, returned); resets bool
        [B, T] start segments. ``dropout_key``: None (deterministic), one key, or per-row keys
        [B, 2]. Returns (logits float32 [B, T, V], ())."""
        x, _ = self._run(tokens, resets, dropout_key)
        return self._logits(x), ()

    def features(self, tokens: jax.Array, carry: Any = (), resets: jax.Array | None = None, *,
                 dropout_key: jax.Array | None = None, step_key: jax.Array | None = None
                 ) -> dict[str, Any]:
        """{"hidden": float32 [L, B, T, d] (each block's output; for pre-norm the last entry
        after the final LN), "carry": ()}; deterministic unless ``dropout_key`` (as
        ``__call__``'s; ``step_key`` unused: no per-pass masks)."""
        del step_key
        x, hidden = self._run(tokens, resets, dropout_key, collect=True)
        if self.final_norm is not None:
            hidden = hidden.at[-1].set(x)
        return {"hidden": hidden, "carry": ()}

    def init_decode(self, batch_size: int, max_length: int) -> DecodeState:
        """Empty KV cache (``kv_cache.empty``): {"k": [B, H, D, max_length], "v": [B, H,
        max_length, D], one array per layer (a tuple), a 2-byte compute dtype as its uint16
        bits; "pos": int32 scalar}. max_length must not exceed max_len."""
        if max_length > self.max_len:
            raise ValueError(f"cannot decode max_length={max_length} tokens: the model reads at "
                             f"most model.max_len={self.max_len} positions")
        return {**kv_cache.empty(self.num_layers, batch_size, self.heads,
                                 self.d_model // self.heads, max_length, self.dtype),
                "pos": jnp.zeros((), jnp.int32)}

    def prepare_decode(self) -> dict[str, Any]:
        """What ``decode_step`` reads, once per generated sequence: per layer the block's
        params (sliced) and matrices (weight norm applied, transposed for ``kv_cache.dense_t``)
        and the output matrix transposed ([V, d]), in the compute dtype (per token this took
        3x the step's own work: ``benchmarks/README.md``)."""
        graphdef, params = nnx.split(self.blocks)
        # All layers' matrices at once (vmapped over the stack), then sliced: per layer, the
        # 12-layer model's compile took 2.8 s for this alone, 12 copies of the same fusions.
        stacked = jax.vmap(lambda p: {k: jnp.swapaxes(w, 0, 1).astype(self.dtype) for k, w
                                      in nnx.merge(graphdef, p).matrices().items()})(params)
        layers = [{"state": jax.tree.map(lambda a, l=l: a[l], params),
                   "matrices_t": {k: w[l] for k, w in stacked.items()}}
                  for l in range(self.num_layers)]
        head_t = self.embedding[...] if self.tie_embeddings else self.head().T
        return {"layers": layers, "head_t": head_t.astype(self.dtype)}

    def decode_step(self, tokens: jax.Array, state: DecodeState, prepared: Any = None
                    ) -> tuple[jax.Array, DecodeState]:
        """tokens int32 [B] at position state["pos"] -> (logits float32 [B, V], state with
        this token's keys/values cached and pos + 1). ``prepared``: from ``prepare_decode``
        (None: prepared here, for this step only). Steps past max_length are undefined."""
        if prepared is None:
            prepared = self.prepare_decode()
        pos = state["pos"]
        x = self._embed(tokens[:, None], jnp.broadcast_to(pos, tokens.shape)[:, None])
        identity = lambda site, h: h
        graphdef = nnx.graphdef(self.blocks)
        cache = {"k": list(state["k"]), "v": list(state["v"])}
        for l, layer in enumerate(prepared["layers"]):
            def attend(q, k, v, l=l):
                out, cache["k"][l], cache["v"][l] = kv_cache.attend(
                    cache["k"][l], cache["v"][l], q, k, v, pos, self.dtype)
                return out, None
            x, _ = nnx.merge(graphdef, layer["state"])(x, attend, identity, self.dtype,
                                                       layer["matrices_t"])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (self._logits(x[:, 0], prepared["head_t"]),
                {"k": tuple(cache["k"]), "v": tuple(cache["v"]), "pos": pos + 1})


# ---- the model kind ---------------------------------------------------------------------
def _build(model_config: Any, vocab_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32
           ) -> TransformerLM:
    m = model_config
    return TransformerLM(vocab_size=vocab_size, layers=int(m.layers), d_model=int(m.d_model),
                         heads=int(m.heads), d_ff=int(m.d_ff), max_len=int(m.max_len),
                         norm=m.norm, positions=m.positions, dropout=float(m.dropout),
                         attn_dropout=float(m.attn_dropout), ff_dropout=float(m.ff_dropout),
                         weight_norm=bool(m.weight_norm), tie_embeddings=bool(m.tie_embeddings),
                         remat=m.remat, scan_layers=bool(m.scan_layers),
                         init=m.get("init", "fairseq"), dtype=dtype, rngs=rngs)


def _validate(model_config: Any, train_config: Any) -> None:
    m = model_config
    check_args(layers=m.layers, d_model=m.d_model, heads=m.heads, d_ff=m.d_ff,
               max_len=m.max_len, norm=m.norm, positions=m.positions, remat=m.remat,
               dropout=m.dropout, attn_dropout=m.attn_dropout, ff_dropout=m.ff_dropout,
               init=m.get("init", "fairseq"))
    for name in ("weight_norm", "tie_embeddings", "scan_layers"):
        if not isinstance(m[name], bool):
            raise ValueError(f"model.{name} must be a bool, got {m[name]!r}")
    cutoffs = m.get("adaptive_cutoffs", "")
    if cutoffs:  # its head is a full softmax: the logits would be raw scores, not adaptive
        raise ValueError(f"model.adaptive_cutoffs={cutoffs!r} is not supported by "
                         f"model.kind='transformer' (its output head is a full softmax); "
                         f"set --config.model.adaptive_cutoffs= or use a recurrent kind")
    seq_len = train_config.seq_len if train_config is not None else None
    if seq_len is not None and seq_len > m.max_len:
        raise ValueError(f"train.seq_len={seq_len} exceeds model.max_len={m.max_len} "
                         "(the longest sequence the transformer has positions for)")


def _trained_length(model_config: Any, train_config: Any) -> int | None:
    """Training reads the first ``longest`` positions (counted from the window's start or the
    last reset): learned ones past it keep their initial values, sinusoidal ones are never
    read in training (README: bits per token past it); None when that covers max_len."""
    if train_config is None:
        return None
    from lmscale.config_values import bptt_max
    from lmscale.data.variable_bptt import length_bounds  # bptt_max rounded down to a bucket
    longest = (length_bounds(bptt_max(train_config), train_config.get("bptt_bucket", 5))[1]
               if train_config.get("variable_bptt") else train_config.seq_len)
    return int(longest) if longest < model_config.max_len else None


def _flops(model_config: Any, vocab_size: int, seq_len: int = 1) -> int:
    """Forward FLOPs per token = 2 N + 4 L T d, training (forward + backward) = 3x that =
    6 N + 12 L T d.

    N = parameters of all matmuls: per block 4 d^2 (q, k, v, out) + 2 d d_ff (fc1, fc2),
    plus the output head d V (tied or not); not the embedding lookups, biases, LayerNorm,
    softmax or weight norm. 4 L T d: per token and layer, q.k over T keys (2 T d) and the
    probability-weighted sum of T values (2 T d), counting the full causal T x T square
    (the kernels compute it whole). T = ``seq_len``, L = layers, d = d_model.
    """
    layers, d, d_ff = int(model_config.layers), int(model_config.d_model), int(model_config.d_ff)
    n = layers * (4 * d * d + 2 * d * d_ff) + d * vocab_size
    return 2 * n + 4 * layers * seq_len * d


def _describe(m: Any) -> str:
    extra = "".join([" sinusoidal" if m.positions == "sinusoidal" else "",
                     " tied" if m.tie_embeddings else "",
                     " weight-norm" if m.weight_norm else "",
                     " gpt2-init" if m.get("init", "fairseq") == "gpt2" else ""])
    return (f"transformer {m.layers}x{m.d_model} heads {m.heads} ff {m.d_ff} "
            f"max_len {m.max_len} {m.norm}-norm{extra}")


register(ModelKind(name="transformer",
                   fields=("layers", "d_model", "heads", "d_ff", "max_len", "norm", "positions",
                           "tie_embeddings", "weight_norm", "init"),
                   build=_build, validate=_validate, flops_per_token=_flops,
                   recompute_flops_per_token=lambda m, seq_len: _flops(m, 0, seq_len),  # blocks
                   describe=_describe, trained_length=_trained_length,
                   settings={"attn_dropout": 0.0, "ff_dropout": 0.0, "scan_layers": True,
                             "init": "fairseq", "norm": "post", "positions": "learned"}))
