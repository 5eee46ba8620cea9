"""Long texts in fine-tuning: gradients through each text's last tokens only (``finetune.grad_tokens``).

Back-propagating through a whole text keeps every position's activations: 8 texts of 100k
characters took 6 GB at 128 units. With ``grad_tokens`` = K, a batch wider than K is read as
ULMFiT's "BPTT for text classification" does: each text's tokens before its last K are read
without gradient, K at a time with the state carried (memory bounded by B x K), and the
gradient flows through the last K only. The features are those of the whole text, as
prediction computes them: "last" is the final state, "mean"/"max"/"min" pool over every real token,
the earlier ones' contributions entering as constants.

To give every row the same split, the step lays the batch out right-aligned: each text ends at
the last column, the padding goes in front, and a reset at the text's first token starts it
from a zero state (so the padding read before it has no effect), in n x K columns
(n = ceil(W / K)). A model that reads a bounded context or carries no state (the
transformer) cannot read a text in pieces; ``check_grad_tokens`` refuses it.

Shapes: tokens int32 [B, W] right-padded as the data pipeline makes them (lengths [B]);
aligned arrays [B, n K]; features float32 [B, D] as ``Classifier.features``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmscale.config import ConfigError
from lmscale.messages import for_caller


def check_grad_tokens(grad_tokens: int, max_len: int | None, aux_lm_weight: float = 0.0,
                      carries_state: bool = True) -> None:
    """Refuses a negative ``finetune.grad_tokens``, a positive one for a model with a length
    limit or one that carries no state (nothing of one piece of a text reaches the next),
    and 1 with the auxiliary LM loss (it counts the targets inside each text's last K
    tokens: K - 1 of them)."""
    if grad_tokens == 1 and aux_lm_weight > 0:
        raise ConfigError("finetune.grad_tokens=1 leaves finetune.aux_lm_weight's loss no target "
                          "(it counts the next-token targets inside each text's last grad_tokens "
                          "tokens: grad_tokens - 1 a text); use grad_tokens >= 2, or "
                          "aux_lm_weight=0")
    if grad_tokens < 0:
        raise ConfigError(f"finetune.grad_tokens must be >= 0 (0 = the whole text), got {grad_tokens}")
    if grad_tokens and max_len is None and not carries_state:
        raise ConfigError(
            f"finetune.grad_tokens={grad_tokens} reads a text in pieces with the state carried; "
            "this model carries no state from one piece to the next (its carry is empty), so "
            "each piece would be read without the text before it: leave it at 0")
    if grad_tokens and max_len is not None:
        raise ConfigError(
            f"finetune.grad_tokens={grad_tokens} reads a text in pieces with the state carried; "
            f"this model reads at most {max_len} tokens at once and carries no state (a "
            "transformer): texts are cut to their last max_len tokens instead; leave it at 0")


def splits(width: int, grad_tokens: int) -> bool:
    """Whether a batch ``width`` tokens wide is read in pieces (``grad_tokens`` > 0 and < width)."""
    return 0 < grad_tokens < width


def right_aligned(x: jax.Array, lengths: jax.Array, width: int, fill: Any = 0) -> jax.Array:
    """x [B, W] holding each row's ``lengths[b]`` entries first -> [B, width] (width >= W)
    holding them last, ``fill`` in front."""
    shift = width - lengths[:, None]  # where each row's first entry goes
    source = jnp.arange(width)[None, :] - shift
    inside = source >= 0
    picked = jnp.take_along_axis(x, jnp.clip(source, 0, x.shape[1] - 1), axis=1)
    return jnp.where(inside, picked, jnp.asarray(fill, x.dtype))


def aligned_batch(tokens: jax.Array, lengths: jax.Array, lm_weights: jax.Array,
                  grad_tokens: int) -> dict[str, jax.Array]:
    """The right-aligned layout (module docstring): tokens, lm_weights, resets (bool: a text's
    first token) and valid (bool: a real token), each [B, n K]."""
    width = -(-tokens.shape[1] // grad_tokens) * grad_tokens
    start = (width - lengths)[:, None]
    columns = jnp.arange(width)[None, :]
    return {"tokens": right_aligned(tokens, lengths, width),
            "lm_weights": right_aligned(lm_weights, lengths, width),
            "resets": columns == start, "valid": columns >= start}


def _pool_parts(out: dict[str, Any], valid: jax.Array, states: tuple[str, ...]
                ) -> dict[str, dict[str, jax.Array]]:
    """Per state, the last layer's sum, max and min over the real tokens of a piece [B, F]."""
    parts = {}
    for s in states:
        x = out[s][-1]  # [B, K, F] float32
        v = valid[:, :, None]
        parts[s] = {"sum": jnp.sum(jnp.where(v, x, 0.0), axis=1),
                    "max": jnp.max(jnp.where(v, x, -jnp.inf), axis=1),
                    "min": jnp.min(jnp.where(v, x, jnp.inf), axis=1)}
    return parts


def read_prefix(classifier: Any, aligned: dict[str, jax.Array], grad_tokens: int, carry: Any,
                dropout_keys: jax.Array | None = None, step_key: jax.Array | None = None
                ) -> tuple[Any, dict[str, dict[str, jax.Array]]]:
    """Reads every piece but the last, K tokens at a time: (the carry entering the last piece,
    per state the sum, max and min over the real tokens read). Call it outside the gradient (or on
    parameters under ``stop_gradient``): its results are constants of the loss. The keys: as
    ``Classifier.features`` (the LM's locked masks hold over the whole text, every piece)."""
    rows, width = aligned["tokens"].shape
    pieces = width // grad_tokens - 1
    as_pieces = lambda a: jnp.swapaxes(a[:, :pieces * grad_tokens].reshape(
        rows, pieces, grad_tokens), 0, 1)  # [n - 1, B, K]
    xs = (as_pieces(aligned["tokens"]), as_pieces(aligned["resets"]), as_pieces(aligned["valid"]))
    lm, states = classifier.lm, classifier.states
    drop = classifier.lm_dropout_keys(dropout_keys, step_key)
    width_f = lm.feature_width
    init = {s: {"sum": jnp.zeros((rows, width_f), jnp.float32),
                "max": jnp.full((rows, width_f), -jnp.inf, jnp.float32),
                "min": jnp.full((rows, width_f), jnp.inf, jnp.float32)} for s in states}
    init = jax.tree.map(lambda z, c=jax.tree.leaves(carry)[0]: z + jnp.zeros_like(c[:, :1], z.dtype),
                        init)  # as device-varying as the carry (under shard_map)

    def body(acc: tuple[Any, Any], piece: tuple[jax.Array, ...]) -> tuple[tuple[Any, Any], None]:
        carry, parts = acc
        tokens, resets, valid = piece
        out = lm.features(tokens, carry, resets, **drop)
        new = _pool_parts(out, valid, states)
        parts = {s: {"sum": parts[s]["sum"] + new[s]["sum"],
                     "max": jnp.maximum(parts[s]["max"], new[s]["max"]),
                     "min": jnp.minimum(parts[s]["min"], new[s]["min"])} for s in states}
        return (out["carry"], parts), None

    (carry, parts), _ = jax.lax.scan(body, (carry, init), xs)
    return carry, parts


def last_piece(aligned: dict[str, jax.Array], grad_tokens: int) -> dict[str, jax.Array]:
    """The last K columns of each aligned array: the piece the gradient flows through."""
    return {k: v[:, -grad_tokens:] for k, v in aligned.items()}


def window_features(classifier: Any, piece: dict[str, jax.Array], lengths: jax.Array,
                    prefix: tuple[Any, dict[str, dict[str, jax.Array]]],
                    dropout_keys: jax.Array | None = None, step_key: jax.Array | None = None
                    ) -> jax.Array:
    """Features [B, D] of the whole texts (as ``Classifier.features``), the last piece read
    from ``read_prefix``'s carry: gradients flow through this piece only."""
    carry, parts = prefix
    out = classifier.lm.features(piece["tokens"], carry, piece["resets"],
                                 **classifier.lm_dropout_keys(dropout_keys, step_key))
    new = _pool_parts(out, piece["valid"], classifier.states)
    feats = []
    for s in classifier.states:
        for p in classifier.poolings:
            if p == "last":  # every text ends at the last column
                feats.append(out[s][-1][:, -1])
            elif p == "mean":
                total = parts[s]["sum"] + new[s]["sum"]
                feats.append(total / lengths[:, None].astype(total.dtype))
            elif p == "max":
                feats.append(jnp.maximum(parts[s]["max"], new[s]["max"]))
            else:
                feats.append(jnp.minimum(parts[s]["min"], new[s]["min"]))
    return jnp.concatenate(feats, axis=-1)


LONG_TEXT_TOKENS = 8192  # a longest training text past this gets the note below


def long_text_note(longest: int, grad_tokens: int, max_len: int | None,
                   carries_state: bool = True) -> str | None:
    """A start-up note when whole-text back-propagation meets long texts (memory grows with
    batch x longest text: 8 texts of 100k bytes took 6 GiB at 128 units), or when
    ``grad_tokens`` bounds nothing (no training text is longer), else None. A kind without
    a carry and without ``max_len`` (a plugin's) cannot read a text in pieces: the note names
    what it can lower."""
    if grad_tokens and longest <= grad_tokens:
        return (f"note: finetune.grad_tokens={grad_tokens} is not shorter than the longest "
                f"training text ({longest} tokens): no text's gradient is cut (the gradients "
                "of grad_tokens=0)")
    if grad_tokens or max_len is not None or longest <= LONG_TEXT_TOKENS:
        return None
    remedy = ("--config.finetune.grad_tokens=1024 back-propagates through each text's last "
              "1024 tokens only (README, Fine-tuning)" if carries_state else
              "this model carries no state, so it reads each text whole (finetune.grad_tokens "
              "needs a carry): a smaller --config.train.batch_size or shorter texts need less")
    return for_caller(
        f"note: the longest training text has {longest} tokens, and back-propagating through "
        "whole texts keeps every position's activations (memory grows with the batch times "
        f"its longest text); {remedy}")


def fits_what(batch: dict[str, Any], grad_tokens: int) -> str:
    """The fine-tuning step, as the host-memory check names it: its batch's shape."""
    rows, width = batch["tokens"].shape
    pieces = f", read in pieces of {grad_tokens}" if splits(width, grad_tokens) else ""
    return f"the fine-tuning step on {rows} texts {width} tokens wide{pieces}"


def fits_advice(grad_tokens: int, max_len: int | None, carries_state: bool = True) -> str:
    """What to lower when a fine-tuning step does not fit the host."""
    if max_len is not None:  # texts are already cut to max_len tokens
        return "lower train.batch_size; this step may be meant for a larger host"
    if not carries_state:  # read whole: grad_tokens is refused for it
        return ("lower train.batch_size or shorten the longest texts (this model carries no "
                "state, so it reads each text whole); this step may be meant for a larger host")
    pieces = (f"a smaller finetune.grad_tokens (now {grad_tokens})" if grad_tokens else
              "finetune.grad_tokens=1024 (long texts read in pieces, the gradient through "
              "their last 1024 tokens)")
    return (f"lower train.batch_size, set {pieces}, or shorten the longest texts; this step "
            "may be meant for a larger host")

