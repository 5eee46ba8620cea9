"""eval_stream on a split too small for batch_size rows of seq_len + 1 tokens."""

from __future__ import annotations

import pytest

from lmscale.data.dataset import TokenDataset
from lmscale.data.prepare import prepare_dataset
from lmscale.training.evaluate import eval_stream
from tests.data.helpers import make_docs, write_txt_files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """120 short documents in shards of 100 tokens (val: a few hundred tokens)."""
    tmp = tmp_path_factory.mktemp("eval_stream")
    write_txt_files(tmp / "in", make_docs(120, seed=0, min_len=5, max_len=40))
    return TokenDataset.open(prepare_dataset(str(tmp / "in"), str(tmp / "ds"), split=(4, 1, 1),
                                             shard_tokens=100, progress=False))


@pytest.mark.parametrize("seq_len", [1, 3, 16])
def test_a_carried_model_keeps_its_rows_down_to_two_tokens_each(dataset, seq_len):
    """A recurrent model reads a small split in shorter steps with min(batch_size, N // 2) rows
    (a row holds at least 2 tokens), and scores every target of each row but its first."""
    val = dataset.split("val")
    n = val.num_tokens
    for batch_size in (n // 4, n // 2 - 1, n // 2, n // 2 + 1, n):
        s = eval_stream(val, batch_size, seq_len, carried=True)
        rows = min(batch_size, n // 2)
        assert s.batch_size == rows, (batch_size, seq_len)
        assert s.seq_len == min(seq_len, n // rows - 1), (batch_size, seq_len)
        assert s.steps_per_epoch * s.seq_len + s.tail_length == n // rows - 1


@pytest.mark.parametrize("seq_len", [7, 16, 40])
def test_a_stateless_model_keeps_full_steps_in_fewer_rows(dataset, seq_len):
    """A transformer (no carried state) keeps seq_len and takes the most rows that each hold a
    full step: min(batch_size, N // (seq_len + 1))."""
    val = dataset.split("val")
    n = val.num_tokens
    for batch_size in (1, n // (seq_len + 1), n // (seq_len + 1) + 1, n // seq_len, n):
        s = eval_stream(val, batch_size, seq_len, carried=False)
        assert (s.batch_size, s.seq_len) == (min(batch_size, n // (seq_len + 1)), seq_len)
        assert s.steps_per_epoch >= 1


def test_evaluate_split_scores_a_one_token_tail_and_divides_bits_by_bytes(dataset):
    """evaluate_split over the whole split scores every target of each row but its first (a
    tail of one input after the last full step included), and bpc divides by the bytes the
    step returns (not the target count: they differ for word / SentencePiece vocabularies)."""
    import math

    import jax.numpy as jnp
    import numpy as np

    from lmscale.training import mesh as mesh_lib
    from lmscale.training.evaluate import evaluate_split

    val = dataset.split("val")
    rows = 3
    L = val.num_tokens // rows
    shortest = int(val.shard_lengths.min())
    seq_len = next(s for s in range(2, shortest) if (L - 1) % s == 1)  # a tail of 1 input
    starts = set(np.cumsum(val.shard_lengths)[:-1].tolist())  # shard starts (not targets)
    want = sum(1 for r in range(rows) for p in range(r * L + 1, r * L + L) if p not in starts)

    def eval_step(params, carry, batch):  # 2 nats and 3 bytes per counted target
        w = jnp.sum(batch["weights"])
        return carry, jnp.stack([2.0 * w, w, 3.0 * w])

    got = evaluate_split(eval_step, None, lambda n: jnp.zeros((n, 2)), val, mesh_lib.make_mesh(),
                         batch_size=rows, seq_len=seq_len)
    assert got["tokens"] == want and got["chars"] == 3 * want
    assert math.isclose(got["loss"], 2.0, rel_tol=1e-9)
    assert math.isclose(got["bpc"], 2.0 / math.log(2) / 3.0, rel_tol=1e-9)


def test_evaluate_split_does_not_count_the_padding_rows_of_more_devices(dataset):
    """3 rows on 2 devices are padded to 4 with zero-weight copies of row 0: the tokens and
    loss are those of 1 device."""
    from tests.conftest import script_result, xla_flags

    path = dataset.path
    script = f"""
import json, jax, jax.numpy as jnp
from lmscale.data.dataset import TokenDataset
from lmscale.training import mesh as mesh_lib
from lmscale.training.evaluate import evaluate_split
def eval_step(params, carry, batch):
    w = jnp.sum(batch["weights"])
    return carry, jnp.stack([2.0 * w, w, 3.0 * w])
val = TokenDataset.open({str(path)!r}).split("val")
out = {{}}
for n in (1, 2):
    got = evaluate_split(eval_step, None, lambda k: jnp.zeros((k, 2)), val,
                         mesh_lib.make_mesh(jax.devices()[:n]), batch_size=3, seq_len=16)
    out[n] = got["tokens"]
print(json.dumps(out))
"""
    got = script_result(script, XLA_FLAGS=xla_flags(2))
    assert got["1"] == got["2"] > 0
