"""Texts packed end to end into rows, for reading them with an LM.

Batching texts side by side pads every row to the batch's longest text: on SST's test
sentences (sorted by length, rows of 128, chunks of 128 bytes) 41-48 % of the bytes an LM
read were padding. Packed, each row reads several texts one after another, the state reset
at each text's first token (the model's ``resets``), so a row's only padding is its tail:
a text goes to the row that is shortest so far, longest texts first, and rows end within
one text's length of each other.

``pack`` makes the plan; ``chunk`` cuts the [rows, width] token grid into the [rows, t]
pieces an LM reads in turn (its state carried between them), with the positions where
texts end, so the features are picked there. A piece finds its texts by one sorted search
per row (``chunk_texts``), so its host work is its rows' texts, whatever the longest text.

A model that carries no state (the transformer) reads a row in one call, its attention
masked to each text (the same ``resets``). ``pack_bins`` packs for it: rows of a few widths
(powers of two times 32, up to its length limit), each text in the fullest row it fits,
so no text is split and a short text does not pay for attention over a long row;
``rows_piece`` takes whole rows of one width.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where each text lies: row ``row[i]``, tokens [start[i], start[i] + length[i])."""
    row: np.ndarray  # int [N]
    start: np.ndarray  # int [N]
    length: np.ndarray  # int [N]
    rows: int
    width: int  # the longest row's tokens
    by_row: np.ndarray  # int [N]: the texts by row, then start
    row_first: np.ndarray  # int [rows + 1]: row r's texts are by_row[row_first[r]:row_first[r + 1]]
    # by_row's starts and ends, each plus row * (width + 1): increasing, so one searchsorted
    # finds every row's texts around a column (``chunk``)
    row_starts: np.ndarray  # int [N]
    row_stops: np.ndarray  # int [N]

    @property
    def efficiency(self) -> float:
        """Real tokens over rows x width (1.0: no padding)."""
        return float(self.length.sum()) / max(1, self.rows * self.width)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One [rows, t] piece of the grid: tokens (pad after a row's last text), resets (True at
    each text's first token), the text each position belongs to (``owner``, -1 in padding),
    and per row the positions in the piece where texts end (``ends`` [rows, K], 0 where
    unused) and which texts they are (``texts`` [rows, K], -1 where unused)."""
    tokens: np.ndarray
    resets: np.ndarray
    owner: np.ndarray
    ends: np.ndarray
    texts: np.ndarray


def rows_for(batch_size: int, texts: int, devices: int) -> int:
    """Rows to read ``texts`` texts in: ``batch_size``, but no more than the texts rounded up
    to a power of two (the extra rows are padding), and to a multiple of ``devices`` (at least
    one row per device). Powers of two: a notebook calling with 1, 2, 3 ... texts compiled a
    program for every count (20 calls, 20 compiles, +170 MB); now one per power of two."""
    need = max(1, min(batch_size, texts))
    bucket = min(batch_size, 1 << (need - 1).bit_length())
    return max(devices, -(-bucket // devices) * devices)


def pack(lengths: Sequence[int], rows: int) -> Packing:
    """Longest text first, each to the row with the fewest tokens so far (ties: lowest row)."""
    length = np.asarray(lengths, np.int64)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if length.size and length.min() < 1:
        raise ValueError(f"text {int(np.argmin(length))} has no tokens")
    row, start = np.zeros(len(length), np.int64), np.zeros(len(length), np.int64)
    fill = [(0, r) for r in range(rows)]  # a heap of (tokens so far, row)
    for i in np.argsort(-length, kind="stable"):
        used, r = heapq.heappop(fill)
        row[i], start[i] = r, used
        heapq.heappush(fill, (used + int(length[i]), r))
    return _plan(row, start, length, rows, max(used for used, _ in fill))


def _plan(row: np.ndarray, start: np.ndarray, length: np.ndarray, rows: int, width: int
          ) -> Packing:
    by_row = np.lexsort((start, row))
    base = row[by_row] * (width + 1)
    return Packing(row=row, start=start, length=length, rows=rows, width=width, by_row=by_row,
                   row_first=np.searchsorted(row[by_row], np.arange(rows + 1)),
                   row_starts=base + start[by_row],
                   row_stops=base + (start + length)[by_row])


def pack_bins(lengths: Sequence[int], limit: int, narrowest: int = 32
              ) -> list[tuple[np.ndarray, Packing]]:
    """Texts in rows of at most ``limit`` tokens, for an LM that reads a row in one call.

    Longest text first, each to the row with the least room that holds it (best fit); where
    none does, it opens a row as wide as itself rounded up to ``narrowest`` times a power of
    two (at most ``limit``). Returns one (texts [n] int, plan) per width, widest first: the
    plan's texts are those indices into ``lengths``, its ``width`` the rows' width."""
    length = np.asarray(lengths, np.int64)
    if limit < 1 or narrowest < 1:
        raise ValueError(f"limit and narrowest must be >= 1, got {limit} and {narrowest}")
    if length.size and length.min() < 1:
        raise ValueError(f"text {int(np.argmin(length))} has no tokens")
    if length.size and length.max() > limit:
        raise ValueError(f"text {int(np.argmax(length))} has {int(length.max())} tokens, over "
                         f"the rows' limit of {limit}")
    row, start = np.zeros(len(length), np.int64), np.zeros(len(length), np.int64)
    width: list[int] = []  # per row
    used: list[int] = []
    room: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in np.argsort(-length, kind="stable"):
        n = int(length[i])
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            left, r = room.pop(k)
        else:
            w = narrowest
            while w < n:
                w *= 2
            r, left = len(width), min(w, limit)
            width.append(left)
            used.append(0)
        row[i], start[i] = r, used[r]
        used[r] += n
        if left > n:
            bisect.insort(room, (left - n, r))
    groups = []
    widths = np.asarray(width, np.int64)
    for w in sorted(set(width), reverse=True):
        rows = np.flatnonzero(widths == w)
        number = np.full(len(width), -1, np.int64)
        number[rows] = np.arange(len(rows))
        texts = np.flatnonzero(widths[row] == w)
        groups.append((texts, _plan(number[row[texts]], start[texts], length[texts],
                                    len(rows), int(w))))
    return groups


def ends_per_chunk(packing: Packing, t: int) -> int:
    """The most texts that end in one row of one [rows, t] piece (at least 1)."""
    last = packing.start + packing.length - 1
    if not last.size:
        return 1
    _, counts = np.unique(packing.row * (packing.width // t + 1) + last // t, return_counts=True)
    return int(counts.max())


def texts_per_row(packing: Packing) -> int:
    """The most texts in one row (at least 1)."""
    return int(np.diff(packing.row_first).max(initial=1))


def rows_piece(packing: Packing, ids: Sequence[np.ndarray], first: int, count: int, slots: int,
               pad: int) -> Chunk:
    """Rows [first, first + count) of the grid, whole ([count, width]; rows past the plan's
    are padding); ``slots`` >= ``texts_per_row``."""
    tokens = np.full((count, packing.width), pad, np.int32)
    resets = np.zeros((count, packing.width), bool)
    owner = np.full((count, packing.width), -1, np.int64)
    ends = np.zeros((count, slots), np.int32)
    texts = np.full((count, slots), -1, np.int64)
    stop = min(first + count, packing.rows)
    used = np.zeros(count, np.int64)
    for i in packing.by_row[packing.row_first[min(first, stop)]:packing.row_first[stop]]:
        r, s = packing.row[i] - first, packing.start[i]
        e, k = s + packing.length[i], used[r]
        if k >= slots:
            raise ValueError(f"more than slots={slots} texts in row {r + first}")
        tokens[r, s:e], owner[r, s:e], resets[r, s] = ids[i], i, True
        ends[r, k], texts[r, k], used[r] = e - 1, i, k + 1
    return Chunk(tokens=tokens, resets=resets, owner=owner, ends=ends, texts=texts)


def chunk(packing: Packing, ids: Sequence[np.ndarray], offset: int, t: int, slots: int,
          pad: int) -> Chunk:
    """The piece of the grid at token columns [offset, offset + t); ``slots`` >= the texts
    ending in any row of it (``ends_per_chunk``)."""
    tokens = np.full((packing.rows, t), pad, np.int32)
    resets = np.zeros((packing.rows, t), bool)
    owner = np.full((packing.rows, t), -1, np.int64)
    ends = np.zeros((packing.rows, slots), np.int32)
    texts = np.full((packing.rows, slots), -1, np.int64)
    used = np.zeros(packing.rows, np.int64)
    for i in chunk_texts(packing, offset, t):
        r, s = packing.row[i], packing.start[i]
        e = s + packing.length[i]
        lo, hi = max(s, offset), min(e, offset + t)
        tokens[r, lo - offset:hi - offset] = ids[i][lo - s:hi - s]
        owner[r, lo - offset:hi - offset] = i
        if s >= offset:
            resets[r, s - offset] = True
        if e <= offset + t:
            k = used[r]
            if k >= slots:
                raise ValueError(f"more than slots={slots} texts end in row {r} of the chunk "
                                 f"at {offset}")
            ends[r, k], texts[r, k], used[r] = e - 1 - offset, i, k + 1
    return Chunk(tokens=tokens, resets=resets, owner=owner, ends=ends, texts=texts)


def chunk_texts(packing: Packing, offset: int, t: int) -> np.ndarray:
    """The texts with a token in columns [offset, offset + t), by row then start: per row
    those that end after ``offset`` and start before ``offset + t``, found by one search per
    row, so a piece costs its rows and the texts it holds (not the longest text, nor N)."""
    base = np.arange(packing.rows, dtype=np.int64) * (packing.width + 1)
    first = np.searchsorted(packing.row_stops, base + min(max(offset, 0), packing.width),
                            side="right")
    stop = np.searchsorted(packing.row_starts, base + min(max(offset + t, 0), packing.width),
                           side="left")
    count = np.maximum(stop - first, 0)
    # the ranges [first[r], stop[r]) joined
    at = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
    return packing.by_row[at]
