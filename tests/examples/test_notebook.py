"""examples/sentiment_neuron.ipynb runs top to bottom (CPU, a few minutes)."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO, SHARED_DATA


def test_sentiment_neuron_notebook_runs(tmp_path):
    nb = nbformat.read(REPO / "examples" / "sentiment_neuron.ipynb", as_version=4)
    # Same notebook, with its run directory moved into the test's temporary folder.
    nb.cells[1].source = nb.cells[1].source.replace(
        'WORKDIR = ROOT / "runs" / "notebook_sst"', f'WORKDIR = __import__("pathlib").Path({str(tmp_path / "run")!r})')
    assert str(SHARED_DATA) and "WORKDIR = __import__" in nb.cells[1].source
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "examples")}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for o in cell.outputs)
    assert "neuron" in outputs and "bag of words" in outputs and "neuron held at" in outputs
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
    assert (tmp_path / "run" / "transfer" / "results.json").exists()
