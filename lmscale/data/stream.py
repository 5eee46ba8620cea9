"""Batches for a stateful RNN language model: each row reads one contiguous stretch.

The split's shards, in epoch order, form a virtual stream of T tokens. Row r of the
batch owns the stretch ``[r * L, (r + 1) * L)`` with ``L = T // batch_size``; step k of
an epoch reads ``S = seq_len`` inputs at ``r * L + k * S`` and the targets one token
later. So the recurrent state a row carries from step k to k + 1 continues the same
text, and every batch is a pure function of the global step (resuming needs only it).

``resets[r, t]`` (zero the state before ``inputs[r, t]``) marks shard starts, the start
of a row's stretch (k == 0, t == 0) and, with ``reset_on_documents``, document starts
(an integer N: every N-th document of a shard, counted from its first: sentiment-discovery
resets its state at each of its shards of 100 reviews). ``weights[r, t]`` is 0 where the
target is such a start: predicting across an unrelated boundary is not counted.

Every batch read is checked against the vocabulary (one max over the ids read): an id
outside it, which only a damaged shard file holds, is a DataError naming the file and the
id, not a model that diverges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmscale.data.dataset import SplitData
from lmscale.data.errors import DataError


@dataclass(frozen=True)
class LMBatch:
    """One step's rows: all arrays are [rows, seq_len]."""

    inputs: np.ndarray  # int32 token ids
    targets: np.ndarray  # int32 token ids, inputs shifted by one in the stream
    weights: np.ndarray  # float32, 1 = counted target, 0 = masked
    resets: np.ndarray  # bool, True = zero the state before consuming inputs[:, t]


def document_resets(data_config: Any) -> int:
    """Every how many documents of a shard the state is zeroed (0: never): 1 with
    ``data.reset_on_documents``, else ``data.reset_every_documents``."""
    if data_config.reset_on_documents:
        return 1
    return int(data_config.get("reset_every_documents", 0))


class StreamBatcher:
    """Deterministic [batch_size, seq_len] LM batches over one split (see module doc)."""

    def __init__(self, split: SplitData, batch_size: int, seq_len: int, *,
                 reset_on_documents: bool | int = False, shuffle_shards: bool = False, seed: int = 0,
                 vocab_size: int | None = None) -> None:
        """``reset_on_documents``: True (or 1) resets at every document start, N at every N-th
        (``document_resets``). ``vocab_size``: ids read must be below it (default: the
        split's, its dataset's tokenizer's; no check where it has none)."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if int(seq_len) != seq_len or seq_len < 1:
            raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
        self.split = split
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        if int(reset_on_documents) != reset_on_documents or reset_on_documents < 0:
            raise DataError(f"reset_on_documents must be a bool or a count >= 0, got "
                            f"{reset_on_documents!r}")
        self.reset_every = int(reset_on_documents)  # True: 1
        self.reset_on_documents = self.reset_every > 0
        self.shuffle_shards = bool(shuffle_shards)
        self.seed = int(seed)
        self.num_tokens = int(split.shard_lengths.sum())
        self.row_length = self.num_tokens // self.batch_size
        if self.row_length - 1 < self.seq_len:
            raise DataError(f"{split.described} has {self.num_tokens} tokens: too few for batch_size "
                            f"{self.batch_size} x (seq_len {self.seq_len} + 1)")
        for i, n in enumerate(split.shard_lengths):
            if n < self.seq_len + 1:
                raise DataError(f"sequence longer than a shard: shard {i} of {split.described} has "
                                f"{int(n)} tokens, seq_len is {self.seq_len}; use shorter sequences or "
                                f"larger shards")
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self.vocab_size = int(vocab_size) if vocab_size is not None else split.vocab_size

    @property
    def steps_per_epoch(self) -> int:
        return (self.row_length - 1) // self.seq_len

    @property
    def tail_length(self) -> int:
        """Inputs of each row's stretch after an epoch's full steps (< seq_len): what ``tail``
        reads, so that an evaluation scores every target of the stretch."""
        return (self.row_length - 1) - self.steps_per_epoch * self.seq_len

    def tail(self, rows: tuple[int, int] | None = None) -> LMBatch:
        """Rows ``rows`` of the ``tail_length`` inputs after the first epoch's last step: they
        continue its rows' stretches (the state carried on), [rows, tail_length] arrays."""
        start, stop = self.checked_rows(0, rows)
        if self.tail_length < 1:
            raise DataError(f"{self.split.described}: its rows have no tail after "
                            f"{self.steps_per_epoch} steps of {self.seq_len}")
        return self.read(0, self.steps_per_epoch * self.seq_len, self.tail_length, (start, stop),
                         epoch_start=False)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def epoch_of(self, step: int) -> int:
        return int(step) // self.steps_per_epoch

    def tokens_in_step(self, step: int) -> int:
        """Input tokens of the global batch of ``step`` (rows x its length)."""
        return self.tokens_per_step

    def epochs_done(self, steps: int) -> float:
        """Epochs (with the fraction of the current one) that ``steps`` steps have read."""
        return int(steps) / self.steps_per_epoch

    def epoch_step(self, epochs: float) -> float:
        """The step where ``epochs`` epochs end (settings given in epochs: ``config.derive``)."""
        return float(epochs) * self.steps_per_epoch

    def shard_order(self, epoch: int) -> np.ndarray:
        """Shard indices in the order the epoch's virtual stream concatenates them."""
        n = len(self.split.shards)
        if not self.shuffle_shards:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, stream offsets [n + 1] of the shards in that order) for ``epoch``."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = self.shard_order(epoch)
            offsets = np.concatenate([[0], np.cumsum(self.split.shard_lengths[order])])
            self._epoch_cache = (epoch, order, offsets)
        return self._epoch_cache[1], self._epoch_cache[2]

    def checked_rows(self, step: int, rows: tuple[int, int] | None) -> tuple[int, int]:
        """(start, stop) of ``rows`` (default: all), after checking ``step`` and ``rows``."""
        if int(step) != step or step < 0:
            raise DataError(f"step must be a non-negative integer, got {step!r}")
        start, stop = (0, self.batch_size) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= start <= stop <= self.batch_size:
            raise DataError(f"rows {rows!r} are outside the batch of {self.batch_size} rows")
        return start, stop

    def batch(self, step: int, rows: tuple[int, int] | None = None) -> LMBatch:
        """Rows ``rows = (start, stop)`` (default: all) of the global batch of ``step``."""
        start, stop = self.checked_rows(step, rows)
        epoch, k = divmod(int(step), self.steps_per_epoch)
        return self.read(epoch, k * self.seq_len, self.seq_len, (start, stop), epoch_start=k == 0)

    def read(self, epoch: int, position: int, length: int, rows: tuple[int, int],
             epoch_start: bool) -> LMBatch:
        """Rows ``rows`` of ``length`` inputs at ``position`` of each row's stretch in ``epoch``'s
        stream (``epoch_start``: the state is zeroed before the first input)."""
        start, stop = rows
        order, offsets = self._layout(epoch)
        S, width = int(length), int(length) + 1
        count = stop - start
        window = np.empty((count, width), dtype=np.int32)
        shard_start = np.zeros((count, width), dtype=bool)
        doc_start = np.zeros((count, width), dtype=bool)
        for j, r in enumerate(range(start, stop)):
            w = r * self.row_length + position  # stream position of inputs[r, 0]
            i = int(np.searchsorted(offsets, w, side="right")) - 1
            filled = 0
            while filled < width:
                shard, base = int(order[i]), int(offsets[i])
                lo = w + filled - base
                hi = min(w + width - base, int(offsets[i + 1]) - base)
                window[j, filled:filled + hi - lo] = self.split.shards[shard][lo:hi]
                if lo == 0:
                    shard_start[j, filled] = True
                if self.reset_on_documents:
                    starts = self.split.doc_starts[shard]
                    a, b = np.searchsorted(starts, [lo, hi], side="left")
                    picked = np.arange(a, b)  # the shard's documents a .. b - 1
                    if self.reset_every > 1:
                        picked = picked[picked % self.reset_every == 0]
                    doc_start[j, starts[picked] - lo + filled] = True
                filled += hi - lo
                i += 1
        # One pass over the ids read; as uint32, an id of a uint32 shard >= 2**31 (negative
        # in int32) is too large as well.
        if self.vocab_size is not None and count and window.view(np.uint32).max() >= self.vocab_size:
            self._bad_id(window, start, position, offsets, order)
        boundary = shard_start | doc_start
        resets = boundary[:, :S].copy()
        if epoch_start:
            resets[:, 0] = True
        return LMBatch(inputs=window[:, :S].copy(), targets=window[:, 1:].copy(),
                       weights=(~boundary[:, 1:]).astype(np.float32), resets=resets)

    def _bad_id(self, window: np.ndarray, start: int, position: int, offsets: np.ndarray,
                order: np.ndarray) -> None:
        """Raises the DataError for the first id of ``window`` outside the vocabulary."""
        j, t = np.argwhere(window.view(np.uint32) >= self.vocab_size)[0]
        w = (start + int(j)) * self.row_length + position + int(t)  # its stream position
        i = int(np.searchsorted(offsets, w, side="right")) - 1
        shard, index = int(order[i]), w - int(offsets[i])
        data = self.split.shards[shard]
        name = getattr(data, "filename", None) or f"shard {shard} of {self.split.described}"
        raise DataError(f"{name}: token id {int(data[index])} at token {index:,} is outside the "
                        f"vocabulary of {self.vocab_size} ids: the shard file is damaged (prepare "
                        f"the dataset again)")

    def __repr__(self) -> str:
        return (f"StreamBatcher(split={self.split.name!r}, batch_size={self.batch_size}, "
                f"seq_len={self.seq_len}, steps_per_epoch={self.steps_per_epoch})")
