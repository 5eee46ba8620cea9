"""The classifier: any lmscale LM with a classification head on pooled features of its states.

Features of a text (each row read from position 0 with a fresh zero carry, padded at the
end; in training steps with the LM's own dropouts times ``finetune.lm_dropout``, ULMFiT's
drop_mult, when > 0): for each LM state in ``states`` ("cell", "hidden", ...: the model's
``feature_states``) and each pooling in ``poolings`` — "last" (the state after the last real
token: the final hidden or cell state; sentiment-discovery's fine-tuning takes the one before
it, README "Fine-tuning"), "mean", "max" or "min" over the real tokens — the last
layer's [B, F] vector, concatenated to [B, len(states) * len(poolings) * F]. The head is a
linear layer or an MLP (hidden widths, activation, dropout) after a LayerNorm of the
features, to K outputs: logits of a softmax (single-label) or of one sigmoid per class
(multi-label). Parameters: ``lm`` (the LM's own) and ``head``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.config import ConfigError
from lmscale.models import build_model, built_in_one_program
from lmscale.models.param_paths import path_names
from lmscale.models.registry import with_dropouts_scaled

POOLINGS = ("last", "mean", "max", "min")  # as the transfer's (sentiment-discovery's concat-min)
LM_DROPOUT_TAG = 0x4C4D  # folded into a row's key for the LM's masks (the head's use the key)
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh}


def pool(x: jax.Array, lengths: jax.Array, pooling: str) -> jax.Array:
    """x float32 [B, T, F], lengths int32 [B] (>= 1) -> [B, F] over each row's real tokens."""
    valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
    if pooling == "last":
        return jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        return jnp.sum(jnp.where(valid, x, 0.0), axis=1) / lengths[:, None].astype(x.dtype)
    if pooling == "max":
        return jnp.max(jnp.where(valid, x, -jnp.inf), axis=1)
    if pooling == "min":
        return jnp.min(jnp.where(valid, x, jnp.inf), axis=1)
    raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")


class Head(nnx.Module):
    """Linear or MLP: [B, D] -> logits float32 [B, K]; dropout on its inputs and hidden layers."""

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int] = (),
                 activation: str = "relu", dropout: float = 0.0, *, rngs: nnx.Rngs) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"head activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
        widths = [in_dim, *hidden, num_classes]
        # LM states differ in scale (a cell state grows with the text): normalized per text.
        self.norm = nnx.LayerNorm(in_dim, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.activation, self.dropout = activation, float(dropout)

    def __call__(self, x: jax.Array, dropout_keys: jax.Array | None = None) -> jax.Array:
        """x [B, D]; ``dropout_keys`` None (deterministic) or one key per row [B, 2]."""
        x = self.norm(x.astype(jnp.float32))
        for i, layer in enumerate(self.layers):
            if dropout_keys is not None and self.dropout > 0.0:
                keep = jnp.float32(1.0 - self.dropout)  # float32 uniforms under x64 too
                mask = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, i), keep,
                                                               x.shape[1:]))(dropout_keys)
                x = jnp.where(mask, x / keep, 0.0)
            x = layer(x)
            if i + 1 < len(self.layers):
                x = ACTIVATIONS[self.activation](x)
        return x.astype(jnp.float32)


class Classifier(nnx.Module):
    """``lm`` (an lmscale LM) + ``head``; see the module docstring."""

    def __init__(self, lm: nnx.Module, num_classes: int, *, states: Sequence[str] = (),
                 poolings: Sequence[str] = ("last",), hidden: Sequence[int] = (),
                 activation: str = "relu", dropout: float = 0.0, lm_dropout: bool = False,
                 rngs: nnx.Rngs) -> None:
        states = tuple(states) or lm.feature_states[:1]
        check_choices("finetune.state", states, lm.feature_states, ",".join(states),
                      _states_note(lm.feature_states))
        check_choices("finetune.pooling", poolings, POOLINGS, ",".join(poolings))
        self.lm = lm
        self.lm_dropout = bool(lm_dropout)  # training reads the texts with the LM's dropouts
        self.states, self.poolings = states, tuple(poolings)
        in_dim = len(states) * len(self.poolings) * lm.feature_width
        self.head = Head(in_dim, num_classes, hidden, activation, dropout, rngs=rngs)

    def features(self, tokens: jax.Array, lengths: jax.Array, carry: Any = None,
                 dropout_keys: jax.Array | None = None, step_key: jax.Array | None = None
                 ) -> jax.Array:
        """tokens int32 [B, T] (each row a text from position 0, padded), lengths [B] -> [B, D].

        ``carry``: the LM's zero carry (None: ``initial_carry``; under shard_map pass it
        device-varying). ``dropout_keys`` [B, 2] and ``step_key`` [2] (training): the LM's own
        dropouts when it was built with them (``lm_dropout``), else deterministic."""
        carry = self.lm.initial_carry(tokens.shape[0]) if carry is None else carry
        out = self.lm.features(tokens, carry, **self.lm_dropout_keys(dropout_keys, step_key))
        return jnp.concatenate([pool(out[s][-1], lengths, p)
                                for s in self.states for p in self.poolings], axis=-1)

    def lm_dropout_keys(self, dropout_keys: jax.Array | None, step_key: jax.Array | None
                        ) -> dict[str, jax.Array | None]:
        """The LM's dropout keys from the rows' (masks apart from the head's), or none."""
        if dropout_keys is None or not self.lm_dropout:
            return {}
        rows = jax.vmap(lambda k: jax.random.fold_in(k, LM_DROPOUT_TAG))(dropout_keys)
        return {"dropout_key": rows, "step_key": step_key}

    def __call__(self, tokens: jax.Array, lengths: jax.Array,
                 dropout_keys: jax.Array | None = None, carry: Any = None,
                 step_key: jax.Array | None = None) -> jax.Array:
        """Logits float32 [B, K]."""
        return self.head(self.features(tokens, lengths, carry, dropout_keys, step_key),
                         dropout_keys)

    def lm_logits(self, tokens: jax.Array, carry: Any = None,
                  resets: jax.Array | None = None) -> jax.Array:
        """Next-token logits float32 [B, T, V] of the LM on the texts (None: a fresh zero carry)."""
        carry = self.lm.initial_carry(tokens.shape[0]) if carry is None else carry
        logits, _ = self.lm(tokens, carry, resets)
        return logits


def _split(spec: Any) -> tuple[str, ...]:
    """A comma-separated setting's items ("last, mean" -> ("last", "mean"))."""
    return tuple(x.strip() for x in str(spec).split(",") if x.strip())


def head_widths(spec: Any) -> tuple[int, ...]:
    """``finetune.head_hidden`` ("512,256") as widths; ConfigError unless positive integers."""
    try:
        widths = tuple(int(h) for h in _split(spec))
    except ValueError:
        widths = (0,)
    if any(w <= 0 for w in widths):
        raise ConfigError(f'finetune.head_hidden must be comma-separated positive integers '
                          f'(e.g. "256" or "512,256"), got {spec!r}')
    return widths


def check_choices(key: str, items: Sequence[str], allowed: Sequence[str], given: str,
                  note: str = "", required: bool = False) -> None:
    """ConfigError naming ``key`` (a comma list, as ``given``) unless every one of its
    ``items`` is ``allowed`` (and, ``required``, there is one), each once ("last,last" gave
    the head the same feature twice)."""
    if (required and not items) or any(i not in allowed for i in items):
        raise ConfigError(f"{key} must be one or more of {', '.join(allowed)} "
                          f"(comma-separated{note}), got {given!r}")
    twice = sorted({i for i in items if list(items).count(i) > 1})
    if twice:
        raise ConfigError(f"{key}={given!r} names {', '.join(twice)} twice: each feature once")


def _states_note(feature_states: Sequence[str]) -> str:
    return f": this model's states; \"\" = {feature_states[0]}"


def check_head_settings(finetune: Any, feature_states: Sequence[str] | None = None) -> None:
    """Refuses ``finetune.pooling``, ``head_hidden``, ``head_activation``, ``head_dropout`` and,
    given the LM's ``feature_states``, ``state`` that ``build_classifier`` cannot take: a
    ConfigError naming the setting (flax's module constructor raised it as a traceback)."""
    check_choices("finetune.pooling", _split(finetune.pooling), POOLINGS, finetune.pooling,
                  required=True)
    head_widths(finetune.head_hidden)
    if finetune.head_activation not in ACTIVATIONS:
        raise ConfigError(f"finetune.head_activation must be one of "
                          f"{', '.join(sorted(ACTIVATIONS))}, got {finetune.head_activation!r}")
    if not 0.0 <= finetune.head_dropout < 1.0:
        raise ConfigError(f"finetune.head_dropout must be in [0, 1), got {finetune.head_dropout!r}")
    if feature_states is not None:
        check_choices("finetune.state", _split(finetune.state), feature_states, finetune.state,
                      _states_note(feature_states))


def build_classifier(lm: nnx.Module, num_classes: int, finetune: Any, seed: int) -> Classifier:
    """The classifier that ``config.finetune`` describes, around ``lm``; the head from ``seed``."""
    return Classifier(lm, num_classes, states=_split(finetune.state),
                      poolings=_split(finetune.pooling), hidden=head_widths(finetune.head_hidden),
                      activation=finetune.head_activation, dropout=finetune.head_dropout,
                      lm_dropout=finetune.lm_dropout > 0, rngs=nnx.Rngs(seed + 7))


def init_classifier(config: Any, vocab_size: int, num_classes: int, dtype: Any = jnp.float32, *,
                    abstract: bool = False, lm_params: Any = None) -> tuple[nnx.GraphDef, Any, int]:
    """(graphdef, ``nnx.Param`` state, the LM's max_len) of the classifier ``config.finetune``
    describes on ``config.model``, matmuls in ``dtype``: initialized from ``config.seed`` by one
    jitted program, or with ``abstract`` shapes only (what a saved classifier is read into).

    ``lm_params``: a trained LM's parameters (host arrays) to start from. They go into the
    program as inputs and come out as the "lm" leaves, so the program computes only the head:
    XLA drops the LM's random draws, which nothing returns (the SST demo's 512-unit classifier:
    its initialization compiled in 0.3 s instead of 1.5). A leaf whose shape differs from the
    model's raises ConfigError naming it."""
    def init_classifier_params(*inputs: Any) -> tuple[tuple[nnx.GraphDef, int], Any]:
        """``inputs``: () or (the trained LM's parameters, traced)."""
        # The LM's dropout rates times finetune.lm_dropout (0: none; its features deterministic)
        lm = build_model(with_dropouts_scaled(config.model, config.finetune.lm_dropout),
                         vocab_size, rngs=nnx.Rngs(config.seed), dtype=dtype)
        graphdef, params = nnx.split(build_classifier(lm, num_classes, config.finetune, config.seed),
                                     nnx.Param)
        if inputs:
            params = with_lm_params(params, inputs[0])
        return (graphdef, lm.max_len), params

    inputs = () if lm_params is None or abstract else (lm_params,)
    (graphdef, max_len), params = built_in_one_program(init_classifier_params, *inputs,
                                                       abstract=abstract)
    return graphdef, params, max_len


def with_lm_params(params: Any, lm_params: Any) -> Any:
    """``params`` with every "lm" leaf replaced by ``lm_params``'s leaf at the same path."""
    saved = {path_names(path): x for path, x in jax.tree_util.tree_flatten_with_path(lm_params)[0]}

    def pick(path: tuple, x: Any) -> Any:
        if path_names(path[:1]) != ("lm",):
            return x
        y = saved[path_names(path[1:])]
        if y.shape != x.shape:
            raise ConfigError(f"LM parameter {path_names(path)} has shape {y.shape}, expected {x.shape}")
        return y
    return jax.tree_util.tree_map_with_path(pick, params)
