"""Predictions of a classifier over texts, and the predictions CSV that ``lmscale.classify`` writes."""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import sys
from typing import IO, Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lmscale.atomic import atomic_write, is_special, writes_stdout
from lmscale.messages import is_utf8
from lmscale.training import mesh as mesh_lib


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, keys: Sequence[str]) -> dict[str, jax.Array]:
    """This process's rows of a global host batch, as global arrays sharded by rows."""
    rows = len(batch[keys[0]])
    start, stop = mesh_lib.local_rows(mesh, rows)
    sharding = mesh_lib.batch_sharded(mesh)
    return {k: mesh_lib.put_global(batch[k][start:stop], sharding, rows) for k in keys}


# Features a head call reads: the last call is padded to it, so the head compiles once.
HEAD_ROWS = 1024


class Predictor:
    """Probabilities float64 [N, K] (softmax, or one sigmoid per class with ``multilabel``)
    of the classifier ``graphdef`` with parameters ``params`` over token ids (each text
    non-empty, within the LM's ``max_len``): ``Predictor(...)(params, ids)``.

    The classifier's LM reads the texts packed end to end (``transfer.featurize.
    packed_features``, as the frozen-LM transfer does: a recurrent LM in ``batch_size`` rows,
    its state reset at each text's first token; a transformer in rows of a few widths, its
    attention restarting at each text), so a text is read as if alone, from a zero carry, as
    in training; the pooled states it gives (each of the head's states x poolings) go
    through the head. Padding is only the rows' tails, and the programs compiled do not grow
    with the number of text lengths: one per chunk shape (recurrent) or row width (transformer),
    and the head's. Texts go in blocks (``transfer.featurize.cache_blocks``: at most 8,192
    texts, long ones apart), so the features held are a block's."""

    def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, multilabel: bool, *,
                 tokenizer: Any, config: Any, derived: dict[str, Any], batch_size: int) -> None:
        self.graphdef, self.mesh, self.batch_size = graphdef, mesh, batch_size
        self.tokenizer, self.config, self.derived = tokenizer, config, derived
        self.head = _head_probs_fn(graphdef, multilabel)

    def __call__(self, params: Any, ids: Sequence[np.ndarray]) -> np.ndarray:
        from lmscale.training.restore import TrainedLM
        from lmscale.transfer.featurize import cache_blocks, packed_features
        model = nnx.merge(self.graphdef, params)
        lm_graphdef, lm_params = nnx.split(model.lm, nnx.Param)
        lm = TrainedLM(config=self.config, derived=self.derived, tokenizer=self.tokenizer,
                       graphdef=lm_graphdef, params=lm_params, step=0, mesh=self.mesh,
                       compute=self.config.precision.compute)
        pairs = [(s, p) for s in model.states for p in model.poolings]
        out = np.zeros((len(ids), model.head.layers[-1].out_features), np.float64)
        for index in cache_blocks([len(x) for x in ids]):
            feats = packed_features(lm, [ids[i] for i in index], pairs,
                                    batch_size=self.batch_size)
            for first in range(0, len(index), HEAD_ROWS):
                block = np.zeros((HEAD_ROWS, feats.shape[1]), np.float32)
                part = feats[first:first + HEAD_ROWS]
                block[:len(part)] = part
                probs = np.asarray(jax.device_get(self.head(params, block)), np.float64)
                out[index[first:first + len(part)]] = probs[:len(part)]
        return out


@functools.lru_cache(maxsize=8)
def _head_probs_fn(graphdef: nnx.GraphDef, multilabel: bool) -> Callable:
    """jit(params, features float32 [HEAD_ROWS, D]) -> probabilities float32 [HEAD_ROWS, K]
    of the classifier's head; deterministic (no dropout)."""
    def head_probs(params: Any, features: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params).head(features)
        return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)
    return jax.jit(head_probs)


def predictions_folder(path: str) -> str:
    """The existing folder the predictions CSV ``path`` goes in; DataError naming it if missing."""
    from lmscale.data.errors import DataError
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{path}: {folder} is a file, not a folder")
    if not os.path.isdir(folder):
        raise DataError(f"{path}: the folder {folder} does not exist")
    return folder


@contextlib.contextmanager
def _utf8_stdout() -> Iterator[Any]:
    """Standard output as UTF-8 while the CSV is written, as its files are: under an ASCII
    locale (``LC_ALL=C`` with ``PYTHONUTF8=0``, ``PYTHONIOENCODING=ascii``) a text with "é"
    raised UnicodeEncodeError after the first rows."""
    sys.stdout.flush()
    before = (sys.stdout.encoding, sys.stdout.errors)
    changed = hasattr(sys.stdout, "reconfigure") and not is_utf8(before[0])
    if changed:
        sys.stdout.reconfigure(encoding="utf-8", errors="strict")
    try:
        yield sys.stdout
    finally:
        if changed:
            with contextlib.suppress(Exception):  # a reader gone (BrokenPipeError) included
                sys.stdout.flush()
                sys.stdout.reconfigure(encoding=before[0], errors=before[1])


def write_predictions(path: str, texts: Sequence[str], probs: np.ndarray, pred: np.ndarray,
                      class_names: Sequence[str], multilabel: bool,
                      gold: np.ndarray | None = None) -> None:
    """CSV: text, p_<class> per class, then the predicted label (``predicted``; multi-label: a
    0/1 ``predicted_<class>`` per class) and, given ``gold``, the true one (``gold``, or
    ``gold_<class>``). Written to a temporary file renamed at the end; tab-separated for a
    ``.tsv`` path (unquoted, as lmscale reads TSV: a tab or line break in a text becomes a
    space) and compressed for a ``.gz``/``.bz2``/``.xz`` one, as such inputs are read
    (``preds.tsv.gz``; they were written as plain CSV under those names)."""
    from lmscale.data.compression import OPENERS, compression, format_extension
    if not is_special(path):
        predictions_folder(path)
    opener = None if is_special(path) else OPENERS.get(compression(path) or "")
    tsv = format_extension(path) == ".tsv"
    shown = (lambda text: text.translate(_TSV_SPACES)) if tsv else (lambda text: text)
    header = ["text", *[f"p_{c}" for c in class_names]]
    header += [f"predicted_{c}" for c in class_names] if multilabel else ["predicted"]
    if gold is not None:
        header += [f"gold_{c}" for c in class_names] if multilabel else ["gold"]

    def labels(row: np.ndarray | int) -> list[Any]:
        return [int(v) for v in row] if multilabel else [class_names[int(row)]]

    if path == "-":  # standard output (``classify --output=-``)
        out: Any = _utf8_stdout()
    elif opener is not None:  # the compressed bytes through the same temporary file
        out = _compressed_text(path, opener)
    else:  # no temporary left behind; a device (/dev/stdout) written in place
        out = atomic_write(path, "w", newline="", encoding="utf-8")
    try:
        with out as f:
            w = (csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None)
                 if tsv else csv.writer(f))
            w.writerow(header)
            for i, text in enumerate(texts):
                w.writerow([shown(text), *[f"{p:.6f}" for p in probs[i]], *labels(pred[i]),
                            *(labels(gold[i]) if gold is not None else [])])
            f.flush()
    except BrokenPipeError:
        if not is_special(path):
            raise
        # the reader left (``--output=- | head``): the rest is unwanted, as for any filter;
        # stdout pointed at /dev/null so that the interpreter's last flush raises nothing
        if writes_stdout(path):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_TSV_SPACES = str.maketrans("\t\r\n", "   ")  # what an unquoted TSV field cannot hold


@contextlib.contextmanager
def _compressed_text(path: str, opener: Callable[..., IO]) -> Iterator[IO]:
    """UTF-8 CSV text written compressed (``opener``: gzip.open, ...) into ``path`` at once."""
    with atomic_write(path, "wb") as raw, opener(raw, "wt", encoding="utf-8", newline="") as f:
        yield f


def read_texts(path: str, text_column: str) -> list[str]:
    """The texts of a .csv/.tsv (column ``text_column``) or .jsonl (field) file, or of a
    ``tfds:NAME/SPLIT`` text feature; DataError names the file and the columns there when the
    column is missing, or the file and line of bad JSON, of a line that is not a JSON object,
    of a text that is not a string (null), empty or only whitespace."""
    from lmscale.data.csv_rows import csv_rows
    from lmscale.data.errors import DataError
    from lmscale.data.tfds import PREFIX, is_tfds
    from lmscale.transfer.labeled import checked_text, jsonl_records, read_tfds
    if is_tfds(path):  # was "no such file" (with --labels, load_labeled read it)
        path = path.strip()
        texts, _ = read_tfds(path[len(PREFIX):], text_column, [], " (set --text_column)")
        if not texts:
            raise DataError(f"{path}: no rows")
        return texts
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    from lmscale.data.compression import format_extension
    ext = format_extension(path)  # texts.csv.gz: ".csv"
    texts: list[str] = []

    def add(text: str, line: int) -> None:
        texts.append(checked_text(text, f"{path}:{line}", len(texts) + 1, text_column))

    if ext in (".csv", ".tsv"):
        for line, row in csv_rows(path, [text_column], "\t" if ext == ".tsv" else ",",
                                  column_hint="set --text_column"):
            add(row[text_column], line)
    elif ext in (".jsonl", ".json"):
        for line, obj in jsonl_records(path, text_column, hint=" (set --text_column)"):
            add(obj[text_column], line)
    else:
        raise DataError(f"{path}: unsupported file type {ext!r}; expected .csv, .tsv or .jsonl")
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts
