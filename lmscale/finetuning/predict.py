"""Predictions of a classifier over texts, and the predictions CSV that ``lmscale.classify`` writes."""

from __future__ import annotations

import csv
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lmscale.atomic import atomic_write
from lmscale.finetuning.data import EVAL_TOKENS, eval_batches
from lmscale.training import mesh as mesh_lib


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, keys: Sequence[str]) -> dict[str, jax.Array]:
    """This process's rows of a global host batch, as global arrays sharded by rows."""
    rows = len(batch[keys[0]])
    start, stop = mesh_lib.local_rows(mesh, rows)
    sharding = mesh_lib.batch_sharded(mesh)
    return {k: mesh_lib.put_global(batch[k][start:stop], sharding, rows) for k in keys}


def predict_probs(predict_fn: Callable, params: Any, ids: Sequence[np.ndarray], mesh: Mesh, *,
                  batch_size: int, pad: int, bucket: int, max_len: int | None) -> np.ndarray:
    """Probabilities [N, K] (float64) of ``predict_fn(params, tokens, lengths)`` over all texts,
    in their order. ``batch_size`` is rounded up to a multiple of the devices."""
    rows = -(-batch_size // mesh.size) * mesh.size
    out: np.ndarray | None = None
    for index, batch in eval_batches(ids, rows, pad=pad, bucket=bucket, max_len=max_len,
                                     max_tokens=EVAL_TOKENS, multiple=mesh.size):
        b = put_batch(batch, mesh, ("tokens", "lengths"))
        probs = np.asarray(jax.device_get(predict_fn(params, b["tokens"], b["lengths"])), np.float64)
        if out is None:
            out = np.zeros((len(ids), probs.shape[1]), np.float64)
        out[index] = probs[:len(index)]
    return out


def write_predictions(path: str, texts: Sequence[str], probs: np.ndarray, pred: np.ndarray,
                      class_names: Sequence[str], multilabel: bool,
                      gold: np.ndarray | None = None) -> None:
    """CSV: text, p_<class> per class, then the predicted label (``predicted``; multi-label: a
    0/1 ``predicted_<class>`` per class) and, given ``gold``, the true one (``gold``, or
    ``gold_<class>``). Written to a temporary file renamed at the end."""
    from lmscale.data.errors import DataError
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"{path}: the folder {folder} does not exist")
    header = ["text", *[f"p_{c}" for c in class_names]]
    header += [f"predicted_{c}" for c in class_names] if multilabel else ["predicted"]
    if gold is not None:
        header += [f"gold_{c}" for c in class_names] if multilabel else ["gold"]

    def labels(row: np.ndarray | int) -> list[Any]:
        return [int(v) for v in row] if multilabel else [class_names[int(row)]]

    with atomic_write(path, "w", newline="", encoding="utf-8") as f:  # no temporary left behind
        w = csv.writer(f)
        w.writerow(header)
        for i, text in enumerate(texts):
            w.writerow([text, *[f"{p:.6f}" for p in probs[i]], *labels(pred[i]),
                        *(labels(gold[i]) if gold is not None else [])])


def read_texts(path: str, text_column: str) -> list[str]:
    """The texts of a .csv/.tsv (column ``text_column``) or .jsonl (field) file; DataError names
    the file and the columns there when the column is missing, or the file and line of bad
    JSON, of a line that is not a JSON object, of a text that is not a string (null), empty or
    only whitespace."""
    import json

    from lmscale.data.csv_rows import csv_rows
    from lmscale.data.errors import DataError
    from lmscale.transfer.labeled import checked_text, json_kind
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    from lmscale.data.compression import format_extension, open_input
    ext = format_extension(path)  # texts.csv.gz: ".csv"
    texts: list[str] = []

    def add(text: str, line: int) -> None:
        texts.append(checked_text(text, f"{path}:{line}", len(texts) + 1, text_column))

    if ext in (".csv", ".tsv"):
        for line, row in csv_rows(path, [text_column], "\t" if ext == ".tsv" else ",",
                                  column_hint="set --text_column"):
            add(row[text_column], line)
    elif ext in (".jsonl", ".json"):
        with open_input(path, "r", encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: bad JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: {json_kind(obj)}, not a JSON object; each "
                                    f"line must be one object with the field {text_column!r}")
                if text_column not in obj:
                    raise DataError(f"{path}:{i}: no field {text_column!r}; keys are {sorted(obj)}"
                                    " (set --text_column)")
                if not isinstance(obj[text_column], str):
                    raise DataError(f"{path}:{i}: field {text_column!r} is "
                                    f"{json_kind(obj[text_column])}, not a string")
                add(obj[text_column], i)
    else:
        raise DataError(f"{path}: unsupported file type {ext!r}; expected .csv, .tsv or .jsonl")
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts
