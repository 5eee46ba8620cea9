"""The generate tool end to end on a (tiny) trained LM: samples, a held neuron, its heatmap."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image

from tests.conftest import REPO


def test_generate_greedy_in_bfloat16_with_a_held_neuron(sst_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={sst_run}", "--prompt=The movie",
         "--length=24", "--temperature=0", "--samples=2", "--neuron=3", "--neuron_value=1.5",
         "--compute=bfloat16", f"--output={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "samples.json").read_text())
    assert record["compute"] == "bfloat16" and record["neuron"] == 3
    first, second = record["samples"]
    assert first == second  # greedy: both samples alike
    assert first.startswith("The movie") and len(first.encode()) >= len("The movie") + 24
    assert first in proc.stdout
    image = matplotlib.image.imread(tmp_path / "heatmap.png")  # the held unit's trace
    assert image.ndim == 3 and image.shape[0] > 50
    assert "<span title=" in (tmp_path / "heatmap.html").read_text()
