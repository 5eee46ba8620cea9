"""RecurrentLM: embedding -> stacked mLSTM/LSTM layers -> linear decoder (character-level LM).

Internally time-major: tokens [B, T] are transposed once (cheap, int32), the layers scan over
[T, B, ...], and the logits are transposed back to [B, T, V]. The model holds parameters
only (no RNG or other nnx state): dropout draws from an explicit ``dropout_key``, so
``nnx.split(model, nnx.Param)`` captures the whole model state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.initializers import symmetric_uniform
from lmscale.models.recurrent import LSTMLayer, MLSTMLayer
from lmscale.models.registry import ModelKind, register

LAYER_TYPES = {"lstm": LSTMLayer, "mlstm": MLSTMLayer}
Carry = tuple[tuple[jax.Array, jax.Array], ...]


class RecurrentLM(nnx.Module):
    """Character/byte-level recurrent language model (sentiment-discovery architecture).

    Params: ``embedding.embedding`` [V, E]; ``layers[l]`` (see recurrent.py); ``decoder.kernel``
    [H, V] and ``decoder.bias`` [V]. Embedding and decoder are never weight-normalized.
    """

    def __init__(self, *, kind: str, vocab_size: int, embed: int, hidden: int, layers: int = 1,
                 dropout: float = 0.0, weight_norm: bool = True, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if kind not in LAYER_TYPES:
            raise ValueError(f"unknown model.kind {kind!r}; expected one of {sorted(LAYER_TYPES)}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.kind, self.vocab_size, self.hidden = kind, vocab_size, hidden
        self.dropout, self.dtype = float(dropout), dtype
        self.embedding = nnx.Embed(vocab_size, embed, dtype=dtype,
                                   embedding_init=symmetric_uniform(0.1), rngs=rngs)
        layer_cls = LAYER_TYPES[kind]
        self.layers = nnx.List([
            layer_cls(embed if l == 0 else hidden, hidden, weight_norm=weight_norm, dtype=dtype,
                      rngs=rngs)
            for l in range(layers)])
        self.decoder = nnx.Linear(hidden, vocab_size, dtype=dtype,
                                  kernel_init=symmetric_uniform(0.1),
                                  bias_init=jax.nn.initializers.zeros, rngs=rngs)

    feature_states = ("cell", "hidden")
    max_len = None  # reads any length: the state is carried

    @property
    def feature_width(self) -> int:
        return self.hidden

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def initial_carry(self, batch_size: int) -> Carry:
        """One (h, c) per layer, float32 zeros [B, H]."""
        return tuple(layer.initial_carry(batch_size) for layer in self.layers)

    def init_decode(self, batch_size: int, max_length: int = 0) -> Carry:
        """The decode state is the carry (any length can be generated)."""
        return self.initial_carry(batch_size)

    def decode_step(self, tokens: jax.Array, state: Carry) -> tuple[jax.Array, Carry]:
        """tokens int32 [B] -> (logits float32 [B, V], next state)."""
        logits, state = self(tokens[:, None], state)
        return logits[:, 0], state

    def fix_unit(self, state: Carry, unit: int, value: float, which: str) -> Carry:
        """``state`` with unit ``unit`` of the last layer's cell or hidden state set to ``value``."""
        *lower, (h, c) = state
        if which == "cell":
            c = c.at[:, unit].set(value)
        elif which == "hidden":
            h = h.at[:, unit].set(value)
        else:
            raise ValueError(f"which must be one of {list(self.feature_states)}, got {which!r}")
        return (*lower, (h, c))

    def _run(self, tokens: jax.Array, carry: Carry | None, resets: jax.Array | None,
             dropout_key: jax.Array | None, return_cells: bool
             ) -> tuple[jax.Array, Carry, list[jax.Array], list[jax.Array | None]]:
        """Returns (top hs [T, B, H], new carry, per-layer hs, per-layer cs), time-major."""
        if carry is None:
            carry = self.initial_carry(tokens.shape[0])
        if len(carry) != len(self.layers):
            raise ValueError(f"carry has {len(carry)} layers, model has {len(self.layers)}")
        x = self.embedding(jnp.swapaxes(tokens, 0, 1))  # [T, B, E]
        resets_tm = None if resets is None else jnp.swapaxes(resets, 0, 1)
        use_dropout = dropout_key is not None and self.dropout > 0.0
        new_carry, all_hs, all_cs = [], [], []
        for l, (layer, layer_carry) in enumerate(zip(self.layers, carry)):
            x, c_l, cs = layer.scan_time_major(x, tuple(layer_carry), resets_tm,
                                               return_cells=return_cells)
            new_carry.append(c_l)
            all_hs.append(x)
            all_cs.append(cs)
            if use_dropout and l + 1 < len(self.layers):
                keep = 1.0 - self.dropout
                mask = _dropout_mask(dropout_key, l, keep, x.shape)
                x = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))
        return x, tuple(new_carry), all_hs, all_cs

    def __call__(self, tokens: jax.Array, carry: Carry | None, resets: jax.Array | None = None,
                 *, dropout_key: jax.Array | None = None) -> tuple[jax.Array, Carry]:
        """tokens int32 [B, T]; carry from ``initial_carry`` (None = zeros); resets bool [B, T].

        Dropout between layers only when ``dropout_key`` is given (training): one key, or one
        key per row ([B, 2], so a row's masks do not depend on the batch it is in); otherwise
        deterministic. Returns (logits float32 [B, T, V], new carry float32).
        """
        hs, new_carry, _, _ = self._run(tokens, carry, resets, dropout_key, False)
        dt = self.dtype
        # Time-major matmul with float32 accumulation/output, then [T, B, V] -> [B, T, V]
        # (the transposing form "tbh,hv->btv" with a float32 output of bfloat16 operands is
        # not supported by the XLA CPU backend; the V-wide logits are the cheaper transpose).
        logits = jnp.einsum("tbh,hv->tbv", hs.astype(dt), self.decoder.kernel[...].astype(dt),
                            preferred_element_type=jnp.promote_types(dt, jnp.float32))
        logits = logits + self.decoder.bias[...]
        return jnp.swapaxes(logits, 0, 1), new_carry

    def features(self, tokens: jax.Array, carry: Carry | None,
                 resets: jax.Array | None = None) -> dict[str, Any]:
        """Per-layer states for featurization (no dropout, no decoder).

        Returns {"hidden": [L, B, T, H], "cell": [L, B, T, H] (float32), "carry": new carry}.
        The final cell state of a text is ``cell[-1, :, -1]`` (or ``carry[-1][1]``).
        """
        _, new_carry, all_hs, all_cs = self._run(tokens, carry, resets, None, True)
        to_btf = lambda a: jnp.swapaxes(a.astype(jnp.float32), 0, 1)
        return {"hidden": jnp.stack([to_btf(h) for h in all_hs]),
                "cell": jnp.stack([to_btf(c) for c in all_cs]),
                "carry": new_carry}


def _dropout_mask(key: jax.Array, layer: int, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """Keep-mask [T, B, H] after ``layer``, from one key or from per-row keys [B, 2]."""
    if key.ndim == 1:
        return jax.random.bernoulli(jax.random.fold_in(key, layer), keep, shape)
    steps, _, width = shape
    per_row = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, layer), keep,
                                                      (steps, width)))(key)  # [B, T, H]
    return jnp.swapaxes(per_row, 0, 1)


def _build(model_config: Any, vocab_size: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32
           ) -> RecurrentLM:
    return RecurrentLM(kind=model_config.kind, vocab_size=vocab_size, embed=int(model_config.embed),
                       hidden=int(model_config.hidden), layers=int(model_config.layers),
                       dropout=float(model_config.dropout),
                       weight_norm=bool(model_config.weight_norm), dtype=dtype, rngs=rngs)


def _validate(model_config: Any, train_config: Any) -> None:
    for name in ("embed", "hidden", "layers"):
        value = model_config[name]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if not 0.0 <= model_config.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {model_config.dropout}")


def _flops(model_config: Any, vocab_size: int, seq_len: int = 1) -> int:
    """Forward matmul FLOPs per token (2 per multiply-add): recurrent layers + decoder.

    The embedding is a lookup (no FLOPs); gate nonlinearities, weight norm (once per call,
    not per token) and other elementwise work are ignored; ``seq_len`` does not matter. mLSTM
    layer with input I, hidden H: I*4H + I*H + H*H + H*4H multiply-adds; LSTM: I*4H + H*4H;
    decoder: H*V. Training (forward + backward) is about 3x this.
    """
    kind, hidden, embed = model_config.kind, int(model_config.hidden), int(model_config.embed)
    macs = hidden * vocab_size
    for l in range(int(model_config.layers)):
        i = embed if l == 0 else hidden
        macs += i * 4 * hidden + hidden * 4 * hidden
        if kind == "mlstm":
            macs += i * hidden + hidden * hidden
    return 2 * macs


def _describe(m: Any) -> str:
    return f"{m.kind} hidden {m.hidden} embed {m.embed} layers {m.layers}"


for _name in LAYER_TYPES:
    register(ModelKind(name=_name, fields=("embed", "hidden", "layers", "weight_norm"),
                       build=_build, validate=_validate, flops_per_token=_flops,
                       describe=_describe))
