"""Featurization: run a trained LM over texts and pool its states into one vector per text.

The default feature is the final cell state of the last layer, taken *after* the text's
last character (the sentiment-neuron recipe; sentiment-discovery's mLSTM took the state
before it). Options: the hidden state instead, mean / max / min pooling over the text,
and all layers concatenated.

Speed: texts are sorted by length and batched, so padding is small; each batch runs in
chunks of ``chunk`` characters through one jitted function (compiled once per shape),
carrying the RNN state and updating running pools, so memory does not grow with text
length. Rows are sharded over all devices of the run's mesh, like training.

A model that carries no state (the transformer) reads each text whole, in one chunk; texts
longer than its ``max_len`` tokens are cut to their last ``max_len`` tokens (the final
output then still sees the most context). Its feature is the final layer's output
("hidden"), at the last real token or pooled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM

POOLINGS = ("last", "mean", "max", "min")


def preprocess_texts(lm: TrainedLM, texts: Sequence[str]) -> list[str]:
    """The texts as the LM reads them: with its preprocessing, if it names one (an imported
    OpenAI model frames each text as '\\n ' + text + ' ', as the original did)."""
    from lmscale.pretrained.preprocess import preprocessor_for
    prep = preprocessor_for(lm.derived)
    return [prep(t) for t in texts]


def encode_texts(lm: TrainedLM, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each (preprocessed) text with the LM's own tokenizer; empty texts are an error."""
    for i, t in enumerate(texts):
        if not t:
            raise DataError(f"text {i} is empty: it has no state to take features from")
    ids = [lm.tokenizer.encode(t) for t in preprocess_texts(lm, texts)]
    for i, x in enumerate(ids):
        if len(x) == 0:
            raise DataError(f"text {i} is empty: it has no state to take features from")
    return ids


@functools.lru_cache(maxsize=32)
def _pool_chunk_fn(graphdef: nnx.GraphDef, state: str, pooling: str, all_layers: bool) -> Callable:
    """jit(params, carry, acc [L, B, H], tokens [B, t], lengths [B], offset) -> (carry, acc).

    Cached per (model, options): featurizing again (more texts, another split) reuses the
    compiled chunks instead of tracing and compiling a new function."""

    def fn(params: Any, carry: Any, acc: jax.Array, tokens: jax.Array, lengths: jax.Array,
           offset: jax.Array) -> tuple[Any, jax.Array]:
        model = nnx.merge(graphdef, params)
        out = model.features(tokens, carry)
        x = out[state] if all_layers else out[state][-1:]  # [L, B, t, H] float32
        pos = offset + jnp.arange(tokens.shape[1])
        valid = (pos[None, :] < lengths[:, None])[None, :, :, None]  # [1, B, t, 1]
        if pooling == "last":
            is_last = (pos[None, :] == lengths[:, None] - 1)[None, :, :, None]
            picked = jnp.sum(jnp.where(is_last, x, 0.0), axis=2)
            acc = jnp.where(jnp.any(is_last, axis=2), picked, acc)
        elif pooling == "mean":
            acc = acc + jnp.sum(jnp.where(valid, x, 0.0), axis=2)
        elif pooling == "max":
            acc = jnp.maximum(acc, jnp.max(jnp.where(valid, x, -jnp.inf), axis=2))
        else:
            acc = jnp.minimum(acc, jnp.min(jnp.where(valid, x, jnp.inf), axis=2))
        return out["carry"], acc

    return jax.jit(fn)


def feature_state(lm: TrainedLM, state: str | None) -> str:
    """``state``, checked against what the model offers (None: its default, e.g. "cell")."""
    states = lm.model().feature_states
    if state is None or state == "":
        return states[0]
    if state not in states:
        raise DataError(f"state must be one of {list(states)} for a {lm.config.model.kind} "
                        f"model, got {state!r}")
    return state


def _fit_length(lm: TrainedLM, ids: list[np.ndarray]) -> list[np.ndarray]:
    """Texts cut to their last ``max_len`` tokens for a model with a length limit."""
    limit = lm.model().max_len
    return ids if limit is None else [x[-limit:] for x in ids]


def featurize(lm: TrainedLM, texts: Sequence[str], *, state: str | None = None,
              pooling: str = "last", all_layers: bool = False, batch_size: int = 64,
              chunk: int = 128, progress: bool = False) -> np.ndarray:
    """Features [N, F] float32 of ``texts`` (F = feature width, or layers x it with ``all_layers``).

    ``state`` None: the model's default ("cell" for recurrent models, "hidden" otherwise).
    """
    state = feature_state(lm, state)
    if pooling not in POOLINGS:
        raise DataError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    ids = _fit_length(lm, encode_texts(lm, texts))
    model = lm.model()
    layers = model.num_layers if all_layers else 1
    hidden = model.feature_width
    devices = lm.mesh.size
    batch_size = max(devices, -(-batch_size // devices) * devices)
    rows = mesh_lib.batch_sharded(lm.mesh)
    step = _pool_chunk_fn(lm.graphdef, state, pooling, all_layers)
    pad = lm.tokenizer.pad_id or 0
    init = {"last": 0.0, "mean": 0.0, "max": -np.inf, "min": np.inf}[pooling]

    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), layers * hidden), np.float32)
    starts = range(0, len(order), batch_size)
    for start in tqdm.tqdm(starts, disable=not progress, desc="featurizing", unit="batch"):
        index = order[start:start + batch_size]
        lengths = np.ones(batch_size, np.int32)  # filler rows: one pad token, discarded
        lengths[:len(index)] = [len(ids[i]) for i in index]
        width = -(-int(lengths.max()) // chunk) * chunk
        if model.max_len is not None:  # one chunk: nothing is carried between chunks
            width = min(-(-int(lengths.max()) // 32) * 32, model.max_len)
        step_width = width if model.max_len is not None else chunk
        tokens = np.full((batch_size, width), pad, np.int32)
        for r, i in enumerate(index):
            tokens[r, :len(ids[i])] = ids[i]
        carry = jax.device_put(model.initial_carry(batch_size), rows)
        acc = jnp.full((layers, batch_size, hidden), init, jnp.float32)
        lengths_dev = jax.device_put(lengths, rows)
        for offset in range(0, width, step_width):
            carry, acc = step(lm.params, carry, acc,
                              jax.device_put(tokens[:, offset:offset + step_width], rows),
                              lengths_dev, jnp.int32(offset))
        acc = np.asarray(jax.device_get(acc))
        if pooling == "mean":
            acc = acc / lengths[None, :, None]
        feats = np.transpose(acc, (1, 0, 2)).reshape(batch_size, layers * hidden)
        out[index] = feats[:len(index)]
    return out


@functools.lru_cache(maxsize=32)
def _features_fn(graphdef: nnx.GraphDef, state: str) -> Callable:
    """jit(params, tokens [1, T]) -> that state of every layer [L, 1, T, F]; cached per model."""
    return jax.jit(lambda p, t: nnx.merge(graphdef, p).features(t, None)[state])


def unit_trace(lm: TrainedLM, text: str, unit: int, *, state: str | None = None, layer: int = -1
               ) -> np.ndarray:
    """The value of one unit after each UTF-8 byte of the preprocessed ``text``
    (``preprocess_texts``): float32 [bytes]. A byte takes the value after the token it is part
    of; bytes a length-limited model did not read (before its last ``max_len`` tokens) are NaN."""
    state = feature_state(lm, state)
    (full,) = encode_texts(lm, [text])
    (ids,) = _fit_length(lm, [full])
    out = _features_fn(lm.graphdef, state)(lm.params, jnp.asarray(ids[None, :], jnp.int32))
    per_token = np.asarray(out[layer, 0, :, unit], np.float32)
    lengths = lm.tokenizer.byte_lengths()
    unread = int(lengths[full[:len(full) - len(ids)]].sum())
    return np.concatenate([np.full(unread, np.nan, np.float32),
                           np.repeat(per_token, lengths[ids])])


def cached_featurize(lm: TrainedLM, texts: Sequence[str], cache_dir: str | None, **options: Any
                     ) -> np.ndarray:
    """``featurize`` with an on-disk cache keyed by the checkpoint, the texts and the options."""
    if not cache_dir:
        return featurize(lm, texts, **options)
    key_options = {k: v for k, v in options.items() if k not in ("progress", "batch_size", "chunk")}
    h = hashlib.sha256(json.dumps({"workdir": lm.workdir, "step": lm.step, **key_options},
                                  sort_keys=True).encode())
    for t in texts:
        h.update(len(t).to_bytes(8, "little"))
        h.update(t.encode("utf-8", errors="surrogatepass"))
    path = os.path.join(cache_dir, f"{h.hexdigest()[:32]}.npy")
    if os.path.exists(path):
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    feats = featurize(lm, texts, **options)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats
