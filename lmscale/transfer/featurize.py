"""Featurization: run a trained LM over texts and pool its states into one vector per text.

The default feature is the final cell state of the last layer, taken *after* the text's
last character (the sentiment-neuron recipe; sentiment-discovery's mLSTM took the state
before it). Options: the hidden state instead, mean / max / min pooling over the text,
and all layers concatenated.

Speed: a model that carries its state (the recurrent LMs) reads the texts packed end to end
in ``batch_size`` rows (``packing``: the state reset at each text's first token, so each
text is read as if alone), in chunks of ``chunk`` tokens through one jitted function
(compiled once per shape), carrying the state and a running pool, and picks each text's
feature where it ends; so padding is only the rows' tails and memory does not grow with text
length. Rows are sharded over all devices of the run's mesh, like training.

A model that carries no state (the transformer) reads each text whole, in one call: the
texts packed into rows of a few widths (``packing.pack_bins``: powers of two times 32 up to
its ``max_len``, a compile per width), its attention and positions restarting at each text
(``resets``), so a row reads several texts as if each were alone. Texts longer than
``max_len`` tokens are cut to their last ``max_len`` tokens (the final output then still
sees the most context). Its feature is the final layer's output ("hidden"), at the last
real token or pooled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import zipfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lmscale.atomic import atomic_write
from lmscale.data.errors import DataError
from lmscale.data.texts import last_tokens, text_list
from lmscale.data.words import unknown_words_note
from lmscale.models.registry import trained_length, untrained_positions_note
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM, prepared_weights, weights_fingerprint
from lmscale.training.state import zero_carry
from lmscale.transfer import packing

POOLINGS = ("last", "mean", "max", "min")


def preprocess_texts(lm: TrainedLM, texts: Sequence[str]) -> list[str | bytes]:
    """The texts as the LM reads them: with its preprocessing, if it names one (an imported
    OpenAI model frames each text as '\\n ' + text + ' ', as the original did, and gives
    its UTF-8 bytes; the heatmaps take either)."""
    from lmscale.pretrained.preprocess import preprocessor_for
    prep = preprocessor_for(lm.derived)
    return [prep(t) for t in texts]


def encode_texts(lm: TrainedLM, texts: Sequence[str], unknown_note: bool = True
                 ) -> list[np.ndarray]:
    """Token ids of each (preprocessed) text with the LM's own tokenizer; empty texts are an
    error (0-based index: the model reads nothing from them). ``unknown_note``: a word model's
    note on words outside its vocabulary (not for a heatmap's one example text)."""
    texts = text_list(texts)
    for i, t in enumerate(texts):
        if not t:
            raise DataError(f"text {i} is empty: the model reads no token of it")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (text read with errors="surrogateescape")
            raise DataError(f"text {i} is not valid Unicode ({e.reason} at character "
                            f"{e.start}): it has no UTF-8 bytes to read") from None
    read = preprocess_texts(lm, texts)
    ids = [lm.tokenizer.encode(t) for t in read]
    for i, x in enumerate(ids):
        if len(x) == 0:
            raise DataError(f"text {i} is empty: the model reads no token of it")
    what = "this text" if len(ids) == 1 else f"these {len(ids):,} texts"
    if unknown_note and (note := unknown_words_note(lm.tokenizer, read, ids, what)):
        print(note, file=sys.stderr, flush=True)
    return ids


def positive_int(name: str, value: Any) -> int:
    """``value`` as a positive int (NumPy ints too), else a DataError naming ``name``: a
    batch_size of 0, -3 or True was read as 1 row, 2.5 or None failed deep in the packing,
    a chunk of -1 returned zeros."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def feature_state(lm: TrainedLM, state: str | None) -> str:
    """``state``, checked against what the model offers (None: its default, e.g. "cell")."""
    states = lm.model().feature_states
    if state is None or state == "":
        return states[0]
    if state not in states:
        raise DataError(f"state must be one of {list(states)} for a {lm.config.model.kind} "
                        f"model, got {state!r}")
    return state


def _fit_length(lm: TrainedLM, ids: list[np.ndarray], notes: bool = True) -> list[np.ndarray]:
    """Texts cut to their last ``max_len`` tokens for a model with a length limit, said in a
    note when any is (a 20k-character text read as its last 256 tokens was cut silently), and
    a note when any still reads positions its training never reached (``trained_length``);
    ``notes`` False: cut unsaid (texts whose split's notes said it)."""
    ids = last_tokens(ids, lm.model().max_len, say=notes)
    trained = trained_length(lm.config)
    if notes and trained is not None and ids and jax.process_index() == 0:
        over = sum(len(x) > trained for x in ids)
        note = untrained_positions_note(lm.config, max(map(len, ids)),
                                        f"{over} of {len(ids)} texts run")
        if note:
            print(note, file=sys.stderr, flush=True)
    return ids


def featurize(lm: TrainedLM, texts: Sequence[str], *, state: str | None = None,
              pooling: str = "last", all_layers: bool = False, batch_size: int = 64,
              chunk: int = 128, progress: bool = False) -> np.ndarray:
    """Features [N, F] float32 of ``texts`` (F = feature width, or layers x it with ``all_layers``).

    ``state`` None: the model's default ("cell" for recurrent models, "hidden" otherwise).
    ``pooling``: "last" (the state after a text's last token), or "mean", "max" or "min" over
    its tokens. ``batch_size``: rows read side by side (rounded up to a multiple of the
    devices, and down to the rows there are); ``chunk``: tokens per call of a recurrent LM.
    """
    state = feature_state(lm, state)
    if pooling not in POOLINGS:
        raise DataError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    batch_size, chunk = positive_int("batch_size", batch_size), positive_int("chunk", chunk)
    ids = _fit_length(lm, encode_texts(lm, texts))
    return packed_features(lm, ids, ((state, pooling),), all_layers=all_layers,
                           batch_size=batch_size, chunk=chunk, progress=progress)


Pair = tuple[str, str]  # (state, pooling), e.g. ("cell", "mean")


def packed_features(lm: TrainedLM, ids: Sequence[np.ndarray], pairs: Sequence[Pair], *,
                    all_layers: bool = False, batch_size: int = 64, chunk: int = 128,
                    progress: bool = False) -> np.ndarray:
    """Features [N, P x L x F] float32 of the token ids ``ids`` (each non-empty, within the
    model's ``max_len``), read packed (see the module docstring): for each (state, pooling) of
    ``pairs`` in turn, the last layer's (``all_layers``: every layer's, side by side) pooled
    state; one pass over the texts reads them all (a fine-tuned classifier's head takes
    several, e.g. the last and the mean cell state)."""
    pairs = tuple((str(s), str(p)) for s, p in pairs)
    model = lm.model()
    if model.max_len is not None or not lm.carries_state():
        # a model that carries nothing reads each text whole, bounded or not (the packed
        # reader's chunks cut its context: a text's features depended on where it was packed)
        out = _featurize_bins(lm, ids, pairs, all_layers, batch_size, progress)
    else:
        rows = packing.rows_for(batch_size, len(ids), lm.mesh.size)
        out = _featurize_packed(lm, ids, pairs, all_layers, rows, chunk, progress)
    width = out.shape[1] // len(pairs)
    lengths = np.asarray([len(x) for x in ids], np.float32)[:, None]
    for p, (_, pooling) in enumerate(pairs):
        if pooling == "mean":  # read as sums
            out[:, p * width:(p + 1) * width] /= lengths
    return out


def _featurize_packed(lm: TrainedLM, ids: Sequence[np.ndarray], pairs: tuple[Pair, ...],
                      all_layers: bool, rows: int, chunk: int, progress: bool) -> np.ndarray:
    """A recurrent LM over the texts packed into ``rows`` rows (``packing``); mean pools
    are returned as sums."""
    model = lm.model()
    layers = model.num_layers if all_layers else 1
    plan = packing.pack([len(x) for x in ids], rows)
    slots = _slots(packing.ends_per_chunk(plan, chunk))
    row_sharded = mesh_lib.batch_sharded(lm.mesh)
    step = _packed_chunk_fn(lm.graphdef, pairs, all_layers)
    prepared = prepared_weights(lm)  # weight norm and layouts once, not once per chunk
    carry = zero_carry(model.initial_carry, rows, row_sharded)
    acc_sharding = NamedSharding(lm.mesh, P(None, mesh_lib.DATA_AXIS))
    acc = tuple(None if pooling == "last" else
                jax.device_put(np.zeros((layers, rows, model.feature_width), np.float32),
                               acc_sharding) for _, pooling in pairs)
    out = np.zeros((len(ids), len(pairs) * layers * model.feature_width), np.float32)
    collect = functools.partial(_collect, out)
    put = lambda a: jax.device_put(a, row_sharded)
    pending = None  # the previous chunk's picks, read after the next chunk is dispatched
    offsets = range(0, plan.width, chunk)
    for offset in tqdm.tqdm(offsets, disable=not progress, desc="featurizing", unit="chunk"):
        piece = packing.chunk(plan, ids, offset, chunk, slots, lm.tokenizer.pad_id or 0)
        carry, acc, picked = step(lm.params, prepared, carry, acc, put(piece.tokens),
                                  put(piece.resets), put(piece.ends))
        if pending is not None:
            collect(*pending)
        pending = (picked, piece.texts)
    if pending is not None:
        collect(*pending)
    return out


def _slots(most: int) -> int:
    """Text ends a row of a piece has room for: ``most`` rounded up to a power of two, at
    least 8, so that pieces of texts of other lengths compile nothing new (1, 2 and 4 ends
    each compiled the reader again)."""
    return max(8, 1 << (most - 1).bit_length())


def _collect(out: np.ndarray, picked: jax.Array, texts: np.ndarray) -> None:
    """out[texts] = picked [P x L, rows, slots, F] where texts [rows, slots] >= 0, the pairs'
    layers side by side."""
    per_slot = np.transpose(np.asarray(picked), (1, 2, 0, 3))
    used = texts >= 0
    out[texts[used]] = per_slot[used].reshape(-1, out.shape[1])


@functools.lru_cache(maxsize=32)
def _packed_chunk_fn(graphdef: nnx.GraphDef, pairs: tuple[Pair, ...], all_layers: bool
                     ) -> Callable:
    """jit(params, prepared, carry, accs, tokens [B, t], resets [B, t], ends [B, K]) ->
    (carry, accs, picked [P x L, B, K, F]): the chunk read from ``carry``, the state resetting
    where ``resets``; picked: for each (state, pooling) of ``pairs``, the state (or the text's
    running pool so far) at ``ends``; accs: per pair [L, B, F] (None for "last", or where no
    text continues from an earlier chunk); ``prepared``: ``prepared_weights`` (None: the model
    takes none).

    Pools run within each text: a segmented scan over the chunk (restarting at resets),
    continued from the pair's acc, the pool so far of the text each row was reading (a mean's
    sum as one product of each text's 0/1 span with the states measured 4 % slower)."""
    def picked_pool(x: jax.Array, acc: jax.Array | None, resets: jax.Array, ends: jax.Array,
                    pooling: str) -> tuple[jax.Array, jax.Array | None]:
        """x [L, B, t, F] -> (the pool at ``ends`` [L, B, K, F], the acc at the chunk's end)."""
        if pooling == "last":
            return jnp.take_along_axis(x, ends[None, :, :, None], axis=2), acc
        op = {"mean": jnp.add, "max": jnp.maximum, "min": jnp.minimum}[pooling]

        def combine(a: tuple, b: tuple) -> tuple:
            (starts_a, va), (starts_b, vb) = a, b
            return starts_a | starts_b, jnp.where(starts_b, vb, op(va, vb))

        starts = jnp.broadcast_to(resets[None, :, :, None], x.shape)
        if acc is not None:
            x = x.at[:, :, 0].set(jnp.where(starts[:, :, 0], x[:, :, 0], op(acc, x[:, :, 0])))
        _, x = jax.lax.associative_scan(combine, (starts, x), axis=2)
        return (jnp.take_along_axis(x, ends[None, :, :, None], axis=2),
                None if acc is None else x[:, :, -1])

    def read_packed_chunk(params: Any, prepared: Any, carry: Any, accs: tuple, tokens: jax.Array,
                          resets: jax.Array, ends: jax.Array) -> tuple[Any, Any, jax.Array]:
        model = nnx.merge(graphdef, params)
        out = (model.features(tokens, carry, resets) if prepared is None
               else model.features(tokens, carry, resets, prepared))
        picks, new_accs = [], []
        for (state, pooling), acc in zip(pairs, accs):
            x = out[state] if all_layers else out[state][-1:]  # [L, B, t, F] float32
            picked, acc = picked_pool(x, acc, resets, ends, pooling)
            picks.append(picked)
            new_accs.append(acc)
        return out["carry"], tuple(new_accs), jnp.concatenate(picks, axis=0)

    return jax.jit(read_packed_chunk)


def _featurize_bins(lm: TrainedLM, ids: Sequence[np.ndarray], pairs: tuple[Pair, ...],
                    all_layers: bool, batch_size: int, progress: bool) -> np.ndarray:
    """A stateless LM (``max_len``) over the texts packed into rows of a few widths
    (``packing.pack_bins``), ``batch_size`` rows of one width a call; mean pools are returned
    as sums."""
    model = lm.model()
    layers = model.num_layers if all_layers else 1
    row_sharded = mesh_lib.batch_sharded(lm.mesh)
    put = lambda a: jax.device_put(a, row_sharded)
    step = _packed_chunk_fn(lm.graphdef, pairs, all_layers)
    out = np.zeros((len(ids), len(pairs) * layers * model.feature_width), np.float32)
    calls = []  # (texts of the width, its plan, rows a call, the call's first row)
    lengths = [len(x) for x in ids]
    for texts, plan in packing.pack_bins(lengths, model.max_len or max(lengths, default=1)):
        rows = packing.rows_for(batch_size, plan.rows, lm.mesh.size)
        calls += [(texts, plan, rows, first) for first in range(0, plan.rows, rows)]
    pending = None  # the previous call's picks, read after the next call is dispatched
    for texts, plan, rows, first in tqdm.tqdm(calls, disable=not progress, desc="featurizing",
                                              unit="batch"):
        slots = _slots(packing.texts_per_row(plan))
        piece = packing.rows_piece(plan, [ids[i] for i in texts], first, rows, slots,
                                   lm.tokenizer.pad_id or 0)
        _, _, picked = step(lm.params, None, model.initial_carry(rows), (None,) * len(pairs),
                            put(piece.tokens), put(piece.resets), put(piece.ends))
        if pending is not None:
            _collect(out, *pending)
        pending = (picked, np.where(piece.texts >= 0, texts[piece.texts], -1))
    if pending is not None:
        _collect(out, *pending)
    return out


@functools.lru_cache(maxsize=32)
def _unit_fn(graphdef: nnx.GraphDef, state: str) -> Callable:
    """jit(params, tokens [1, T], layer, unit) -> that state of one unit of one layer [T]; cached
    per model. Layer and unit are arguments, and the text's length is cut on the host, so every
    text of a padded width shares one program (indexing the device array eagerly compiled two
    small programs per text length)."""
    def unit_values(params: Any, tokens: jax.Array, layer: jax.Array, unit: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)  # from a zero carry (the interface has no None)
        states = model.features(tokens, model.initial_carry(1))[state]  # [L, 1, T, F]
        return jax.lax.dynamic_index_in_dim(states, layer, 0, keepdims=False)[0, :, unit]
    return jax.jit(unit_values)


def layer_and_unit(index: int, width: int, all_layers: bool) -> tuple[int, int]:
    """(layer, unit in it) of feature ``index``: all-layer features are the layers' states side
    by side, ``width`` units each; otherwise the last layer's (-1)."""
    return divmod(index, width) if all_layers else (-1, index)


def unit_trace(lm: TrainedLM, text: str, unit: int, *, state: str | None = None, layer: int = -1,
               notes: bool = True) -> np.ndarray:
    """The value of one unit after each UTF-8 byte of the preprocessed ``text``
    (``preprocess_texts``): float32 [bytes]. A byte takes the value after the token it is part
    of; bytes a length-limited model did not read (before its last ``max_len`` tokens) are NaN.
    ``notes`` False: no length notes (a text of a split featurized before, which said them)."""
    state = feature_state(lm, state)
    model = lm.model()
    if not -model.num_layers <= layer < model.num_layers:
        raise DataError(f"layer {layer} is out of range: the model has {model.num_layers} layers")
    if not 0 <= unit < model.feature_width:
        raise DataError(f"unit {unit} is out of range: a layer's state has {model.feature_width} units")
    (full,) = encode_texts(lm, [text], unknown_note=False)  # the split's note said it
    (ids,) = _fit_length(lm, [full], notes)
    # Padded after the text to a multiple of 64 tokens, so texts of similar length share one
    # compiled program (the states before the padding do not depend on it).
    width = -(-len(ids) // 64) * 64
    limit = model.max_len
    width = width if limit is None else min(width, limit)
    padded = np.full((1, width), lm.tokenizer.pad_id or 0, np.int32)
    padded[0, :len(ids)] = ids
    values = _unit_fn(lm.graphdef, state)(lm.params, padded,
                                          np.int32(layer % model.num_layers), np.int32(unit))
    per_token = np.asarray(values, np.float32)[:len(ids)]
    # Bytes per token: of this text where the tokenizer can say (words: a word's length varies
    # and <unk> stands for any), else the vocabulary's.
    shown = preprocess_texts(lm, [text])[0]
    spans = getattr(lm.tokenizer, "text_byte_lengths", None)
    lengths = spans(shown) if spans else None
    if lengths is None or len(lengths) != len(full):
        lengths = np.rint(lm.tokenizer.byte_lengths()[full]).astype(np.int64)  # <unk>: its mean
    skipped = len(full) - len(ids)
    trace = np.concatenate([np.full(int(lengths[:skipped].sum()), np.nan, np.float32),
                            np.repeat(per_token, lengths[skipped:])])
    # A tokenizer that does not give back the text (an imported SentencePiece model adding a
    # space before it, removing whitespace, normalizing; <unk>'s mean length) counts other
    # bytes: the trace is cut or NaN-padded to the text's, one value per byte as promised.
    n = len(shown) if isinstance(shown, bytes) else len(
        shown.encode("utf-8", errors="surrogateescape"))
    if len(trace) != n:
        trace = np.concatenate([trace[:n], np.full(max(n - len(trace), 0), np.nan, np.float32)])
    return trace


CACHE_BLOCK_TEXTS = 8192  # texts per cache file: an interrupted featurize keeps its blocks
LONG_IN_BLOCK = CACHE_BLOCK_TEXTS // 64  # a text this many times the median: in a block of its own


def cached_featurize(lm: TrainedLM, texts: Sequence[str], cache_dir: str | None, *,
                     report: Callable[[str], None] | None = None, used: set[str] | None = None,
                     **options: Any) -> np.ndarray:
    """``featurize`` with an on-disk cache keyed by the weights' content
    (``weights_fingerprint``: a workdir retrained in place misses), the preprocessing, the
    compute dtype, the texts and the options. Texts are cached in blocks of
    ``CACHE_BLOCK_TEXTS``, each file written when its block is done: a transfer interrupted
    in a 100k-text split goes on from its last finished block (a split of at most a block is
    one file, keyed as before blocks). ``used``: a set given gets the names of the cache
    files read or written (``unused_cache``)."""
    texts = text_list(texts)  # read once: the key and the features take the same texts
    if not cache_dir:
        return featurize(lm, texts, **options)
    key_options = {k: v for k, v in options.items() if k not in ("progress", "batch_size", "chunk")}
    common = json.dumps({"weights": weights_fingerprint(lm),
                         "preprocess": lm.derived.get("preprocess", "none"),
                         **key_options, "compute": lm.compute}, sort_keys=True).encode()
    out = None
    blocks = cache_blocks([len(t) for t in texts])
    done = 0
    for b, index in enumerate(blocks):
        feats = _cached_block(lm, [texts[i] for i in index], cache_dir, common, options, used)
        done += len(index)
        if report is not None and len(blocks) > 1:  # a log's only sign of life in a long split
            report(f"  block {b + 1}/{len(blocks)}: {done}/{len(texts)} texts")
        if out is None:
            out = np.zeros((len(texts),) + feats.shape[1:], feats.dtype)
        out[index] = feats
    return out


def cache_blocks(lengths: Sequence[int]) -> list[np.ndarray]:
    """The texts' indices in cache blocks: one block for at most ``CACHE_BLOCK_TEXTS`` texts;
    else blocks of that many in order, the long texts (over ``LONG_IN_BLOCK`` times the median
    length: longer than a row of a block of typical texts) in blocks of their own at the end,
    since a block packs its texts alone: a 200k-character text among 8192 short ones kept its
    row busy while the others idled (a 100k-text split read 2.3x slower than in one pass)."""
    n = len(lengths)
    if n <= CACHE_BLOCK_TEXTS:
        return [np.arange(n)]
    lengths = np.asarray(lengths)
    long = lengths > LONG_IN_BLOCK * max(float(np.median(lengths)), 1.0)
    split = lambda idx: [idx[i:i + CACHE_BLOCK_TEXTS] for i in range(0, len(idx), CACHE_BLOCK_TEXTS)]
    return split(np.flatnonzero(~long)) + split(np.flatnonzero(long))


def _cached_block(lm: TrainedLM, texts: list[str], cache_dir: str, common: bytes,
                  options: dict[str, Any], used: set[str] | None) -> np.ndarray:
    """One block's features: read from its cache file, or computed and written atomically."""
    h = hashlib.sha256(common)
    for t in texts:
        h.update(len(t).to_bytes(8, "little"))
        h.update(t.encode("utf-8", errors="surrogatepass"))
    key = h.hexdigest()
    path = os.path.join(cache_dir, f"{key[:32]}.npz")
    if used is not None:
        used.add(os.path.basename(path))
    if os.path.exists(path):
        why = None
        try:
            with np.load(path, allow_pickle=False) as z:
                stored, cached = str(z["key"]), z["features"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            why = f"unreadable ({type(e).__name__})"
        else:
            if stored != key:
                why = "the features of other weights, texts or options (copied over it?)"
            elif cached.dtype != np.float32 or cached.ndim != 2 or len(cached) != len(texts):
                why = f"shaped {cached.shape} {cached.dtype}, not ({len(texts)}, F) float32"
            else:
                return cached
        print(f"note: feature cache {path} is {why}: computed again and replaced",
              file=sys.stderr, flush=True)
    feats = featurize(lm, texts, **options)
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_write(path, "wb") as f:  # all or nothing, no temporary left behind
        np.savez(f, features=feats, key=np.asarray(key))
    return feats


UNUSED_CACHE_NOTE_BYTES = 2**30  # cached features a transfer did not use: worth a note past this


def unused_cache(cache_dir: str, used: set[str]) -> tuple[int, int]:
    """(files, bytes) of the feature blocks in ``cache_dir`` other than ``used`` (the names
    ``cached_featurize`` read or wrote): features of other weights (older checkpoints, a run
    retrained in place), texts or options, kept for a call that asks for them again. Nothing
    prunes the cache; a transfer says when these pass ``UNUSED_CACHE_NOTE_BYTES``."""
    files = size = 0
    try:
        entries = list(os.scandir(cache_dir))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            if entry.name.endswith((".npy", ".npz")) and entry.name not in used and entry.is_file():
                files, size = files + 1, size + entry.stat().st_size
        except OSError:  # removed meanwhile
            continue
    return files, size
