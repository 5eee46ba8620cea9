"""Fine-tuning's training batches (``finetuning.data.TrainBatches``): which texts each epoch
reads."""

from __future__ import annotations

import numpy as np

from lmscale.finetuning.data import Encoded, TrainBatches


def _batches(lengths, batch_size, seed=0):
    ids = [np.ones(n, np.int32) for n in lengths]
    data = Encoded(ids=ids, labels=np.arange(len(ids)) % 2)
    return TrainBatches(data, batch_size, seed=seed, pad=0, bucket=8, max_len=None)


def _texts_read(batches, epoch):
    return {int(i) for row in batches._order(epoch) for i in row}


def test_the_texts_left_out_of_an_epoch_are_random_not_the_longest():
    """The remainder (< B texts) was cut after the pools were sorted by length: the longest
    texts of the last pool, and under POOL batches of texts (one pool) the same longest
    texts every epoch, never trained on."""
    lengths = np.arange(1, 41)  # text i has i + 1 tokens: 40 texts, batches of 16, 8 left out
    batches = _batches(lengths, 16)
    seen = set()
    for epoch in range(30):
        read = _texts_read(batches, epoch)
        assert len(read) == 32  # every epoch reads 2 batches of distinct texts
        seen |= read
    assert seen == set(range(40))  # the 8 longest were never read


def test_batches_are_a_pure_function_of_the_step_and_sorted_within_a_pool():
    lengths = np.random.default_rng(1).integers(1, 50, 100)
    a, b = _batches(lengths, 10, seed=3), _batches(lengths, 10, seed=3)
    for step in (0, 7, 12, 25):
        np.testing.assert_array_equal(a.batch(step)["tokens"], b.batch(step)["tokens"])
    rows = a._order(0)
    widths = [lengths[row].max() - lengths[row].min() for row in rows]
    assert max(widths) < lengths.max() - lengths.min()  # length-sorted: rows of like lengths


def test_a_fine_tune_begun_with_the_old_order_is_told_on_resume():
    """A run begun before BATCH_ORDER 2 reads another order of its epoch from the resumed
    step on: said, as a resume with changed settings is."""
    from lmscale.config import default_config
    from lmscale.finetuning.settings import resumed_otherwise
    config = default_config()
    old = {"config": config.to_dict(), "derived": {"lm_step": 3}}
    notes = resumed_otherwise(old, config, 12)
    assert notes == ["note: resumed at step 12 a fine-tune begun by an older lmscale, whose "
                     "epochs left out the longest texts of their last pool; from here each "
                     "epoch leaves out random ones (this epoch's order differs from step 12 on: "
                     "some of its texts are read twice, others not)"]
    new = {"config": config.to_dict(), "derived": {"lm_step": 3, "batch_order": 2}}
    assert resumed_otherwise(new, config, 12) == []


def test_the_old_order_is_not_said_where_it_is_the_same():
    """An epoch that leaves no text out (texts a multiple of the batch), or a resume at an
    epoch's end, reads what the old order read: it was told that the order differs."""
    from lmscale.config import default_config
    from lmscale.finetuning.settings import resumed_otherwise
    config = default_config()
    config.train.batch_size = 16
    for texts, step in ((64, 3), (70, 8)):  # 4 steps an epoch: no remainder; an epoch's end
        old = {"config": config.to_dict(),
               "derived": {"lm_step": 3, "texts": {"train": texts}, "steps_per_epoch": 4}}
        assert resumed_otherwise(old, config, step) == []


def test_as_many_texts_as_one_batch_are_enough():
    """Fewer texts than a batch are refused; a batch's worth trains one step an epoch."""
    import pytest

    from lmscale.data.errors import DataError
    from lmscale.finetuning.data import check_enough_texts
    batches = _batches(np.arange(1, 17), 16)
    assert batches.steps_per_epoch == 1 and _texts_read(batches, 0) == set(range(16))
    check_enough_texts(16, 16, "t.csv")
    with pytest.raises(DataError, match=r"^t\.csv: 15 training texts are fewer than one batch"):
        check_enough_texts(15, 16, "t.csv")


def test_a_fine_tune_of_this_order_records_it_and_resumes_without_the_note(sst_run, data,
                                                                         tmp_path, capsys):
    """A run records BATCH_ORDER in its derived values: a run begun by this lmscale is not
    told on resume that it was begun with the old order."""
    import os

    from lmscale.config import load_config
    from lmscale.finetuning.data import BATCH_ORDER
    from lmscale.finetuning.loop import finetune
    from tests.finetune.conftest import ft_config
    run = str(tmp_path / "ft")
    for steps in (1, 2):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"], **{
            "train.steps": steps}), run)
    assert load_config(os.path.join(run, "config.json"))[1]["batch_order"] == BATCH_ORDER
    err = capsys.readouterr().err
    assert "older lmscale" not in err


def test_class_weights_weigh_each_row_by_its_label():
    ids = [np.ones(3, np.int32) for _ in range(8)]
    data = Encoded(ids=ids, labels=np.array([0, 1] * 4))
    batches = TrainBatches(data, 8, seed=0, pad=0, bucket=8, max_len=None,
                           class_weights=np.array([1.0, 3.0], np.float32))
    index = batches._order(0)[0]
    w = batches.batch(0)["row_weights"]
    np.testing.assert_allclose(w, np.where(data.labels[index] == 1, 3.0, 1.0) / 16, rtol=1e-6)


def test_balanced_class_weights_are_n_over_k_times_the_count():
    from lmscale.finetuning.data import class_weights_from
    np.testing.assert_allclose(class_weights_from("balanced", np.array([0, 1, 1, 1]), 2),
                               [2.0, 2 / 3], rtol=1e-6)
