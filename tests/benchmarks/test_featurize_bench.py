"""benchmarks/featurize.py end to end on a few SST sentences: its JSON lines, and the A/B
against another featurize.py giving the same features."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.transfer.conftest import SST


@pytest.mark.shared_data
def test_featurize_benchmark_rows_and_before_after(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "benchmarks/featurize.py", "--hidden", "16", "--config",
         "configs/transformer_quickstart.py", "--texts", "40",
         "--batch", "8", "--chunk", "16", "--compute", "float32,bfloat16", "--before",
         str(REPO / "lmscale" / "transfer" / "featurize.py"), "--data", str(SST / "test.csv"),
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r.get("hidden", r.get("kind")), r["version"], r["compute"]) for r in rows] == [
        (model, version, compute) for model in (16, "transformer")
        for compute in ("float32", "bfloat16") for version in ("before", "current")]
    for r in rows:
        assert r["texts"] == 40 and r["chars_per_s"] > 0 and 0 < r["utilization"] < 2
        assert r["first_seconds"] >= r["seconds"] * 0.5
    assert all(r["max_abs_difference"] == 0.0 for r in rows if r["version"] == "before")
    assert all(0.5 < r["efficiency"] <= 1.0 for r in rows if r["version"] == "current")
