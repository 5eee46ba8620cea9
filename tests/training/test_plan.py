"""The dry-run plan: compiles without data or weights and reports memory and collectives."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_plan_cli_on_four_virtual_devices(tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=4",
         "--config.precision.compute=bfloat16", "--config.train.per_device_batch_size=16",
         f"--json={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "all-reduces    1 per step" in proc.stdout
    p = json.loads(out.read_text())
    assert p["devices"] == 4 and p["global_batch"] == 64 and p["per_device_batch"] == 16
    assert p["precision"] == "params=float32,compute=bfloat16,output=float32"
    # One all-reduce per step: every float32 gradient plus the three loss sums.
    assert p["all_reduces_per_step"] == 1
    assert p["all_reduce_bytes_per_step"] == 4 * (p["params"] + 3)
    mem = p["memory_per_device_bytes"]
    assert mem["arguments"] >= 4 * p["params"] * 3  # params + Adam's two moments, replicated
    assert mem["total"] > 0 and mem["aliased (donated)"] > 0


def test_plan_rejects_indivisible_batch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py", "--devices=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: train.batch_size=32 is not divisible by the 3 devices")
