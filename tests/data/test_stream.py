"""StreamBatcher against an independent reconstruction from the concatenated shards."""

from __future__ import annotations

import numpy as np
import pytest

from lmscale.data.dataset import TokenDataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.stream import LMBatch, StreamBatcher

from tests.data.helpers import make_docs, write_txt_files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    write_txt_files(tmp / "in", make_docs(120, seed=0, min_len=5, max_len=40))
    out = prepare_dataset(str(tmp / "in"), str(tmp / "ds"), split=(4, 1, 1), shard_tokens=100,
                          progress=False)
    return TokenDataset.open(out)


def reference(split, batch_size, seq_len, step, *, reset_on_documents=False, order=None):
    """The batch of ``step`` per the spec, from np.concatenate of the shards in ``order``."""
    order = np.arange(len(split.shards)) if order is None else order
    stream = np.concatenate([np.asarray(split.shards[i]) for i in order]).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(split.shards[i]) for i in order])])
    boundary = np.zeros(len(stream) + 1, dtype=bool)
    boundary[offsets[:-1]] = True
    if reset_on_documents:  # True, or N: every N-th document of each shard from its first
        for base, i in zip(offsets, order):
            boundary[base + split.doc_starts[i][::int(reset_on_documents)]] = True
    L = len(stream) // batch_size
    k = step % ((L - 1) // seq_len)
    rows = []
    for r in range(batch_size):
        p = r * L + k * seq_len
        resets = boundary[p:p + seq_len].copy()
        resets[0] |= k == 0
        rows.append((stream[p:p + seq_len], stream[p + 1:p + seq_len + 1],
                     (~boundary[p + 1:p + seq_len + 1]).astype(np.float32), resets))
    return [np.stack(x) for x in zip(*rows)]


def assert_batch_equal(a: LMBatch, b: LMBatch) -> None:
    for name in ("inputs", "targets", "weights", "resets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("reset_on_documents", [False, True, 2, 3])
@pytest.mark.parametrize("batch_size, seq_len", [(3, 7), (5, 16), (1, 50)])
def test_matches_reference(dataset, batch_size, seq_len, reset_on_documents):
    split = dataset.split("train")
    b = StreamBatcher(split, batch_size, seq_len, reset_on_documents=reset_on_documents)
    L = split.num_tokens // batch_size
    assert b.steps_per_epoch == (L - 1) // seq_len and b.tokens_per_step == batch_size * seq_len
    for step in range(2 * b.steps_per_epoch + 1):
        got = b.batch(step)
        assert got.inputs.dtype == np.int32 and got.targets.dtype == np.int32
        assert got.weights.dtype == np.float32 and got.resets.dtype == bool
        assert got.inputs.shape == (batch_size, seq_len)
        want = reference(split, batch_size, seq_len, step, reset_on_documents=reset_on_documents)
        for name, w in zip(("inputs", "targets", "weights", "resets"), want):
            np.testing.assert_array_equal(getattr(got, name), w, err_msg=f"{name} step {step}")


def test_every_nth_document_resets_fewer_and_a_bad_count_is_refused(dataset):
    split = dataset.split("train")
    counts = {n: sum(int(StreamBatcher(split, 3, 7, reset_on_documents=n).batch(k).resets.sum())
                     for k in range(20)) for n in (True, 2, 3, False)}
    assert counts[True] > counts[2] > counts[3] > counts[False] > 0, counts
    with pytest.raises(DataError, match="reset_on_documents must be a bool or a count >= 0"):
        StreamBatcher(split, 3, 7, reset_on_documents=-1)


def test_rows_are_contiguous_across_steps(dataset):
    b = StreamBatcher(dataset.split("train"), 4, 9)
    for k in range(b.steps_per_epoch - 1):
        now, nxt = b.batch(k), b.batch(k + 1)
        np.testing.assert_array_equal(now.targets[:, :-1], now.inputs[:, 1:])
        np.testing.assert_array_equal(nxt.inputs[:, 0], now.targets[:, -1])


def test_resets_and_weights_exactly_at_boundaries(dataset):
    split = dataset.split("train")
    B, S = 4, 9
    starts = set(np.concatenate([[0], np.cumsum(split.shard_lengths)[:-1]]).tolist())
    docs = set()
    for base, d in zip(np.concatenate([[0], np.cumsum(split.shard_lengths)[:-1]]), split.doc_starts):
        docs.update((base + d).tolist())
    L = split.num_tokens // B
    for reset_docs in (False, True):
        b = StreamBatcher(split, B, S, reset_on_documents=reset_docs)
        marks = starts | docs if reset_docs else starts
        seen = 0
        for k in range(b.steps_per_epoch):
            batch = b.batch(k)
            for r in range(B):
                for t in range(S):
                    p = r * L + k * S + t
                    assert batch.resets[r, t] == (p in marks or (k == 0 and t == 0)), (k, r, t)
                    assert batch.weights[r, t] == (0.0 if p + 1 in marks else 1.0), (k, r, t)
                    seen += batch.resets[r, t] and p in starts and p != r * L
        assert seen > 0  # shard starts inside rows were exercised
    assert docs - starts  # documents that do not start a shard exist


def test_deterministic(dataset):
    split = dataset.split("train")
    a = StreamBatcher(split, 3, 8, shuffle_shards=True, seed=5)
    for step in [0, 3, a.steps_per_epoch + 2, 5 * a.steps_per_epoch + 1]:
        assert_batch_equal(a.batch(step), a.batch(step))
        assert_batch_equal(a.batch(step), StreamBatcher(split, 3, 8, shuffle_shards=True, seed=5).batch(step))
    a.batch(0)
    assert_batch_equal(a.batch(a.steps_per_epoch + 2), a.batch(a.steps_per_epoch + 2))


def test_epoch_wrap(dataset):
    split = dataset.split("train")
    plain = StreamBatcher(split, 3, 8)
    spe = plain.steps_per_epoch
    assert plain.epoch_of(spe - 1) == 0 and plain.epoch_of(spe) == 1
    assert_batch_equal(plain.batch(spe), plain.batch(0))
    assert_batch_equal(plain.batch(2 * spe + 3), plain.batch(3))

    shuffled = StreamBatcher(split, 3, 8, shuffle_shards=True, seed=1)
    orders = [shuffled.shard_order(e) for e in range(3)]
    assert all(sorted(o) == list(range(len(split.shards))) for o in orders)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(shuffled.batch(0).inputs, shuffled.batch(spe).inputs)
    np.testing.assert_array_equal(orders[1], np.random.default_rng([1, 1]).permutation(len(split.shards)))
    for step in [0, spe + 1, 2 * spe]:
        want = reference(split, 3, 8, step, order=shuffled.shard_order(step // spe))
        np.testing.assert_array_equal(shuffled.batch(step).inputs, want[0])
        np.testing.assert_array_equal(shuffled.batch(step).resets, want[3])
    other = StreamBatcher(split, 3, 8, shuffle_shards=True, seed=2)
    assert not np.array_equal(other.shard_order(0), orders[0])


def test_rows_subset_equals_slice(dataset):
    b = StreamBatcher(dataset.split("train"), 6, 10, reset_on_documents=True, shuffle_shards=True)
    for step in [0, 1, b.steps_per_epoch + 4]:
        full = b.batch(step)
        for lo, hi in [(0, 6), (0, 3), (3, 6), (2, 5), (5, 6), (4, 4)]:
            part = b.batch(step, rows=(lo, hi))
            for name in ("inputs", "targets", "weights", "resets"):
                np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[lo:hi])
    with pytest.raises(DataError, match="outside the batch of 6 rows"):
        b.batch(0, rows=(4, 7))
    with pytest.raises(DataError, match="step"):
        b.batch(-1)


def test_small_splits_and_errors(dataset):
    val = dataset.split("val")
    n = val.num_tokens
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        StreamBatcher(val, 0, 4)
    with pytest.raises(DataError, match="seq_len must be a positive integer"):
        StreamBatcher(val, 2, 0)
    with pytest.raises(DataError, match=rf"split 'val' has {n} tokens: too few for batch_size 4 x \(seq_len "):
        StreamBatcher(val, 4, n // 4)
    shortest = int(val.shard_lengths.min())
    i = int(np.argmin(val.shard_lengths))
    with pytest.raises(DataError, match=rf"sequence longer than a shard: shard {i} of split 'val' has "
                                        rf"{shortest} tokens, seq_len is {shortest}"):
        StreamBatcher(val, 1, shortest)
    b = StreamBatcher(val, 1, shortest - 1)  # the largest that fits
    assert b.steps_per_epoch >= 1
    np.testing.assert_array_equal(b.batch(0).inputs, reference(val, 1, shortest - 1, 0)[0])


def test_row_length_a_multiple_of_seq_len_keeps_the_last_target_inside_the_row(dataset):
    """A row of L tokens has L - 1 targets: with L % seq_len == 0 an epoch is L // seq_len - 1
    steps (the last step would read the next row's first token, or past the stream's end)."""
    split = dataset.split("train")
    shortest = int(split.shard_lengths.min())
    cases = [(b, s) for b in (1, 2, 3, 4) for s in range(2, shortest)
             if (split.num_tokens // b) % s == 0]
    assert cases, "the fixture has no row length with a divisor below the shortest shard"
    for batch_size, seq_len in cases[:4]:
        b = StreamBatcher(split, batch_size, seq_len)
        L = split.num_tokens // batch_size
        assert b.steps_per_epoch == (L - 1) // seq_len == L // seq_len - 1
        assert b.tail_length == seq_len - 1
        for step in range(b.steps_per_epoch + 1):
            got = b.batch(step)
            want = reference(split, batch_size, seq_len, step)
            for name, w in zip(("inputs", "targets", "weights", "resets"), want):
                np.testing.assert_array_equal(getattr(got, name), w, err_msg=f"{name} step {step}")
