"""Data parallelism on 8 fake CPU devices: same losses as 1 device; checkpoints move between
device counts; exactly one all-reduce per step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmscale.training.hlo_stats import all_reduces
from tests.conftest import REPO, xla_flags


@pytest.fixture(scope="module")
def multi_device_run(tmp_path_factory):
    from tests.conftest import write_corpus
    root = tmp_path_factory.mktemp("dp")
    corpus = write_corpus(root / "corpus")
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.training.multi_device_worker", corpus,
                           str(root / "runs")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _series(d):
    return np.array([d[str(k)] for k in range(1, 21)])


def test_eight_devices_give_the_same_losses_as_one(multi_device_run):
    one, eight = _series(multi_device_run["d1"]), _series(multi_device_run["d8"])
    assert len(one) == 20 and one[-1] < one[0]
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


def test_batch_major_loops_on_eight_devices_equal_one_device(multi_device_run):
    """The GPUs' recurrence loops (recurrent_batch_major) under shard_map: 1 device's losses."""
    one, batch = _series(multi_device_run["d1"]), _series(multi_device_run["d8_batch"])
    np.testing.assert_allclose(batch, one, rtol=0, atol=1e-5)


def test_transformer_on_eight_devices_equals_one(multi_device_run):
    """Empty carry, dropout on embeddings/residuals/attention/feed-forward, document segments."""
    one, eight = _series(multi_device_run["t1"]), _series(multi_device_run["t8"])
    assert one[-1] < one[0]
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


def test_validation_does_not_depend_on_the_device_count(multi_device_run):
    """6 validation rows: padded to 8 on 8 devices, the padding never counted."""
    one, eight = multi_device_run["t1_val"], multi_device_run["t8_val"]
    assert sorted(one) == sorted(eight) == ["10", "15", "20", "5"]
    for step in one:
        assert abs(one[step] - eight[step]) < 1e-5


def test_finetune_on_eight_devices_equals_one(multi_device_run):
    """Multi-label head with dropout and the aux LM loss, frozen then full steps; 13 val texts."""
    if "ft1" not in multi_device_run:
        from tests.conftest import SHARED_DATA_MISSING
        pytest.skip(SHARED_DATA_MISSING)
    one = np.array([multi_device_run["ft1"][str(k)] for k in range(1, 7)])
    eight = np.array([multi_device_run["ft8"][str(k)] for k in range(1, 7)])
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)
    assert sorted(multi_device_run["ft1_val"]) == sorted(multi_device_run["ft8_val"]) == ["3", "6"]
    for step, loss in multi_device_run["ft1_val"].items():
        assert abs(multi_device_run["ft8_val"][step] - loss) < 1e-5


@pytest.mark.parametrize("model", ["feat", "tfeat"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_features_on_eight_devices_equal_one(multi_device_run, pooling, model):
    """Texts packed into 8 rows, one row per device or all on one: the same features (the
    2-layer mLSTM's and the transformer's, each layer's 32 units)."""
    one = np.array(multi_device_run[f"{model}1_{pooling}"])
    eight = np.array(multi_device_run[f"{model}8_{pooling}"])
    assert one.shape == (21, 2 * 32) and np.abs(one).max() > 1e-3
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n", [1, 4])
def test_checkpoint_from_eight_devices_continues_on_fewer(multi_device_run, n):
    eight = _series(multi_device_run["d8"])
    continued = _series(multi_device_run[f"from8_on{n}"])
    np.testing.assert_allclose(continued, eight, rtol=0, atol=1e-5)


def test_per_device_batch_size_sets_the_global_batch(multi_device_run):
    assert multi_device_run["per_device_batch"] == 8  # 2 per device x 4 devices


def test_one_all_reduce_of_the_parameters_per_step(multi_device_run):
    """The compiled 8-device step has exactly one all-reduce: all gradients + the 3 loss sums
    (nats, targets, bytes)."""
    ops, params = multi_device_run["all_reduces"], multi_device_run["params"]
    assert [op["elements"] for op in ops] == [params + 3]
    assert ops[0]["bytes"] == 4 * (params + 3)


def test_all_reduce_parser_reads_plain_async_and_tuple_forms():
    hlo = """
  %a = f32[10,3]{1,0} all-reduce(f32[10,3]{1,0} %x), channel_id=1, to_apply=%add
  %b = (bf16[4]{0}, f32[2]{0}) all-reduce(bf16[4]{0} %y, f32[2]{0} %z), to_apply=%add
  %c = f32[7]{0} all-reduce-start(f32[7]{0} %w), to_apply=%add
  %d = f32[7]{0} all-reduce-done(f32[7]{0} %c)
  %e = f32[5]{0} add(f32[5]{0} %p, f32[5]{0} %q)"""
    assert all_reduces(hlo) == [{"dtype": "f32", "elements": 30, "bytes": 120},
                                {"dtype": "bf16,f32", "elements": 6, "bytes": 16},
                                {"dtype": "f32", "elements": 7, "bytes": 28}]
