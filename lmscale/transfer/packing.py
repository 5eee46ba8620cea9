"""Texts packed end to end into rows, for reading them with a recurrent LM.

Batching texts side by side pads every row to the batch's longest text: on SST's test
sentences (sorted by length, rows of 128, chunks of 128 bytes) 41-48 % of the bytes an LM
read were padding. Packed, each row reads several texts one after another, the state reset
at each text's first token (the model's ``resets``), so a row's only padding is its tail:
a text goes to the row that is shortest so far, longest texts first, and rows end within
one text's length of each other.

``pack`` makes the plan; ``chunk`` cuts the [rows, width] token grid into the [rows, t]
pieces an LM reads in turn (its state carried between them), with the positions where
texts end, so the features are picked there.
"""

from __future__ import annotations

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
    by_stop: np.ndarray  # int [N]: the texts in the order they end (start + length)
    stops: np.ndarray  # int [N]: their ends in that order

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
    """Rows to read ``texts`` texts in: ``batch_size``, but no more than the texts, rounded up
    to a multiple of ``devices`` (at least one row per device)."""
    return max(devices, -(-min(batch_size, texts) // devices) * devices)


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
    width = max(used for used, _ in fill)
    by_stop = np.argsort(start + length, kind="stable")
    return Packing(row=row, start=start, length=length, rows=rows, width=width,
                   by_stop=by_stop, stops=(start + length)[by_stop])


def ends_per_chunk(packing: Packing, t: int) -> int:
    """The most texts that end in one row of one [rows, t] piece (at least 1)."""
    last = packing.start + packing.length - 1
    if not last.size:
        return 1
    _, counts = np.unique(packing.row * (packing.width // t + 1) + last // t, return_counts=True)
    return int(counts.max())


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
    stop = packing.start + packing.length
    # The texts that overlap the piece end in (offset, offset + t + longest): a slice in
    # end order, so a piece costs what it holds, not the number of texts.
    longest = int(packing.length.max(initial=0))
    lo_i, hi_i = np.searchsorted(packing.stops, [offset, offset + t + longest], side="right")
    for i in packing.by_stop[lo_i:hi_i]:
        if packing.start[i] >= offset + t:
            continue
        r, s, e = packing.row[i], packing.start[i], stop[i]
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
