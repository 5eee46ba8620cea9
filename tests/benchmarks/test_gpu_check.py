"""benchmarks/gpu_check.sh in its smoke mode: the same stages, tiny shapes, on the CPU.

A GPU is lent rarely and briefly; this keeps the one-call check from rotting (a renamed
config field or flag would otherwise be found only on the GPU, costing its minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCHES = ["mlstm-bf16-custom", "mlstm-fp16-custom", "mlstm-bf16-f32-factors", "transformer-bf16",
           "mlstm-bf16-autodiff", "transformer-fp16", "mlstm-bf16-feature-layout",
           "mlstm-bf16-remat"]


@pytest.mark.slow
def test_every_stage_of_the_gpu_check_runs(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_SMOKE="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert p.returncode == 0, log[-3000:] + p.stderr[-2000:]
    assert "smoke run" in log and "tests exit 0" in log and "done; JSON lines" in log, log
    assert "scan floor exit 0" in log, log
    floor = [json.loads(line) for line in (tmp_path / "gpu_floor.jsonl").read_text().splitlines()]
    assert [r["measure"] for r in floor] == ["forward", "forward+backward", "bare scan",
                                             "one GEMM"], floor
    for label in BENCHES:
        assert f"bench {label} exit 0" in log, log
    records = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == [f"gpu_check:{b}" for b in BENCHES]
    assert all(r["tokens_per_s"] > 0 for r in records), records
    # Each stage's flags reach the bench tool.
    by = {b: r for b, r in zip(BENCHES, records)}
    assert [r["compute"] for r in records] == ["bfloat16", "float16", "bfloat16", "bfloat16",
                                               "bfloat16", "float16", "bfloat16", "bfloat16"]
    assert [r["kind"] for r in records] == [b.split("-")[0] for b in BENCHES]
    assert by["mlstm-bf16-custom"]["pipeline"] is not None
    assert by["mlstm-bf16-f32-factors"]["layout"] == "batch"
    assert by["mlstm-bf16-f32-factors"]["factors"] == "float32"
    assert by["mlstm-bf16-autodiff"]["grad"] == "autodiff"
    assert by["mlstm-bf16-feature-layout"]["layout"] == "feature"
    assert by["mlstm-bf16-feature-layout"]["unroll"] == 1
    assert by["mlstm-bf16-remat"]["remat"] == "segments"
    assert by["mlstm-bf16-remat"]["layout"] == "feature"


@pytest.mark.slow
def test_the_ab_part_runs_the_headline_once_per_environment(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_SMOKE="1", GPU_CHECK_PART="ab",
               GPU_CHECK_AB="base:;other:LMSCALE_UNUSED=1 XLA_FLAGS=", PYTHON=sys.executable)
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert p.returncode == 0, log[-3000:] + p.stderr[-2000:]
    assert "variant other: LMSCALE_UNUSED=1 XLA_FLAGS=" in log and "done (A/B part)" in log, log
    labels = [json.loads(line)["label"] for line in
              (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert labels == ["gpu_check:mlstm-bf16-ab-base", "gpu_check:mlstm-bf16-ab-other"]


@pytest.mark.slow
def test_the_profile_part_runs(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_SMOKE="1", GPU_CHECK_PART="profile",
               PYTHON=sys.executable)
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert p.returncode == 0, log[-3000:] + p.stderr[-2000:]
    assert "profile exit 0" in log and "done (profile part)" in log, log
    assert "operation" in (tmp_path / "gpu_profile.txt").read_text()
    assert "HloModule" in (tmp_path / "step.hlo").read_text()[:200]
    labels = [json.loads(line)["label"] for line in
              (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert labels == ["gpu_check:mlstm-bf16-graph-loops", "gpu_check:mlstm-bf16-no-graphs",
                      "gpu_check:mlstm-bf16-unroll1"]
    gemm = json.loads((tmp_path / "gpu_floor_gemm.jsonl").read_text().splitlines()[-1])
    assert gemm["measure"] == "one GEMM"
