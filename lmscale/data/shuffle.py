"""A seeded shuffle of the documents being prepared (``prepare_dataset(shuffle_seed=...)``).

sentiment-discovery trains on its Amazon reviews "internally shuffled" (its
analysis/reproduction.md): a review file in product order would give every batch row long
runs of one product's reviews. The shuffle runs between ``prepare``'s two passes, on its
temporary token file (all tokens, in input order) and its document starts: each document
goes to one of K bucket files drawn at random (K = tokens / ``BUCKET_TOKENS``), then each
bucket's documents are permuted and appended to the new token file. Documents keep their
tokens; their order is random (every order of two documents equally likely), reproducible
from the seed. Each part (the whole text when ``data.split`` cuts it into train / val /
test afterwards; train, val and test each within itself when they are given as their own
files) is shuffled within itself.

Memory: the document starts and lengths, about 32 bytes a document (82M reviews: ~2.7 GB),
and copies of at most ``GATHER_TOKENS`` tokens at a time (a longer document is copied in
slices); the token files are read through memory maps. Disk: the bucket files, as large as
the part, while it runs. Every write goes through the file object, so a full disk is an
OSError(ENOSPC) (``prepare`` says so), never a file silently cut short.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterator, Sequence

import numpy as np

BUCKET_TOKENS = 2**25  # tokens a bucket holds on average
CHUNK_TOKENS = 2**24  # tokens scattered into the buckets at a time
GATHER_TOKENS = 2**22  # tokens copied at a time (an int64 index of this many, 32 MiB)


def _write_documents(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                     out: BinaryIO) -> None:
    """Writes ``data[starts[i] : starts[i] + lengths[i]]`` for each i, in order, to ``out``:
    runs of short documents through one index of at most ``GATHER_TOKENS``, a longer
    document in slices of that many tokens."""
    ends = np.cumsum(lengths)
    i, n = 0, len(lengths)
    while i < n:
        done = int(ends[i - 1]) if i else 0
        j = max(i + 1, int(np.searchsorted(ends, done + GATHER_TOKENS, side="right")))
        if j == i + 1 and lengths[i] > GATHER_TOKENS:  # one long document, a slice at a time
            s, length = int(starts[i]), int(lengths[i])
            for a in range(0, length, GATHER_TOKENS):
                piece = data[s + a:s + min(length, a + GATHER_TOKENS)]
                out.write(np.ascontiguousarray(piece).tobytes())
        else:
            lens = lengths[i:j]
            first = np.cumsum(lens) - lens
            index = np.repeat(starts[i:j] - first, lens) + np.arange(int(lens.sum()))
            out.write(np.ascontiguousarray(data[index]).tobytes())
        i = j


def shuffle_documents(tokens_path: str, docs_path: str, total: int, itemsize: int, seed: int,
                      part_ends: Sequence[int] = (), bucket_tokens: int | None = None) -> int:
    """Rewrites ``tokens_path`` (``total`` raw ids of ``itemsize`` bytes) and ``docs_path``
    (int64 document starts) with each part's documents in a random order drawn from
    ``seed`` (>= 0); returns the number of documents. Parts end at ``part_ends`` (token
    counts, the last ``total``; default one part), each where a document does.
    ``bucket_tokens``: default ``BUCKET_TOKENS``."""
    bucket_tokens = int(bucket_tokens or BUCKET_TOKENS)
    dtype = np.dtype(f"<u{itemsize}")
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(total,)) if total else \
        np.zeros(0, dtype)
    starts = np.fromfile(docs_path, dtype="<i8")
    if not len(starts) or starts[0] != 0:  # tokens before the first start: one document
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = list(part_ends) or [total]
    out_tokens, out_docs = tokens_path + ".shuffled", docs_path + ".shuffled"
    written, lo, a = 0, 0, 0
    with open(out_tokens, "wb") as tok_f, open(out_docs, "wb") as doc_f:
        for part, hi in enumerate(ends):
            last = part == len(ends) - 1  # takes every start left (zero-length ones at the end too)
            b = len(starts) if last else int(np.searchsorted(starts, hi, side="left"))
            bounds = np.append(starts[a:b], hi)
            rng = np.random.default_rng([int(seed), part])
            buckets = max(1, -(-(hi - lo) // bucket_tokens))
            for lengths in _shuffled_part(tokens, bounds, buckets, rng, tokens_path, part, tok_f):
                doc_f.write((written + np.cumsum(lengths) - lengths).astype("<i8").tobytes())
                written += int(lengths.sum())
            lo, a = hi, b
    del tokens
    if written != total or os.path.getsize(out_tokens) != total * itemsize:
        raise OSError(f"the document shuffle wrote {written} of {total} tokens to {out_tokens}")
    os.replace(out_tokens, tokens_path)
    os.replace(out_docs, docs_path)
    return len(starts)


def _shuffled_part(tokens: np.ndarray, bounds: np.ndarray, buckets: int,
                   rng: np.random.Generator, tokens_path: str, part: int,
                   out: BinaryIO) -> Iterator[np.ndarray]:
    """Writes one part's documents to ``out``, permuted, a bucket at a time, yielding the
    lengths of the documents written; ``bounds``: the part's document starts and its end."""
    starts, lengths = bounds[:-1], np.diff(bounds)
    if buckets == 1 or len(lengths) < 2:  # one permutation, read through the memory map
        order = rng.permutation(len(lengths))
        _write_documents(tokens, starts[order], lengths[order], out)
        yield lengths[order]
        return
    names = [f"{tokens_path}.part{part}.bucket{k}" for k in range(buckets)]
    try:
        first = 0
        while first < len(lengths):  # scatter: documents in input order, a chunk at a time
            last = int(np.searchsorted(starts, starts[first] + CHUNK_TOKENS, side="left"))
            last = max(last, first + 1)
            pick = rng.integers(buckets, size=last - first)
            # The chunk's tokens mapped on their own: pages read through the whole file's map
            # stayed in the process's RSS until the end (a 1 GB corpus: 1.9 GB peak).
            lo_tok, hi_tok = int(starts[first]), int(starts[last - 1] + lengths[last - 1])
            chunk = _read_tokens(tokens, tokens_path, lo_tok, hi_tok)
            for k in np.unique(pick):
                mine = np.flatnonzero(pick == k) + first
                with open(names[k], "ab") as f:  # a record: lengths, tokens, its two counts
                    f.write(np.asarray(lengths[mine], "<i8").tobytes())
                    _write_documents(chunk, starts[mine] - lo_tok, lengths[mine], f)
                    f.write(np.asarray([len(mine), int(lengths[mine].sum())], "<i8").tobytes())
            first = last
        for name in names:  # gather: each bucket's documents in a random order
            if os.path.exists(name):
                doc_starts, doc_lengths = _bucket_documents(name, tokens.dtype)
                order = rng.permutation(len(doc_lengths))
                data = np.memmap(name, dtype=tokens.dtype, mode="r")
                _write_documents(data, doc_starts[order], doc_lengths[order], out)
                del data
                os.remove(name)
                yield doc_lengths[order]
    finally:
        for name in names:
            if os.path.exists(name):
                os.remove(name)


def _read_tokens(tokens: np.ndarray, path: str, lo: int, hi: int) -> np.ndarray:
    """Tokens [lo, hi) of the raw file at ``path`` (``tokens``: its map, for the dtype), mapped
    on their own: their pages leave the process when the caller drops the array (a document
    longer than a chunk is never read whole into memory)."""
    if not isinstance(tokens, np.memmap) or hi == lo:
        return tokens[lo:hi]
    return np.memmap(path, dtype=tokens.dtype, mode="r", offset=lo * tokens.dtype.itemsize,
                     shape=(hi - lo,))


def _bucket_documents(name: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of a bucket file's documents, as positions in the file read as
    ``dtype`` (every record's parts are multiples of 8 bytes long but its tokens, so each
    token region starts at a multiple of the itemsize), in the order they were written."""
    raw = np.memmap(name, dtype=np.uint8, mode="r")
    records, end = [], raw.size
    while end:
        count, size = np.frombuffer(raw[end - 16:end].tobytes(), "<i8")
        body = end - 16 - int(size) * dtype.itemsize
        begin = body - int(count) * 8
        lengths = np.frombuffer(raw[begin:body].tobytes(), "<i8")
        records.append((body // dtype.itemsize + np.cumsum(lengths) - lengths, lengths))
        end = begin
    del raw
    records.reverse()
    return (np.concatenate([r[0] for r in records]).astype(np.int64),
            np.concatenate([r[1] for r in records]).astype(np.int64))
