"""examples/sentiment_neuron.ipynb runs top to bottom (CPU, a few minutes)."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, SHARED_DATA, default_level_xla_flags


@pytest.mark.shared_data
def test_sentiment_neuron_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(REPO / "examples" / "sentiment_neuron.ipynb", as_version=4)
    # Same notebook, with its run directory moved into the test's temporary folder, and the
    # data sets' cache pointed at the shared copies (fetch verifies them, downloads nothing).
    monkeypatch.setenv("LMSCALE_DATA", str(SHARED_DATA))
    monkeypatch.setenv("LMSCALE_DATA_MIRROR", "http://127.0.0.1:9")  # any download would fail
    monkeypatch.setenv("XLA_FLAGS", default_level_xla_flags())  # its programs run, mostly
    nb.cells[2].source = nb.cells[2].source.replace(
        'WORKDIR = ROOT / "runs" / "notebook_sst"', f'WORKDIR = Path({str(tmp_path / "run")!r})')
    assert 'WORKDIR = Path(' in nb.cells[2].source
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "examples")}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for o in cell.outputs)
    assert "neuron" in outputs and "bag of words" in outputs and "neuron held at" in outputs
    assert f"SST binary in {SHARED_DATA / 'sst_binary'}" in outputs and "cpu device(s)" in outputs
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
    results = json.loads((tmp_path / "run" / "transfer" / "results.json").read_text())
    # The demo LM's mean-pooled states beat chance on SST's test set (~61 % measured; the
    # classes are ~50/50, so one binomial standard deviation is ~1.2 points).
    assert results["all_features"]["test_accuracy"] > 0.56, results["all_features"]


@pytest.mark.parametrize("where", ["examples", "root", "elsewhere"])
def test_the_first_cell_installs_the_clone_it_is_opened_in(tmp_path, monkeypatch, where):
    """Opened from a clone's examples/ folder with lmscale not installed, the first cell cloned
    a second copy of the repository into examples/lmscale (over the network) and installed
    that. Its install step, run with lmscale reported missing and the commands recorded."""
    import importlib.util
    import subprocess
    nb = nbformat.read(REPO / "examples" / "sentiment_neuron.ipynb", as_version=4)
    setup = nb.cells[1].source.split("\nimport lmscale\n")[0]
    ran = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lmscale" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the cell inserts into it
    monkeypatch.chdir({"examples": REPO / "examples", "root": REPO, "elsewhere": tmp_path}[where])
    exec(setup, {})
    clone = REPO if where != "elsewhere" else tmp_path / "lmscale"
    assert [cmd[-1] for cmd in ran if "pip" in cmd] == [str(clone)]
    assert any("clone" in cmd for cmd in ran) == (where == "elsewhere"), ran
