"""A seeded shuffle of the documents being prepared (``prepare_dataset(shuffle_seed=...)``).

sentiment-discovery trains on its Amazon reviews "internally shuffled" (its
analysis/reproduction.md): a review file in product order would give every batch row long
runs of one product's reviews. The shuffle runs between ``prepare``'s two passes, on its
temporary token file (all tokens, in input order) and its document starts, without
holding the corpus in memory: each document goes to one of K bucket files drawn at random
(K = tokens / ``BUCKET_TOKENS``), then each bucket's documents are permuted in memory and
appended to the new token file. Documents keep their tokens; their order is random (every
order of two documents equally likely), reproducible from the seed. Each part (train, and
val / test given as their own files) is shuffled within itself.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

BUCKET_TOKENS = 2**25  # tokens a bucket holds on average: its permutation is done in memory
CHUNK_TOKENS = 2**24  # tokens read at a time while scattering into the buckets


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The documents ``data[starts[i] : starts[i] + lengths[i]]``, concatenated in order."""
    if not len(lengths):
        return data[:0]
    first = np.cumsum(lengths) - lengths  # each document's offset in the output
    index = np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))
    return data[index]


def shuffle_documents(tokens_path: str, docs_path: str, total: int, itemsize: int, seed: int,
                      part_ends: Sequence[int] = (), bucket_tokens: int = BUCKET_TOKENS) -> int:
    """Rewrites ``tokens_path`` (``total`` raw ids of ``itemsize`` bytes) and ``docs_path``
    (int64 document starts) with each part's documents in a seeded random order; returns the
    number of documents. Parts end at ``part_ends`` (token counts, the last ``total``;
    default one part); each ends where a document does."""
    dtype = np.dtype(f"<u{itemsize}")
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(total,))
    starts = np.fromfile(docs_path, dtype="<i8")
    if not len(starts) or starts[0] != 0:  # tokens before the first start: one document
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = list(part_ends) or [total]
    out_tokens, out_docs = tokens_path + ".shuffled", docs_path + ".shuffled"
    with open(out_tokens, "wb") as tok_f, open(out_docs, "wb") as doc_f:
        written, lo = 0, 0
        for part, hi in enumerate(ends):
            a, b = np.searchsorted(starts, [lo, hi], side="left")
            bounds = np.append(starts[a:b], hi)
            rng = np.random.default_rng([int(seed), part])
            buckets = max(1, -(-(hi - lo) // int(bucket_tokens)))
            for data, lengths in _shuffled_part(tokens, bounds, buckets, rng, tokens_path, part):
                tok_f.write(np.ascontiguousarray(data, dtype=dtype).tobytes())
                doc_f.write((written + np.cumsum(lengths) - lengths).astype("<i8").tobytes())
                written += int(lengths.sum())
            lo = hi
    del tokens
    os.replace(out_tokens, tokens_path)
    os.replace(out_docs, docs_path)
    return len(starts)


def _shuffled_part(tokens: np.ndarray, bounds: np.ndarray, buckets: int,
                   rng: np.random.Generator, tokens_path: str, part: int):
    """Yields (tokens, document lengths) of one part's documents, permuted, a bucket at a
    time; ``bounds``: the part's document starts and its end."""
    starts, lengths = bounds[:-1], np.diff(bounds)
    if buckets == 1:  # the part fits in memory: one permutation
        order = rng.permutation(len(lengths))
        yield _gather(tokens, starts[order], lengths[order]), lengths[order]
        return
    names = [f"{tokens_path}.part{part}.bucket{k}" for k in range(buckets)]
    try:
        first = 0
        while first < len(lengths):  # scatter: documents in input order, about a chunk at a time
            last = int(np.searchsorted(starts, starts[first] + CHUNK_TOKENS, side="left"))
            last = max(last, first + 1)
            pick = rng.integers(buckets, size=last - first)
            for k in np.unique(pick):
                mine = np.flatnonzero(pick == k) + first
                with open(names[k], "ab") as f:
                    data = _gather(tokens, starts[mine], lengths[mine])
                    np.asarray(lengths[mine], "<i8").tofile(f)
                    data.tofile(f)
                    np.asarray([len(mine), data.size], "<i8").tofile(f)  # the record's footer
            first = last
        for name in names:  # gather: each bucket's documents in a random order
            if not os.path.exists(name):
                continue
            parts_l, parts_d = _read_bucket(name, tokens.dtype)
            os.remove(name)
            lens = np.concatenate(parts_l)
            data = np.concatenate(parts_d)
            order = rng.permutation(len(lens))
            yield _gather(data, (np.cumsum(lens) - lens)[order], lens[order]), lens[order]
    finally:
        for name in names:
            if os.path.exists(name):
                os.remove(name)


def _read_bucket(name: str, dtype: np.dtype) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A bucket file's records (lengths, then tokens, then their two counts), read from the
    end: (lengths, tokens) of each, in the order they were written."""
    raw = np.fromfile(name, dtype=np.uint8)
    lengths, datas, end = [], [], raw.size
    while end:
        n, size = np.frombuffer(raw[end - 16:end].tobytes(), "<i8")
        body = end - 16 - int(size) * dtype.itemsize
        start = body - int(n) * 8
        lengths.append(np.frombuffer(raw[start:body].tobytes(), "<i8"))
        datas.append(np.frombuffer(raw[body:end - 16].tobytes(), dtype))
        end = start
    return lengths[::-1], datas[::-1]
