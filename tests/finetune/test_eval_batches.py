"""Prediction batches of long texts have fewer rows (a token budget), the same texts in all."""

from __future__ import annotations

import numpy as np

from lmscale.finetuning.data import eval_batches


def test_long_texts_come_in_fewer_rows_and_every_text_once():
    """40 texts of 100k characters in one 64-row batch took 6.9 GB (each filler row as wide
    as the longest text); with a budget of rows x width, they come two at a time."""
    rng = np.random.default_rng(0)
    lengths = [5000, 4990, 4000, *rng.integers(5, 60, size=21)]
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    batches = list(eval_batches(ids, 8, pad=0, bucket=32, max_len=None, max_tokens=8192,
                                multiple=2))
    seen = np.concatenate([index for index, _ in batches])
    assert sorted(seen.tolist()) == list(range(len(ids)))  # every text once
    for index, batch in batches:
        rows, width = batch["tokens"].shape
        assert rows % 2 == 0 and len(index) <= rows
        assert rows * width <= 8192 or rows == 2, (rows, width)  # over budget: the fewest rows
        for r, i in enumerate(index):  # each text whole in its row
            np.testing.assert_array_equal(batch["tokens"][r, :lengths[i]], ids[i])
    assert [b["tokens"].shape[0] for _, b in batches][:2] == [2, 2]  # the long ones: 2 a batch
    assert batches[-1][1]["tokens"].shape[0] == 8  # the short ones: full batches
    unbounded = list(eval_batches(ids, 8, pad=0, bucket=32, max_len=None))
    assert unbounded[0][1]["tokens"].shape == (8, 5120)  # before: 8 rows of 5024 (eval_width)


def test_prediction_widths_grow_by_quarter_octaves_past_eight_buckets():
    """Each width compiles a prediction program: texts of 1 to 2,000 tokens met 63 widths at
    bucket 32 (6,000 of them: 49 programs, 44 s of a 65 s classify), now 20; up to 8 buckets
    the widths are the bucket's multiples as before, and a text gets at most a quarter more
    padding than ``width_for``'s."""
    from lmscale.finetuning.data import eval_width, width_for
    widths = {n: eval_width(n, 32, None) for n in range(1, 2001)}
    assert len(set(widths.values())) == 20
    for n, w in widths.items():
        exact = width_for(np.asarray([n]), 32, None)
        assert w % 32 == 0 and n <= exact <= w <= 1.25 * exact, (n, w)
        if n <= 256:
            assert w == exact
    assert eval_width(300, 32, 256) == 256  # capped at the model's max_len
    rng = np.random.default_rng(1)
    ids = [np.ones(n, np.int32) for n in rng.integers(1, 2001, size=3000)]
    shapes = {b["tokens"].shape[1] for _, b in eval_batches(ids, 16, pad=0, bucket=32,
                                                             max_len=None)}
    assert shapes <= set(widths.values()) and len(shapes) <= 20


def test_texts_cut_to_max_len_are_said(capfd):
    """A transformer classifier reads a text's last max_len tokens: said, not silent."""
    from lmscale.data.tokenizer import ByteTokenizer
    from lmscale.finetuning.data import encode
    ids = encode(ByteTokenizer(), lambda t: t, ["short", "x" * 40, "y" * 90], 32, source="f.csv")
    assert [len(x) for x in ids] == [5, 32, 32]
    assert ("note: f.csv: 2 of 3 texts are longer than the model's max_len=32 tokens (the "
            "longest 90): their last 32 tokens are read") in capfd.readouterr().err
    encode(ByteTokenizer(), lambda t: t, ["x" * 90], None)
    assert capfd.readouterr().err == ""  # no limit: nothing cut, nothing said
