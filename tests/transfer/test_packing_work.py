"""The host work of one packed chunk: it depends on the rows and the texts the chunk holds,
not on the longest text of the set nor on the number of texts (a few 200k-byte texts among
100k short ones once made every chunk search a window sized by the longest)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.transfer import packing
from lmscale.transfer.featurize import featurize
from tests.transfer.conftest import random_lm


class Counted(np.ndarray):
    """An array that counts the elements read from it (``reads``, shared by all): indexing
    counts what it returns, a ufunc or array function its inputs' sizes, a sorted search
    log2 of the array per value sought."""
    reads = 0

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        out = super().__getitem__(key)
        Counted.reads += int(np.size(out))
        return out

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):  # noqa: ANN001, ANN204
        Counted.reads += sum(x.size for x in inputs if isinstance(x, Counted))
        plain = [x.view(np.ndarray) if isinstance(x, Counted) else x for x in inputs]
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func, types, args, kwargs):  # noqa: ANN001, ANN204
        if func is np.searchsorted:
            Counted.reads += math.ceil(math.log2(len(args[0]) + 1)) * int(np.size(args[1]))
        else:
            Counted.reads += sum(x.size for x in args if isinstance(x, Counted))
        plain = [x.view(np.ndarray) if isinstance(x, Counted) else x for x in args]
        return func(*plain, **kwargs)


def _counted(plan: packing.Packing) -> packing.Packing:
    """``plan`` with every array field counting its reads."""
    return dataclasses.replace(plan, **{f.name: getattr(plan, f.name).view(Counted)
                                        for f in dataclasses.fields(plan)
                                        if isinstance(getattr(plan, f.name), np.ndarray)})


def _overlapping(plan: packing.Packing, offset: int, t: int) -> set[int]:
    stop = plan.start + plan.length
    return set(np.flatnonzero((plan.start < offset + t) & (stop > offset)).tolist())


def test_a_chunk_reads_what_its_rows_hold_not_a_window_sized_by_the_longest_text():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 31, 3000), [20_000] * 3])
    ids = [np.ones(n, np.int32) for n in lengths]
    plan, t, rows = packing.pack(lengths, 8), 16, 8
    slots = packing.ends_per_chunk(plan, t)
    counted = _counted(plan)
    bits = math.ceil(math.log2(len(lengths) + 1))
    for offset in (0, 4000, 9000, plan.width - t):
        Counted.reads = 0
        piece = packing.chunk(counted, ids, offset, t, slots, pad=0)
        held = _overlapping(plan, offset, t)
        assert set(piece.owner[piece.owner >= 0].tolist()) == held
        # a search per row and a few reads per text held; before: every text ending within
        # the longest text's length after the chunk, and whole-plan sums (~10 reads per text)
        assert Counted.reads <= 4 * rows * bits + 8 * len(held), (offset, Counted.reads)


@pytest.mark.parametrize("t", [1, 5, 16, 400])
def test_chunk_texts_are_exactly_those_with_a_token_in_the_columns(t):
    rng = np.random.default_rng(t)
    lengths = np.concatenate([rng.integers(1, 40, 200), [300, 250]])
    for rows in (1, 7, 300):  # 300 rows: some hold no text
        plan = packing.pack(lengths, rows)
        for offset in range(0, plan.width + t, max(1, t // 2)):
            got = packing.chunk_texts(plan, offset, t)
            assert len(got) == len(set(got.tolist()))
            assert set(got.tolist()) == _overlapping(plan, offset, t)
            # by row, then start: the ends of a row fill its slots in the order they come
            key = plan.row[got] * (plan.width + 1) + plan.start[got]
            assert (np.diff(key) > 0).all()


def test_features_with_a_long_text_among_short_ones_equal_each_text_alone():
    """A text over many chunks beside rows of short texts: each read as if alone."""
    lm = random_lm(layers=2)
    rng = np.random.default_rng(3)
    letters = "abcdefghij klmnop"
    texts = ["".join(rng.choice(list(letters), n)) for n in rng.integers(1, 12, 30)]
    texts.insert(7, "".join(rng.choice(list(letters), 90)))
    feats = featurize(lm, texts, batch_size=4, chunk=8, all_layers=True)
    ids = [lm.tokenizer.encode(t) for t in texts]
    grid = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
        grid[i, :len(x)] = x
    cells = np.asarray(nnx.merge(lm.graphdef, lm.params).features(jnp.asarray(grid), None)["cell"])
    for i, x in enumerate(ids):  # cells [L, N, T, F]
        np.testing.assert_allclose(feats[i], cells[:, i, len(x) - 1].reshape(-1), atol=1e-6,
                                   rtol=1e-6)
