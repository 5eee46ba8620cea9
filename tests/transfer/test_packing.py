"""Packing texts end to end into rows: the plan, the chunks cut from it, and the rows of a
few widths for a model that reads a row in one call."""

from __future__ import annotations

import numpy as np
import pytest

from lmscale.transfer import packing


def _texts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 200, n).astype(np.int32) for n in lengths]


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_texts_do_not_overlap_and_rows_end_within_one_text(rows):
    lengths = np.random.default_rng(rows).integers(1, 300, 157)
    plan = packing.pack(lengths, rows)
    for r in range(rows):
        mine = np.flatnonzero(plan.row == r)
        spans = sorted(zip(plan.start[mine], plan.start[mine] + plan.length[mine]))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap
        assert not spans or spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert (plan.row >= 0).all() and (plan.row < rows).all()
    fills = np.bincount(plan.row, weights=plan.length, minlength=rows)
    assert plan.width == fills.max()
    assert fills.max() - fills.min() <= lengths.max()  # longest first, to the shortest row
    assert plan.width <= -(-lengths.sum() // rows) + lengths.max()


def test_sst_like_lengths_are_read_with_little_padding():
    lengths = np.random.default_rng(1).lognormal(4.4, 0.5, 1821).astype(int) + 1  # ~100 bytes
    plan = packing.pack(lengths, 128)
    assert plan.efficiency > 0.97
    # Side by side (sorted, each batch padded to its longest, rounded to the 128-token chunk),
    # the same texts would be read at about half this efficiency.
    side_by_side = sum(-(-lengths[np.argsort(-lengths)][s] // 128) * 128 * 128
                       for s in range(0, len(lengths), 128))
    assert lengths.sum() / side_by_side < 0.75


@pytest.mark.parametrize("t", [1, 7, 64])
def test_chunks_rebuild_the_rows_with_resets_at_starts_and_every_end_once(t):
    lengths = [5, 1, 12, 3, 3, 9, 20, 2, 2, 2, 7]
    ids = _texts(lengths)
    plan = packing.pack(lengths, 3)
    slots = packing.ends_per_chunk(plan, t)
    pieces = [packing.chunk(plan, ids, o, t, slots, pad=0) for o in range(0, plan.width, t)]
    tokens = np.concatenate([p.tokens for p in pieces], axis=1)
    resets = np.concatenate([p.resets for p in pieces], axis=1)
    owner = np.concatenate([p.owner for p in pieces], axis=1)
    assert tokens.shape[1] >= plan.width and tokens.shape[1] - plan.width < t
    seen = []
    for i, x in enumerate(ids):
        r, s = plan.row[i], plan.start[i]
        np.testing.assert_array_equal(tokens[r, s:s + len(x)], x)
        assert resets[r, s] and (owner[r, s:s + len(x)] == i).all()
    assert resets.sum() == len(ids) and (owner >= 0).sum() == sum(lengths)
    for o, p in zip(range(0, plan.width, t), pieces):
        for r, k in zip(*np.nonzero(p.texts >= 0)):
            i = p.texts[r, k]
            assert plan.row[i] == r and o + p.ends[r, k] == plan.start[i] + plan.length[i] - 1
            seen.append(i)
    assert sorted(seen) == list(range(len(ids)))
    # The slots are exactly enough: one fewer raises, naming the row and chunk.
    if slots > 1:
        with pytest.raises(ValueError, match="texts end in row"):
            [packing.chunk(plan, ids, o, t, slots - 1, pad=0) for o in range(0, plan.width, t)]


def test_rows_are_the_texts_power_of_two_at_most_the_batch_and_a_multiple_of_the_devices():
    assert packing.rows_for(64, 1000, 8) == 64
    assert packing.rows_for(64, 5, 2) == 8  # 5 texts: 8 rows (a power of two: one program)
    assert packing.rows_for(20, 17, 1) == 20  # never more than the batch
    assert packing.rows_for(64, 3, 1) == 4 and packing.rows_for(64, 4, 1) == 4
    assert packing.rows_for(3, 1000, 8) == 8  # at least one row per device
    assert packing.rows_for(6, 5, 4) == 8  # 6 rows at most, rounded up to the 4 devices
    assert packing.rows_for(64, 0, 4) == 4


@pytest.mark.parametrize("limit", [256, 200])
def test_bins_hold_whole_texts_in_rows_of_few_widths(limit):
    """Every text whole in one row of its width's plan, none overlapping; widths are 32 times a
    power of two (or the limit), each row opened by a text over half its width (or over 32)."""
    lengths = np.random.default_rng(limit).integers(1, limit + 1, 300)
    lengths[:3] = [limit, 1, 33]
    groups = packing.pack_bins(lengths, limit)
    widths = [plan.width for _, plan in groups]
    assert widths == sorted(set(widths), reverse=True)
    assert set(widths) <= {32, 64, 128, 256, limit}
    seen = np.concatenate([texts for texts, _ in groups])
    assert sorted(seen) == list(range(len(lengths)))
    for texts, plan in groups:
        np.testing.assert_array_equal(plan.length, lengths[texts])
        assert (plan.start + plan.length <= plan.width).all()
        for r in range(plan.rows):
            mine = plan.by_row[plan.row_first[r]:plan.row_first[r + 1]]
            assert len(mine) and (plan.row[mine] == r).all()
            spans = list(zip(plan.start[mine], plan.start[mine] + plan.length[mine]))
            assert spans[0][0] == 0 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
            assert plan.length[mine].max() * 2 > plan.width or plan.width == 32


def test_bins_read_sst_like_lengths_with_little_padding_in_few_widths():
    lengths = np.random.default_rng(1).lognormal(4.4, 0.5, 1821).astype(int) + 1  # ~100 bytes
    lengths = np.minimum(lengths, 256)
    groups = packing.pack_bins(lengths, 256)
    read = sum(plan.rows * plan.width for _, plan in groups)
    assert len(groups) <= 4 and lengths.sum() / read > 0.9
    # Best fit: at most one row of each width is less than half full.
    for _, plan in groups:
        fill = np.bincount(plan.row, weights=plan.length, minlength=plan.rows)
        assert (fill * 2 < plan.width).sum() <= 1


def test_rows_pieces_rebuild_the_bins_with_resets_at_starts():
    lengths = [5, 1, 12, 3, 3, 9, 20, 2, 2, 2, 7, 40, 33]
    ids = _texts(lengths)
    for texts, plan in packing.pack_bins(lengths, 64, narrowest=16):
        mine = [ids[i] for i in texts]
        slots = packing.texts_per_row(plan)
        pieces = [packing.rows_piece(plan, mine, first, 2, slots, pad=0)
                  for first in range(0, plan.rows, 2)]
        tokens = np.concatenate([p.tokens for p in pieces])
        resets = np.concatenate([p.resets for p in pieces])
        owner = np.concatenate([p.owner for p in pieces])
        ends = np.concatenate([p.ends for p in pieces])
        slot_texts = np.concatenate([p.texts for p in pieces])
        assert tokens.shape == (-(-plan.rows // 2) * 2, plan.width)
        for i, x in enumerate(mine):
            r, s = plan.row[i], plan.start[i]
            np.testing.assert_array_equal(tokens[r, s:s + len(x)], x)
            assert resets[r, s] and (owner[r, s:s + len(x)] == i).all()
            (k,) = np.flatnonzero(slot_texts[r] == i)
            assert ends[r, k] == s + len(x) - 1
        assert resets.sum() == len(mine) and (owner >= 0).sum() == plan.length.sum()
        assert (slot_texts >= 0).sum() == len(mine)
        if slots > 1:
            with pytest.raises(ValueError, match="texts in row"):
                [packing.rows_piece(plan, mine, f, 2, slots - 1, 0) for f in range(0, plan.rows, 2)]


def test_bad_plans_are_errors():
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        packing.pack([3, 0], 2)
    with pytest.raises(ValueError, match="rows must be"):
        packing.pack([3], 0)
    with pytest.raises(ValueError, match="text 1 has 300 tokens, over the rows' limit of 256"):
        packing.pack_bins([3, 300], 256)
    with pytest.raises(ValueError, match="text 0 has no tokens"):
        packing.pack_bins([0], 256)


def test_a_bin_text_goes_to_a_row_it_fills_exactly():
    """Best fit: a text as long as a row's room goes there, not to a new row."""
    groups = packing.pack_bins([32, 16, 16], 32)
    assert [plan.rows for _, plan in groups] == [2]
