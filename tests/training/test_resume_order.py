"""A resume that changes the order of the training stream is refused: data.shuffle_shards,
train.variable_bptt with the lengths it draws (bptt_max, bptt_bucket), and the seed where it
draws the shard order or the lengths decide which text step s reads; changed mid-epoch, a
resume re-read some text, skipped some, and ran the carried state on into other text."""

from __future__ import annotations

import pytest



def test_resume_refuses_a_changed_stream_order():
    """data.shuffle_shards, or the seed while it draws the order or the BPTT lengths, decide
    which text step s reads: a resume that changes them re-reads and skips text mid-epoch."""
    from lmscale.config import default_config
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.resume import check_resumable
    old = default_config()
    new = default_config()
    new.seed = 1  # in-order stream: the seed moves no text
    check_resumable({"config": old.to_dict()}, new, "W")
    new = default_config()
    new.data.shuffle_shards = True
    with pytest.raises(CheckpointMismatchError, match="data.shuffle_shards"):
        check_resumable({"config": old.to_dict()}, new, "W")
    old.data.shuffle_shards = True
    new = default_config()
    new.data.shuffle_shards, new.seed = True, 1
    with pytest.raises(CheckpointMismatchError, match="seed=1"):
        check_resumable({"config": old.to_dict()}, new, "W")
    old = default_config()
    old.train.variable_bptt = True
    new = default_config()
    new.train.variable_bptt, new.seed = True, 2
    with pytest.raises(CheckpointMismatchError, match="seed"):
        check_resumable({"config": old.to_dict()}, new, "W")


def test_resume_refuses_changed_bptt_draws_and_names_the_field():
    """train.bptt_max and train.bptt_bucket shape the drawn lengths as much as the seed (a
    bucket of 8 instead of 5 put step 100 at token 24,816 instead of 24,790), and turning
    variable_bptt on was refused naming only data.shuffle_shards, the same on both sides."""
    from lmscale.config import default_config
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.resume import check_resumable
    old = default_config()
    old.train.variable_bptt = True
    for key, value in (("bptt_bucket", 8), ("bptt_max", old.train.seq_len)):
        new = default_config()
        new.train.variable_bptt = True
        new.train[key] = value
        with pytest.raises(CheckpointMismatchError, match=f"train.{key}="):
            check_resumable({"config": old.to_dict()}, new, "W")
    with pytest.raises(CheckpointMismatchError, match="train.variable_bptt=False; resuming it "
                                                      "with train.variable_bptt=True"):
        check_resumable({"config": default_config().to_dict()}, old, "W")
    recorded = old.to_dict()
    del recorded["train"]["bptt_bucket"]  # a record that predates it: its default
    check_resumable({"config": recorded}, old, "W")
