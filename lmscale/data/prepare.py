"""Text files -> a prepared token dataset: shards of uint16 token ids split train/val/test.

Two streaming passes. Pass 1 tokenizes documents one at a time into one raw temporary
token file (and a file of document start offsets), so the exact token count is known.
Pass 2 cuts the stream into ``cycles * sum(split)`` contiguous shards of near-equal size,
assigns them to splits evenly within each cycle (val/test interleaved with train, as in
the paper's 1000/1/1 shards), and copies each shard's range into its own file.

Everything is written into ``<output>.tmp-<pid>`` and renamed to ``output`` at the end,
so a failed or interrupted run leaves nothing that looks like a dataset.

Layout of ``output``::

    metadata.json
    <split>/shard_<k:05d>.bin       raw little-endian uint16 tokens (np.memmap)
    <split>/shard_<k:05d>.docs.npy  int64 shard-local document starts, sorted
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from lmscale.data.builtin import builtin_paths, is_builtin
from lmscale.data.dataset import FORMAT, METADATA, SPLITS, VERSION, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.sources import TXT_MODES, expand_inputs, iter_pieces
from lmscale.data.tokenizer import ByteTokenizer

COPY_TOKENS = 1 << 23  # tokens per chunk when copying a shard out of the raw file
DOC_FLUSH = 1 << 16  # document starts buffered before appending them to their file
ENCODE_BYTES = 1 << 20  # bytes of text gathered before encoding and writing them
TOKENS_FILE = "tokens.raw"
DOCS_FILE = "doc_starts.raw"


def assign_splits(split: Sequence[int]) -> list[int]:
    """Split index of each shard of one cycle, spread evenly (largest deficit first).

    E.g. (8, 1, 1) -> [0, 0, 0, 1, 0, 0, 2, 0, 0, 0] and (1000, 1, 1) puts val at 334, test at 668: shard j goes to the split whose
    share of the first j + 1 shards is furthest ahead of what it has; ties go to the
    earlier split. Each split gets exactly its count.
    """
    total = sum(split)
    given = [0] * len(split)
    order = []
    for j in range(total):
        # deficit * total, in integers: (j + 1) * count - given * total
        deficits = [(j + 1) * c - g * total for c, g in zip(split, given)]
        s = max(range(len(split)), key=lambda i: (deficits[i], -i))
        given[s] += 1
        order.append(s)
    return order


def shard_plan(total_tokens: int, split: Sequence[int], shard_tokens: int) -> list[tuple[int, int, int]]:
    """``(split index, start, stop)`` of every shard in stream order."""
    per_cycle = sum(split)
    cycles = max(1, math.ceil(total_tokens / (per_cycle * shard_tokens)))
    n = cycles * per_cycle
    if total_tokens < 2 * n:
        raise DataError(f"corpus too small: {total_tokens} tokens for {n} shards "
                        f"({cycles} cycle(s) of split {tuple(split)}); need at least {2 * n} tokens")
    bounds = [i * total_tokens // n for i in range(n + 1)]
    order = assign_splits(split) * cycles
    return [(order[i], bounds[i], bounds[i + 1]) for i in range(n)]


def _check_args(split: Sequence[int], shard_tokens: int, txt_mode: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in split)
        ok = len(parts) == 3 and all(int(x) == x for x in split)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(parts) < 0 or parts[0] < 1:
        raise DataError(f"split must be three shard counts (train, val, test) with train >= 1 "
                        f"and val, test >= 0; got {split!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    if txt_mode not in TXT_MODES:
        raise DataError(f"txt_mode must be one of {list(TXT_MODES)}, got {txt_mode!r}")
    return parts  # type: ignore[return-value]


def _check_output(output: str, overwrite: bool) -> bool:
    """Whether ``output`` exists and must be replaced; DataError if it may not be."""
    if not os.path.lexists(output):
        return False
    if is_dataset(output):
        if not overwrite:
            raise DataError(f"{output} already holds a prepared dataset; pass overwrite=True "
                            f"(--overwrite) to replace it")
        return True
    if os.path.isdir(output) and not os.listdir(output):
        return True
    raise DataError(f"{output} exists and is not a prepared dataset; refusing to replace it")


def _tokenize(paths: list[str], tmp: str, tokenizer: ByteTokenizer, progress: bool,
              **source_options: Any) -> tuple[int, int]:
    """Pass 1: all tokens into tmp/tokens.raw, document starts into tmp/doc_starts.raw.

    Pieces are gathered into ~ENCODE_BYTES batches and encoded together: for a byte
    tokenizer that equals encoding them one by one, and a token is a byte, so a
    document's start is the number of bytes before it.
    """
    total_bytes = sum(os.path.getsize(p) for p in paths)
    tokens = documents = buffered = 0
    batch: list[bytes] = []
    starts: list[int] = []

    def flush() -> None:
        nonlocal tokens, buffered
        if batch:
            ids = np.asarray(tokenizer.encode(b"".join(batch)), dtype=np.dtype("<u2"))
            if ids.size != buffered:
                raise DataError(f"tokenizer {tokenizer.to_dict()} made {ids.size} tokens of "
                                f"{buffered} bytes; prepare needs one token per byte")
            tok_f.write(ids.tobytes())
            tokens += buffered
            batch.clear()
            buffered = 0
        if starts:
            doc_f.write(np.asarray(starts, dtype="<i8").tobytes())
            starts.clear()

    with open(os.path.join(tmp, TOKENS_FILE), "wb") as tok_f, \
            open(os.path.join(tmp, DOCS_FILE), "wb") as doc_f, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
                 disable=not progress, leave=False) as bar:
        for path in paths:
            size, read, shown, new_doc = os.path.getsize(path), 0, 0, False
            for data, begins in iter_pieces([path], **source_options):
                new_doc = new_doc or begins
                if not data:
                    continue
                if new_doc:  # a document's start is recorded at its first byte: empty ones vanish
                    starts.append(tokens + buffered)
                    documents += 1
                    new_doc = False
                batch.append(data)
                buffered += len(data)
                read += len(data)
                if buffered >= ENCODE_BYTES or len(starts) >= DOC_FLUSH:
                    flush()
                    bar.update(min(read, size) - shown)
                    shown = min(read, size)
            bar.update(size - shown)
        flush()
    return tokens, documents


def _write_shards(tmp: str, plan: list[tuple[int, int, int]], names: list[str], documents: int,
                  progress: bool) -> dict[str, Any]:
    """Pass 2: copies each planned range into its shard files; returns metadata["splits"]."""
    starts = np.memmap(os.path.join(tmp, DOCS_FILE), dtype="<i8", mode="r", shape=(documents,))
    splits: dict[str, Any] = {}
    with open(os.path.join(tmp, TOKENS_FILE), "rb") as src:
        for index, (s, start, stop) in enumerate(tqdm(plan, desc="writing shards", unit="shard",
                                                      disable=not progress, leave=False)):
            name = names[s]
            entry = splits.setdefault(name, {"shards": [], "tokens": 0, "documents": 0})
            k = len(entry["shards"])
            os.makedirs(os.path.join(tmp, name), exist_ok=True)
            rel = f"{name}/shard_{k:05d}"
            src.seek(2 * start)
            with open(os.path.join(tmp, rel + ".bin"), "wb") as dst:
                left = stop - start
                while left:
                    n = min(left, COPY_TOKENS)
                    chunk = src.read(2 * n)
                    if len(chunk) != 2 * n:
                        raise DataError(f"temporary token file ended early at token {start}")
                    dst.write(chunk)
                    left -= n
            lo, hi = np.searchsorted(starts, [start, stop], side="left")
            local = np.asarray(starts[lo:hi], dtype=np.int64) - start
            np.save(os.path.join(tmp, rel + ".docs.npy"), local, allow_pickle=False)
            entry["shards"].append({"file": rel + ".bin", "docs": rel + ".docs.npy", "index": index,
                                    "start": start, "tokens": stop - start, "documents": len(local)})
            entry["tokens"] += stop - start
            entry["documents"] += len(local)
    del starts
    return {n: splits[n] for n in names if n in splits}


def _publish(tmp: str, output: str, replace: bool) -> None:
    """Renames ``tmp`` to ``output``, moving an old ``output`` aside and deleting it after."""
    if not replace:
        os.rename(tmp, output)
        return
    trash = f"{output}.trash-{os.getpid()}"
    if os.path.lexists(trash):
        shutil.rmtree(trash)
    os.rename(output, trash)
    try:
        os.rename(tmp, output)
    except BaseException:
        os.rename(trash, output)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def prepare_dataset(inputs: str | Sequence[str], output: str, *, text_column: str | None = None,
                    text_field: str | None = None, txt_mode: str = "file",
                    split: Sequence[int] = (98, 1, 1), shard_tokens: int = 2**27,
                    tokenizer: ByteTokenizer | None = None, overwrite: bool = False,
                    progress: bool = True) -> str:
    """Tokenizes ``inputs`` (paths/globs/folders or a built-in corpus name) into ``output``.

    ``split`` = shard counts (train, val, test) per cycle; the stream is cut into
    ``ceil(T / (sum(split) * shard_tokens)) * sum(split)`` near-equal shards. Returns
    ``output``. Raises DataError on bad input, leaving no output and no temporary folder.
    """
    split = _check_args(split, shard_tokens, txt_mode)
    tokenizer = tokenizer or ByteTokenizer()
    output = os.path.normpath(os.fspath(output))
    if isinstance(inputs, str) and is_builtin(inputs):
        paths, source = builtin_paths(inputs), [inputs.strip()]
    else:
        paths = expand_inputs(inputs)
        source = [inputs] if isinstance(inputs, str) else [os.fspath(p) for p in inputs]
    own = os.path.abspath(output) + os.sep  # never read a previous run's output as text
    paths = [p for p in paths if not os.path.abspath(p).startswith(own)]
    if not paths:
        raise DataError(f"no input files outside the output folder {output}")
    replace = _check_output(output, overwrite)
    parent = os.path.dirname(output)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        total, documents = _tokenize(paths, tmp, tokenizer, progress, text_column=text_column,
                                     text_field=text_field, txt_mode=txt_mode)
        if total == 0:
            raise DataError(f"empty corpus: no text in {', '.join(source)}")
        plan = shard_plan(total, split, shard_tokens)
        splits = _write_shards(tmp, plan, list(SPLITS), documents, progress)
        os.remove(os.path.join(tmp, TOKENS_FILE))
        os.remove(os.path.join(tmp, DOCS_FILE))
        metadata = {
            "format": FORMAT, "version": VERSION, "tokenizer": tokenizer.to_dict(), "dtype": "uint16",
            "inputs": source, "files": paths,
            "options": {"text_column": text_column, "text_field": text_field, "txt_mode": txt_mode,
                        "split": list(split), "shard_tokens": shard_tokens},
            "num_shards": len(plan), "cycles": len(plan) // sum(split),
            "splits": splits, "total_tokens": total, "total_documents": documents,
        }
        with open(os.path.join(tmp, METADATA), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=1)
        _check_output(output, overwrite)  # it may have appeared meanwhile
        _publish(tmp, output, replace and os.path.lexists(output))
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return output
