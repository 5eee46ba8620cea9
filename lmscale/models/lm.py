"""RecurrentLM: embedding -> stacked mLSTM/LSTM/QRNN layers -> decoder (character/word LM).

Internally time-major: tokens [B, T] are transposed once (cheap, int32), the layers scan over
[T, B, ...], and the logits are transposed back to [B, T, V]. The model holds parameters
only (no RNG or other nnx state): dropout draws from explicit keys, so
``nnx.split(model, nnx.Param)`` captures the whole model state.

AWD-LSTM regularizers (salesforce/awd-lstm-lm model.py; see ``regularizers``), all training
only: embedding dropout (``embed_dropout``, whole rows of the embedding matrix, per forward
pass), locked dropout on the embedding output (``input_dropout``), between layers
(``hidden_dropout``) and on the last output (``output_dropout``), weight drop on the
hidden-to-hidden matrices or the QRNN projection (``weight_drop``, per forward pass), and
the AR/TAR penalties (``ar_alpha``, ``tar_beta``) returned by :meth:`regularized_call` for
the training loss. ``dropout`` is the older per-element dropout between layers
(sentiment-discovery's). With ``tie_embeddings`` the decoder is the embedding matrix
(unmasked) and the last layer is ``embed`` wide (inner layers ``hidden``), as awd's. The
kinds' config fields, validation and FLOPs are in ``recurrent_kinds``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.config_values import ConfigError
from lmscale.models import fast_dot, regularizers
from lmscale.models.adaptive_loss import adaptive_nll_sums, adaptive_token_nll
from lmscale.models.adaptive_softmax import AdaptiveTails, adaptive_log_probs, parse_cutoffs
from lmscale.models.initializers import symmetric_uniform
from lmscale.models.qrnn import QRNNLayer
from lmscale.models.recurrent import LSTMLayer, MLSTMLayer

LAYER_TYPES = {"lstm": LSTMLayer, "mlstm": MLSTMLayer, "qrnn": QRNNLayer}
Carry = tuple[tuple[jax.Array, ...], ...]


# Tags of the masks (``jax.random.fold_in``). Row keys: the per-element dropout after layer l
# uses tag l (as before these options existed); the others are offset past any layer count.
_TAG_INPUT, _TAG_OUTPUT, _TAG_HIDDEN, _TAG_ZONEOUT = 100_000, 100_001, 200_000, 300_000
# Step key: the embedding mask uses tag 0, layer l's weight drop uses tag 1 + l.
_STEP_FROM_KEY = 0x5EED  # one key [2] without a step key: the step key is fold_in(key, this)


def _fold(keys: jax.Array | None, tag: int) -> jax.Array | None:
    """fold_in of one key [2] or of each row key [B, 2]."""
    if keys is None:
        return None
    if keys.ndim == 1:
        return jax.random.fold_in(keys, tag)
    return jax.vmap(lambda k: jax.random.fold_in(k, tag))(keys)


class RecurrentLM(nnx.Module):
    """Character/word-level recurrent language model (sentiment-discovery / AWD-LSTM / QRNN).

    Params: ``embedding.embedding`` [V, E]; ``layers[l]`` (recurrent.py, qrnn.py); untied:
    ``decoder.kernel`` [H, V] and ``decoder.bias`` [V]; tied: ``decoder_bias`` [V] only;
    adaptive softmax: ``tails`` (adaptive_softmax.py). Embedding and decoder are never
    weight-normalized.
    """

    def __init__(self, *, kind: str, vocab_size: int, embed: int, hidden: int, layers: int = 1,
                 dropout: float = 0.0, weight_norm: bool = True, dtype: Any = jnp.float32,
                 embed_dropout: float = 0.0, input_dropout: float = 0.0,
                 hidden_dropout: float = 0.0, output_dropout: float = 0.0,
                 weight_drop: float = 0.0, ar_alpha: float = 0.0, tar_beta: float = 0.0,
                 tie_embeddings: bool = False, adaptive_cutoffs: str = "",
                 qrnn_window: int = 2, qrnn_zoneout: float = 0.0,
                 qrnn_pooling: str = "sequential", remat_steps: int = 0,
                 two_biases: bool = False, io_init: str = "uniform", rngs: nnx.Rngs):
        if kind not in LAYER_TYPES:
            raise ValueError(f"unknown model.kind {kind!r}; expected one of {sorted(LAYER_TYPES)}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        rates = {"dropout": dropout, "embed_dropout": embed_dropout,
                 "input_dropout": input_dropout, "hidden_dropout": hidden_dropout,
                 "output_dropout": output_dropout, "weight_dropout": weight_drop,
                 "qrnn_zoneout": qrnn_zoneout}
        for name, rate in rates.items():
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {rate}")
        self.kind, self.vocab_size, self.hidden = kind, vocab_size, hidden
        self.dropout, self.dtype = float(dropout), dtype
        self.embed_dropout, self.input_dropout = float(embed_dropout), float(input_dropout)
        self.hidden_dropout, self.output_dropout = float(hidden_dropout), float(output_dropout)
        self.ar_alpha, self.tar_beta = float(ar_alpha), float(tar_beta)
        self.tied = bool(tie_embeddings)
        self.remat_steps = int(remat_steps)  # mlstm/lstm layers: recurrent.MLSTMLayer's
        self.two_biases = bool(two_biases)  # mlstm/lstm layers: b_ih + b_hh (recurrent.py)
        try:  # the vocabulary is known only now, from the data: a config error
            self.cutoffs = parse_cutoffs(adaptive_cutoffs, vocab_size)
        except ValueError as e:
            raise ConfigError(f"{e} (this data's tokenizer has {vocab_size} ids: lower the "
                              f"cut-offs, or set --config.model.adaptive_cutoffs= for a full "
                              f"softmax)") from None
        pytorch = io_init == "pytorch"  # else "uniform" (_validate checks the name)
        self.embedding = nnx.Embed(vocab_size, embed, dtype=dtype, rngs=rngs, embedding_init=(
            jax.nn.initializers.normal(1.0) if pytorch else symmetric_uniform(0.1)))
        # awd: inner layers `hidden` wide, the last `embed` wide when tied.
        self.sizes = tuple(embed if (self.tied and l == layers - 1) else hidden
                           for l in range(layers))
        self.layers = nnx.List([
            self._layer(l, embed if l == 0 else self.sizes[l - 1], weight_norm, weight_drop,
                        qrnn_window, qrnn_zoneout, qrnn_pooling, rngs)
            for l in range(layers)])
        top = self.sizes[-1]
        if self.tied:
            self.decoder_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
        else:
            self.decoder = nnx.Linear(top, vocab_size, dtype=dtype, kernel_init=symmetric_uniform(
                1.0 / top ** 0.5 if pytorch else 0.1), bias_init=jax.nn.initializers.zeros, rngs=rngs)
        if self.cutoffs:
            self.tails = AdaptiveTails(top, self.cutoffs)

    def _layer(self, l: int, in_features: int, weight_norm: bool, weight_drop: float,
               window: int, zoneout: float, pooling: str, rngs: nnx.Rngs) -> nnx.Module:
        size = self.sizes[l]
        if self.kind == "qrnn":  # awd-lstm-lm: window 2 on the first layer only
            return QRNNLayer(in_features, size, window=window if l == 0 else 1, zoneout=zoneout,
                             weight_drop=weight_drop, pooling=pooling, weight_norm=weight_norm,
                             dtype=self.dtype, rngs=rngs)
        return LAYER_TYPES[self.kind](in_features, size, weight_norm=weight_norm,
                                      weight_drop=weight_drop, remat_steps=self.remat_steps,
                                      two_biases=self.two_biases, dtype=self.dtype, rngs=rngs)

    feature_states = ("cell", "hidden")
    max_len = None  # reads any length: the state is carried

    @property
    def feature_width(self) -> int:
        """Width of the last layer (the features' F)."""
        return self.sizes[-1]

    @property
    def num_layers(self) -> int:
        """Layers ``features`` returns: the trailing layers as wide as the last (all of them
        unless tied with hidden != embed)."""
        n = 0
        for size in reversed(self.sizes):
            if size != self.sizes[-1]:
                break
            n += 1
        return n

    def initial_carry(self, batch_size: int) -> Carry:
        """One carry per layer: (h, c) float32 zeros [B, H] for (m)LSTM; (c,) or (c, x_prev)
        for the QRNN."""
        return tuple(layer.initial_carry(batch_size) for layer in self.layers)

    def init_decode(self, batch_size: int, max_length: int = 0) -> Carry:
        """The decode state is the carry (any length can be generated)."""
        return self.initial_carry(batch_size)

    def prepare_decode(self) -> tuple[Any, ...]:
        """Per layer, the weights ``decode_step`` reads, as the (m)LSTM's forward loop lays
        them out (``decode_weights``); None for a layer without (the QRNN's, whose step
        reads its weights as stored). Compute once, decode many tokens."""
        return tuple(layer.decode_weights() if hasattr(layer, "decode_weights") else None
                     for layer in self.layers)

    def decode_step(self, tokens: jax.Array, state: Carry, prepared: Any = None
                    ) -> tuple[jax.Array, Carry]:
        """tokens int32 [B] -> (logits float32 [B, V], next state); ``prepared``: from
        ``prepare_decode`` (None: prepared here, for this step only)."""
        if prepared is None:
            prepared = self.prepare_decode()
        hs, _, state, _, _ = self._run(tokens[:, None], state, None, None, None, False, prepared)
        return self._decode(hs)[:, 0], state

    def fix_unit(self, state: Carry, unit: int, value: float, which: str) -> Carry:
        """``state`` with unit ``unit`` of the last layer's cell or hidden state set to ``value``."""
        if which not in self.feature_states:
            raise ValueError(f"which must be one of {list(self.feature_states)}, got {which!r}")
        *lower, last = state
        return (*lower, self.layers[-1].fix_unit(tuple(last), unit, value, which))

    def _run(self, tokens: jax.Array, carry: Carry | None, resets: jax.Array | None,
             dropout_key: jax.Array | None, step_key: jax.Array | None, return_cells: bool,
             prepared: tuple[Any, ...] | None = None
             ) -> tuple[jax.Array, jax.Array, Carry, list[jax.Array], list[jax.Array | None]]:
        """Returns (dropped top output [T, B, H], undropped top output, new carry, per-layer
        hs, per-layer cs), time-major. ``prepared`` (decoding and featurizing: no dropout):
        per layer, weights from ``prepare_decode`` the layer's ``decode`` reads."""
        if carry is None:
            carry = self.initial_carry(tokens.shape[0])
        if len(carry) != len(self.layers):
            raise ValueError(f"carry has {len(carry)} layers, model has {len(self.layers)}")
        if dropout_key is not None:
            dropout_key = jnp.asarray(dropout_key)
            if step_key is None:  # trainer passes one; otherwise from the (first) key
                step_key = jax.random.fold_in(
                    dropout_key if dropout_key.ndim == 1 else dropout_key[0], _STEP_FROM_KEY)
        else:
            step_key = None
        tokens_tm = jnp.swapaxes(tokens, 0, 1)
        if step_key is not None and self.embed_dropout > 0.0:
            table = regularizers.embedding_dropout(self.embedding.embedding[...], step_key, 0,
                                                   self.embed_dropout)
            x = jnp.take(table, tokens_tm, axis=0).astype(self.dtype)  # [T, B, E]
        else:
            x = self.embedding(tokens_tm)  # [T, B, E]
        x = regularizers.locked_dropout(x, dropout_key, _TAG_INPUT, self.input_dropout)
        resets_tm = None if resets is None else jnp.swapaxes(resets, 0, 1)
        use_dropout = dropout_key is not None and self.dropout > 0.0
        new_carry, all_hs, all_cs = [], [], []
        for l, (layer, layer_carry) in enumerate(zip(self.layers, carry)):
            if prepared is not None and prepared[l] is not None:
                x, c_l, cs = layer.decode(x, tuple(layer_carry), prepared[l], resets_tm,
                                          return_cells)
            else:
                x, c_l, cs = layer.scan_time_major(
                    x, tuple(layer_carry), resets_tm, return_cells=return_cells,
                    step_key=None if step_key is None else jax.random.fold_in(step_key, 1 + l),
                    row_keys=_fold(dropout_key, _TAG_ZONEOUT + l))
            new_carry.append(c_l)
            all_hs.append(x)
            all_cs.append(cs)
            if l + 1 < len(self.layers):
                if use_dropout:
                    keep = 1.0 - self.dropout
                    mask = _dropout_mask(dropout_key, l, keep, x.shape)
                    x = jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))
                x = regularizers.locked_dropout(x, dropout_key, _TAG_HIDDEN + l,
                                                self.hidden_dropout)
        top = x
        x = regularizers.locked_dropout(x, dropout_key, _TAG_OUTPUT, self.output_dropout)
        return x, top, tuple(new_carry), all_hs, all_cs

    def _decode(self, hs: jax.Array) -> jax.Array:
        """Top output [T, B, H] -> logits (or, with cut-offs, log-probs) float32 [B, T, V]."""
        dt = self.dtype
        # Time-major matmul with a float32 result (``fast_dot.dense``: its fast path and
        # backward for 2-byte dtypes), then [T, B, V] -> [B, T, V] (a transposing batched
        # form, "tbh,hv->btv", with a float32 result of bfloat16 operands is not supported by
        # the XLA CPU backend; the V-wide logits are the cheaper transpose).
        words, bias = self._decoder_weights()
        logits = fast_dot.dense(hs, words, dt, w_transposed=self.tied) + bias
        if self.cutoffs:
            logits = adaptive_log_probs(logits, self.tails(hs.astype(dt)), self.cutoffs)
        return jnp.swapaxes(logits, 0, 1)

    def _decoder_weights(self) -> tuple[jax.Array, jax.Array]:
        """(word vectors, bias [V]): tied, the unmasked embedding matrix [V, E] (used
        transposed); else the decoder's kernel [H, V]."""
        if self.tied:
            return self.embedding.embedding[...], self.decoder_bias[...]
        return self.decoder.kernel[...], self.decoder.bias[...]

    def __call__(self, tokens: jax.Array, carry: Carry | None, resets: jax.Array | None = None,
                 *, dropout_key: jax.Array | None = None, step_key: jax.Array | None = None
                 ) -> tuple[jax.Array, Carry]:
        """tokens int32 [B, T]; carry from ``initial_carry`` (None = zeros); resets bool [B, T].

        Dropout only when ``dropout_key`` is given (training): one key, or one key per row
        ([B, 2], so a row's masks do not depend on the batch it is in); ``step_key`` [2]: the
        per-forward-pass masks (embedding dropout, weight drop; default: from
        ``dropout_key``). Returns (logits float32 [B, T, V] — log-probabilities with
        adaptive cut-offs —, new carry float32).
        """
        logits, new_carry, _ = self.regularized_call(tokens, carry, resets,
                                                     dropout_key=dropout_key, step_key=step_key)
        return logits, new_carry

    def regularized_call(self, tokens: jax.Array, carry: Carry | None,
                         resets: jax.Array | None = None, *, dropout_key: jax.Array | None = None,
                         step_key: jax.Array | None = None
                         ) -> tuple[jax.Array, Carry, jax.Array | None]:
        """As ``__call__``, plus the AR/TAR penalty per row float32 [B] (None when
        ``ar_alpha`` and ``tar_beta`` are 0): AR on the last layer's dropped output, TAR on
        its undropped output; the batch's penalty is the mean over rows."""
        hs, top, new_carry, _, _ = self._run(tokens, carry, resets, dropout_key, step_key, False)
        return self._decode(hs), new_carry, self._penalty(hs, top)

    def _penalty(self, hs: jax.Array, top: jax.Array) -> jax.Array | None:
        if self.ar_alpha > 0.0 or self.tar_beta > 0.0:
            return (regularizers.activation_penalty(hs, self.ar_alpha)
                    + regularizers.temporal_penalty(top, self.tar_beta))
        return None

    def adaptive_loss(self, tokens: jax.Array, carry: Carry | None, resets: jax.Array | None,
                      targets: jax.Array, weights: jax.Array, *,
                      dropout_key: jax.Array | None = None, step_key: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array, Carry, jax.Array | None]:
        """With adaptive cut-offs: as ``regularized_call``, the targets' summed NLL and count
        (float32) in place of the log-probabilities, without forming the V-wide logits
        (``adaptive_loss.py``). targets int [B, T], weights [B, T]."""
        hs, top, new_carry, _, _ = self._run(tokens, carry, resets, dropout_key, step_key, False)
        h, softmax, flat = self._adaptive_inputs(hs)
        nats, count = adaptive_nll_sums(h, *softmax, flat(targets), flat(weights), self.dtype,
                                        words_transposed=self.tied)
        return nats, count, new_carry, self._penalty(hs, top)

    def adaptive_token_nll(self, tokens: jax.Array, carry: Carry | None,
                           resets: jax.Array | None, targets: jax.Array,
                           counted: jax.Array | None = None) -> tuple[jax.Array, Carry]:
        """With adaptive cut-offs, scoring (no dropout, no gradient): (each target's NLL
        float32 [B, T], new carry), without forming the V-wide logits (``adaptive_loss.py``);
        targets int [B, T]; ``counted`` [B, T] (optional): the targets wanted, 0 for the
        others (their tail clusters not formed)."""
        hs, _, new_carry, _, _ = self._run(tokens, carry, resets, None, None, False)
        h, softmax, flat = self._adaptive_inputs(hs)
        nll = adaptive_token_nll(h, *softmax, flat(targets), self.dtype, words_transposed=self.tied,
                                 counted=None if counted is None else flat(counted))
        return jnp.swapaxes(nll.reshape(hs.shape[:2]), 0, 1), new_carry

    def _adaptive_inputs(self, hs: jax.Array) -> tuple[jax.Array, tuple[Any, ...], Any]:
        """What ``adaptive_loss.py`` reads of a forward pass: the output states [T * B, H]
        (time-major rows), the softmax (words, bias, tail vectors, tail bias, cut-offs), and
        ``flat``: [B, T] -> [T * B] in the same row order."""
        steps, rows, width = hs.shape
        flat = lambda x: jnp.swapaxes(x, 0, 1).reshape(steps * rows)  # noqa: E731
        softmax = (*self._decoder_weights(), self.tails.tail_vectors[...],
                   self.tails.tail_bias[...], self.cutoffs)
        return hs.reshape(steps * rows, width), softmax, flat

    def features(self, tokens: jax.Array, carry: Carry | None,
                 resets: jax.Array | None = None, prepared: tuple[Any, ...] | None = None, *,
                 dropout_key: jax.Array | None = None, step_key: jax.Array | None = None
                 ) -> dict[str, Any]:
        """Per-layer states for featurization (no decoder; dropout only with ``dropout_key``
        and ``step_key`` as in ``__call__``: fine-tuning with ``finetune.lm_dropout``).

        Returns {"hidden": [L, B, T, H], "cell": [L, B, T, H] (float32), "carry": new carry},
        L = ``num_layers`` (the trailing layers as wide as the last). The final cell state of
        a text is ``cell[-1, :, -1]``. ``prepared``: from ``prepare_decode``, made once for
        many calls (else weight norm and layouts are redone in each).
        """
        _, _, new_carry, all_hs, all_cs = self._run(tokens, carry, resets, dropout_key, step_key,
                                                    True, prepared)
        to_btf = lambda a: jnp.swapaxes(a.astype(jnp.float32), 0, 1)
        n = self.num_layers
        return {"hidden": jnp.stack([to_btf(h) for h in all_hs[-n:]]),
                "cell": jnp.stack([to_btf(c) for c in all_cs[-n:]]),
                "carry": new_carry}


def _dropout_mask(key: jax.Array, layer: int, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """Keep-mask [T, B, H] after ``layer``, from one key or from per-row keys [B, 2]."""
    keep = jnp.float32(keep)  # JAX_ENABLE_X64: a Python float drew float64 uniforms (other masks)
    if key.ndim == 1:
        return jax.random.bernoulli(jax.random.fold_in(key, layer), keep, shape)
    steps, _, width = shape
    per_row = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, layer), keep,
                                                      (steps, width)))(key)  # [B, T, H]
    return jnp.swapaxes(per_row, 0, 1)
