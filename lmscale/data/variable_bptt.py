"""Variable-length BPTT (AWD-LSTM) batches whose every position is a function of the step.

salesforce/awd-lstm-lm main.py draws each step's length as: base = seq_len with probability
0.95, else seq_len / 2; length = max(5, int(N(base, 5))); the step's learning rate is scaled
by length / seq_len, and the stream advances by length. Here the draws of epoch ``e`` come
from a NumPy generator seeded with (seed, e) — vectorized, one epoch at a time — and each
length is then capped at ``max_len`` and rounded to a multiple of ``bucket`` (so the jitted
step compiles at most ``len(lengths())`` programs: one per distinct shape). Positions are the
prefix sums of the lengths; an epoch ends before the first length that no longer fits in
a row's stretch (the remainder, shorter than one sequence, is skipped). The number of steps
of each epoch follows from its draws, so ``step -> (epoch, position, length)`` needs only
the seed: a resumed run reads exactly the batches an uninterrupted one would.

Rows read their stretches exactly as ``StreamBatcher`` (same resets and weights);
``steps_per_epoch`` is epoch 0's count (epochs differ by a step or so); epoch settings
(train.epochs, optim.lr_drop_epochs, decay_epochs) are converted at each epoch's own end, a
fraction of an epoch as that fraction of its tokens (``epoch_step``, ``config.derive``).
"""

from __future__ import annotations

import numpy as np

from lmscale.data.dataset import SplitData
from lmscale.data.errors import DataError
from lmscale.data.stream import LMBatch, StreamBatcher

P_FULL = 0.95  # probability of the full base length (else half of it)
SIGMA = 5.0  # standard deviation of the jitter
MIN_LEN = 5  # AWD-LSTM's floor on a drawn length
_STREAM = 0x5EB7  # separates these draws from other uses of the seed


def length_bounds(max_len: int, bucket: int) -> tuple[int, int]:
    """(shortest, longest) length a step draws: MIN_LEN rounded up to ``bucket``, ``max_len``
    (train.bptt_max) rounded down to it (``lmscale.plan`` compiles the longest)."""
    shortest = -(-MIN_LEN // int(bucket)) * int(bucket)
    return shortest, max(shortest, (int(max_len) // int(bucket)) * int(bucket))


class VariableBPTTBatcher(StreamBatcher):
    """Batches of a variable number of columns, ``batch(step)`` [rows, length(step)]."""

    def __init__(self, split: SplitData, batch_size: int, seq_len: int, *, max_len: int,
                 bucket: int = 5, reset_on_documents: bool | int = False, shuffle_shards: bool = False,
                 seed: int = 0) -> None:
        super().__init__(split, batch_size, seq_len, reset_on_documents=reset_on_documents,
                         shuffle_shards=shuffle_shards, seed=seed)
        if bucket < 1 or max_len < seq_len:
            raise DataError(f"variable BPTT needs bucket >= 1 and max_len >= seq_len, got "
                            f"bucket={bucket}, max_len={max_len}")
        self.bucket = int(bucket)
        self.min_len, self.max_len = length_bounds(max_len, bucket)
        if self.row_length - 1 < self.max_len:
            raise DataError(f"split {split.name!r} has {self.num_tokens} tokens: too few for batch_size "
                            f"{self.batch_size} x (train.bptt_max {self.max_len} + 1)")
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch_starts = [0]  # global step of each epoch's first step, as far as known

    def lengths(self) -> list[int]:
        """Every length a step can have (the compiled shapes)."""
        return list(range(self.min_len, self.max_len + 1, self.bucket))

    def draw(self, epoch: int, count: int) -> np.ndarray:
        """``count`` lengths of ``epoch`` (before the epoch's end is applied): ``count``
        uniforms, then ``count`` normals of the epoch's generator (the normals, and so the
        lengths, depend on ``count``; ``epoch_plan`` uses ``_epoch_draws``)."""
        rng = np.random.default_rng([self.seed, _STREAM, int(epoch)])
        return self._lengths(rng.random(count), rng.standard_normal(count))

    def _lengths(self, uniform: np.ndarray, noise: np.ndarray) -> np.ndarray:
        full = uniform < P_FULL
        base = np.where(full, float(self.seq_len), self.seq_len / 2.0)
        drawn = np.maximum(MIN_LEN, np.trunc(base + SIGMA * noise)).astype(np.int64)  # int() as awd
        drawn = np.minimum(drawn, self.max_len)
        bucketed = np.rint(drawn / self.bucket).astype(np.int64) * self.bucket
        return np.clip(bucketed, self.min_len, self.max_len)

    def _epoch_lengths(self, epoch: int) -> np.ndarray:
        """The lengths ``draw(epoch, row_length // min_len + 1)`` gives (the draws that
        cannot run out), computed a chunk at a time and only until they pass the row's
        stretch: memory of the epoch's steps, not of row_length / min_len draws (a batch of
        1 row over 234M tokens drew 47M lengths, 1.9 GB at its peak). The uniforms and the
        normals come from two copies of the generator, the second advanced past the
        ``count`` uniforms (each one 64-bit draw), so the values are the same."""
        count = self.row_length // self.min_len + 1
        seed = [self.seed, _STREAM, int(epoch)]
        uniforms, normals = np.random.default_rng(seed), np.random.default_rng(seed)
        normals.bit_generator.advance(count)
        chunks, total, drawn = [], 0, 0
        chunk = max(1024, 2 * (self.row_length // max(1, self.seq_len)))
        while drawn < count and total <= self.row_length - 1:
            n = min(chunk, count - drawn)
            part = self._lengths(uniforms.random(n), normals.standard_normal(n))
            chunks.append(part)
            total += int(part.sum())
            drawn += n
        return np.concatenate(chunks)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, lengths) of ``epoch``'s steps in each row's stretch."""
        plan = self._epochs.get(epoch)
        if plan is None:
            lengths = self._epoch_lengths(epoch)
            ends = np.cumsum(lengths)
            n = int(np.searchsorted(ends, self.row_length - 1, side="right"))  # end + 1 target fits
            positions = np.concatenate([[0], ends[:n - 1]])
            plan = (positions, lengths[:n].copy())  # not a view that keeps every draw alive
            if len(self._epochs) > 4:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = plan
        return plan

    @property
    def steps_per_epoch(self) -> int:
        """Epoch 0's step count (the nominal epoch, for settings given in epochs)."""
        if not hasattr(self, "_epochs"):  # the base class asks during __init__
            return super().steps_per_epoch
        return len(self.epoch_plan(0)[0])

    def _epoch_start(self, epoch: int) -> int:
        """The global step of ``epoch``'s first step."""
        starts = self._epoch_starts
        while len(starts) <= epoch:
            starts.append(starts[-1] + len(self.epoch_plan(len(starts) - 1)[0]))
        return starts[epoch]

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of a global step."""
        step = int(step)
        starts = self._epoch_starts
        while starts[-1] <= step:
            self._epoch_start(len(starts))
        epoch = int(np.searchsorted(starts, step, side="right")) - 1
        return epoch, step - starts[epoch]

    def epoch_step(self, epochs: float) -> float:
        """The step where ``epochs`` epochs end (settings given in epochs: ``config.derive``):
        each epoch its own step count, a fraction of an epoch that fraction of its tokens, as
        ``epochs_done`` counts it (its ceiling is the first step that has read them: as a
        fraction of its steps, train.epochs=1.5 ended a step or two from eval_every_epochs=0.5's
        pass at 1.5, two validations at the end or none scheduled)."""
        whole = int(epochs)
        start = self._epoch_start(whole)
        fraction = float(epochs) - whole
        if not fraction:
            return float(start)
        positions, lengths = self.epoch_plan(whole)
        target = fraction * float(positions[-1] + lengths[-1])
        k = int(np.searchsorted(positions, target, side="right")) - 1
        return start + k + (target - float(positions[k])) / float(lengths[k])

    def epoch_of(self, step: int) -> int:
        return self.locate(step)[0]

    def tokens_in_step(self, step: int) -> int:
        return self.batch_size * self.length_of(step)

    def epochs_done(self, steps: int) -> float:
        """Epochs (with the fraction of the current one) that ``steps`` steps have read: each
        epoch has its own count of steps (``steps_per_epoch`` is epoch 0's; step / it drifted
        by about an epoch in 186), the fraction of its tokens read (its steps' lengths vary:
        a fraction of its steps was up to 5 % off)."""
        epoch, k = self.locate(steps)
        positions, lengths = self.epoch_plan(epoch)
        return epoch + float(positions[k]) / float(positions[-1] + lengths[-1])

    def length_of(self, step: int) -> int:
        epoch, k = self.locate(step)
        return int(self.epoch_plan(epoch)[1][k])

    def batch(self, step: int, rows: tuple[int, int] | None = None) -> LMBatch:
        start, stop = self.checked_rows(step, rows)
        epoch, k = self.locate(step)
        positions, lengths = self.epoch_plan(epoch)
        return self.read(epoch, int(positions[k]), int(lengths[k]), (start, stop), epoch_start=k == 0)

    def __repr__(self) -> str:
        return (f"VariableBPTTBatcher(split={self.split.name!r}, batch_size={self.batch_size}, "
                f"seq_len={self.seq_len}, lengths={self.lengths()})")
