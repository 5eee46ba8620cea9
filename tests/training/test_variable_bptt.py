"""Variable-length BPTT: AWD-LSTM's length distribution, positions as a pure function of the
step, a bounded number of compiled train steps, the learning rate scaled by length, and a
resumed run equal to an uninterrupted one bit for bit."""

from __future__ import annotations

import numpy as np

from lmscale.data.dataset import TokenDataset
from lmscale.data.prepare import prepare_dataset
from lmscale.data.variable_bptt import VariableBPTTBatcher
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import tiny_config


def batcher(corpus, tmp_path, **kw) -> VariableBPTTBatcher:
    path = prepare_dataset(corpus, str(tmp_path / "ds"), split=(8, 1, 1), progress=False)
    return VariableBPTTBatcher(TokenDataset.open(path).split("train"), 4, kw.pop("seq_len", 70),
                               max_len=kw.pop("max_len", 85), bucket=kw.pop("bucket", 5), seed=3)


def test_lengths_positions_and_epochs_are_a_function_of_the_step(tmp_path, corpus):
    b = batcher(corpus, tmp_path)
    assert b.lengths() == list(range(5, 86, 5))
    draws = b.draw(0, 20000)
    assert set(np.unique(draws)) <= set(b.lengths())
    assert 0.02 < np.mean(draws < 50) < 0.08  # the half-length draws, p = 0.05
    assert abs(np.mean(draws[draws >= 50]) - 70) < 1.0
    positions, lengths = b.epoch_plan(0)
    assert np.array_equal(positions[1:], np.cumsum(lengths)[:-1])  # the stream advances by length
    assert positions[-1] + lengths[-1] <= b.row_length - 1
    fresh = batcher(corpus, tmp_path / "again")
    steps = b.steps_per_epoch + 3  # into the second epoch
    for step in (0, 5, b.steps_per_epoch, steps):
        x, y = b.batch(step), fresh.batch(step)
        assert x.inputs.shape == (4, b.length_of(step))
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.resets, y.resets)
    assert b.batch(b.steps_per_epoch).resets[:, 0].all()  # a new epoch restarts the rows
    # consecutive steps continue the same text in every row
    a, c = b.batch(1), b.batch(2)
    assert np.array_equal(a.targets[:, -1], c.inputs[:, 0])
    # the epochs done (logged as "epoch"): each epoch's own count of steps, not epoch 0's
    counts = [len(b.epoch_plan(e)[0]) for e in range(6)]
    assert len(set(counts)) > 1  # else this would not tell the two apart
    for epoch in range(6):
        first = sum(counts[:epoch])
        assert b.epochs_done(first) == epoch
        positions, lengths = b.epoch_plan(epoch)  # the fraction of the epoch's tokens read
        half = counts[epoch] // 2
        assert b.epochs_done(first + half) == epoch + lengths[:half].sum() / lengths.sum()
    assert b.epochs_done(sum(counts)) != sum(counts) / b.steps_per_epoch


def test_bounded_programs_scaled_lr_and_bitwise_resume(tmp_path, corpus):
    overrides = {"train.variable_bptt": True, "train.seq_len": 8, "train.bptt_max": 15,
                 "train.bptt_bucket": 4, "train.steps": 8, "train.log_every": 1, "train.eval_every": 4,
                 "optim.schedule": "constant", "optim.warmup_steps": 0, "model.kind": "lstm",
                 "model.dropout": 0.2}
    full = str(tmp_path / "full")
    last = train(tiny_config(corpus, **overrides), full)
    config = tiny_config(corpus, **overrides)
    b = VariableBPTTBatcher(TokenDataset.open(f"{full}/data").split("train"), 4, 8, max_len=15,
                            bucket=4, seed=config.seed)
    lengths = [b.length_of(k) for k in range(8)]
    assert b.lengths() == [8, 12] and len(set(lengths)) >= 2
    assert last["train_programs"] == len(set(lengths)) <= len(b.lengths())  # one per length
    train_records = [r for r in read_metrics(full) if r["split"] == "train"]
    np.testing.assert_allclose([r["lr"] for r in train_records], [3e-3 * n / 8 for n in lengths], rtol=1e-6)
    # A step that compiles a new length's program is left out of the rates (only the run's
    # first was: the windows with a new length logged rates 8-30x too low); its seconds are
    # first_step_s. log_every 1: a record per step.
    first_of_length = [lengths.index(n) == k for k, n in enumerate(lengths)]
    assert sum(first_of_length) >= 2
    assert [r["tokens_per_s"] is None for r in train_records] == first_of_length
    assert [r.get("first_step_s", 0) > 0 for r in train_records] == first_of_length
    timed = [r for r in train_records if r["tokens_per_s"] is not None]
    assert timed  # each step's own rows x length (tokens_per_s was batch x seq_len's)
    np.testing.assert_allclose([r["tokens_per_s"] / r["steps_per_s"] for r in timed],
                               [4 * lengths[r["step"] - 1] for r in timed], rtol=1e-6)
    assert [r["epoch"] for r in train_records] == [b.epochs_done(r["step"]) for r in train_records]

    split = str(tmp_path / "split")
    train(tiny_config(corpus, **{**overrides, "train.steps": 4}), split)
    train(tiny_config(corpus, **overrides), split)
    keys = ("step", "split", "loss", "bpc", "lr", "grad_norm")
    strip = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs]
    assert strip(read_metrics(full)) == strip(read_metrics(split))  # bitwise


def test_a_bucket_above_the_longest_length_is_refused():
    """bptt_bucket 50 with bptt_max 35 made every step 50 long (and its lr x 50/seq_len)."""
    import pytest
    from lmscale.config import ConfigError, default_config, validate
    c = default_config()
    c.data.train = "corpus"
    c.train.variable_bptt, c.train.seq_len, c.train.bptt_max, c.train.bptt_bucket = True, 20, 35, 50
    with pytest.raises(ConfigError, match="train.bptt_bucket=50.*at most 35"):
        validate(c)
    c.train.bptt_bucket = 35  # one length: 35
    validate(c)
    c.train.variable_bptt, c.train.bptt_bucket = False, 50  # not used: not checked
    validate(c)


def test_epoch_settings_end_at_each_epochs_own_boundary(tmp_path, corpus):
    """train.epochs, optim.lr_drop_epochs (awd's --when) and optim.decay_epochs under variable
    BPTT: epochs have their own step counts, and multiples of epoch 0's drifted by e times
    the difference (enwik8 at 128 x 200: the drops 138 and 182 steps early)."""
    import math

    from lmscale.config import default_config, derive
    b = batcher(corpus, tmp_path, seq_len=20, max_len=35)
    config = default_config()
    config.train.steps, config.train.epochs = 10**6, 7.0
    config.optim.lr_drop_epochs, config.optim.decay_epochs = "3,5", 4.5
    d = derive(config, b.steps_per_epoch, b)
    starts = [b.epoch_step(e) for e in range(8)]
    assert starts[7] != 7 * b.steps_per_epoch  # epochs of their own lengths (else no test)
    assert d["steps"] == starts[7] and b.epochs_done(d["steps"]) == d["epochs"] == 7.0
    drops = d["lr_drop_steps"]
    assert drops == [starts[3], starts[5]]
    assert [b.epoch_of(s) for s in drops] == [3, 5] and [b.epoch_of(s - 1) for s in drops] == [2, 4]
    # half of epoch 4: the first step that has read half its tokens (as epochs_done counts)
    half = next(n for n in range(int(starts[4]), int(starts[5])) if b.epochs_done(n) >= 4.5)
    assert d["decay_steps"] == half == math.ceil(b.epoch_step(4.5))


def test_epoch_plan_draws_in_chunks_the_same_lengths(tmp_path, corpus):
    """epoch_plan draws only the lengths an epoch uses (bounded memory), and they are the
    lengths of ``draw(epoch, row_length // min_len + 1)``, the one call it used to make."""
    for seq_len, bucket in ((70, 5), (10, 5), (33, 3)):
        b = batcher(corpus, tmp_path / f"s{seq_len}", seq_len=seq_len, max_len=seq_len + 15,
                    bucket=bucket)
        for epoch in range(3):
            everything = b.draw(epoch, b.row_length // b.min_len + 1)
            ends = np.cumsum(everything)
            n = int(np.searchsorted(ends, b.row_length - 1, side="right"))
            positions, lengths = b.epoch_plan(epoch)
            assert np.array_equal(lengths, everything[:n])
            assert np.array_equal(positions, np.concatenate([[0], ends[:n - 1]]))
            assert lengths.base is None or lengths.base.size == n  # no view of every draw


def test_validation_once_an_epoch_comes_after_each_epochs_own_last_step(tmp_path):
    """train.eval_every_epochs=1 (awd validates once an epoch; NT-ASGD counts those passes):
    a validation right after each epoch's last step, each epoch its own count of steps under
    variable BPTT. train.eval_every, in steps, could only approximate epoch 0's, and drifted."""
    from tests.conftest import write_corpus
    corpus = write_corpus(tmp_path / "small", files=4, lines=16)
    overrides = {"train.variable_bptt": True, "train.seq_len": 8, "train.bptt_max": 15,
                 "train.bptt_bucket": 4, "train.batch_size": 8, "train.epochs": 3.0,
                 "train.steps": 10**6, "train.eval_every": 3, "train.eval_every_epochs": 1.0,
                 "train.log_every": 1000, "checkpoint.every": 1000, "model.hidden": 16}
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **overrides), workdir)
    b = VariableBPTTBatcher(TokenDataset.open(f"{workdir}/data").split("train"), 8, 8,
                            max_len=15, bucket=4, seed=tiny_config(corpus).seed)
    counts = [len(b.epoch_plan(e)[0]) for e in range(3)]
    assert counts[0] % 3 and counts[1] != counts[0]  # neither eval_every nor epoch 0 x k
    ends = list(np.cumsum(counts))
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "val"] == ends
    # half an epoch: the first step at or past each half's share of the epoch's tokens
    half = str(tmp_path / "half")
    train(tiny_config(corpus, **{**overrides, "train.eval_every_epochs": 0.5}), half)
    due = [n for n in range(1, ends[-1] + 1)
           if int(2 * b.epochs_done(n) + 1e-9) > int(2 * b.epochs_done(n - 1) + 1e-9)]
    assert len(due) == 6 and set(ends) <= set(due)
    assert [r["step"] for r in read_metrics(half) if r["split"] == "val"] == due


def test_a_fraction_of_an_epoch_ends_the_run_where_its_validation_is_due(tmp_path, corpus):
    """train.epochs=1.5 with train.eval_every_epochs=0.5: the run ends at the step whose pass
    is due (epoch_step took a fraction of the epoch's steps, validation_due of its tokens: the
    end came a step or two before it, unscheduled, or after one, a second pass at the end)."""
    import math

    import ml_collections

    from lmscale.training.evaluate import validation_due
    train_split = TokenDataset.open(prepare_dataset(corpus, str(tmp_path / "ds"), split=(8, 1, 1),
                                                    progress=False)).split("train")
    every = ml_collections.ConfigDict({"eval_every_epochs": 0.5, "eval_every": 0})
    for seed in range(12):
        b = VariableBPTTBatcher(train_split, 4, 20, max_len=35, bucket=4, seed=seed)
        for epochs in (0.5, 1.5, 2.5):
            end = math.ceil(b.epoch_step(epochs))
            assert b.epochs_done(end - 1) < epochs <= b.epochs_done(end)
            assert validation_due(every, end, b.epochs_done)
            assert not any(validation_due(every, n, b.epochs_done) for n in (end - 2, end - 1))


def test_a_multiple_of_the_period_computed_just_under_itself_is_due():
    """0.3 / 0.1 = 2.9999999999999996: eval_every_epochs=0.1 at 10 steps an epoch skipped the
    pass due at step 3 (step 4 took both); every step is due."""
    import ml_collections

    from lmscale.training.evaluate import validation_due
    every = ml_collections.ConfigDict({"eval_every_epochs": 0.1, "eval_every": 7})
    assert [n for n in range(31) if validation_due(every, n, lambda n: n / 10)] == list(
        range(1, 31))
