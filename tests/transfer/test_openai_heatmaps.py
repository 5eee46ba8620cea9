"""The heatmaps of an imported OpenAI model: its preprocessing gives the UTF-8 bytes it read
(framed as "\\n " + text + " "), and the heatmaps crashed on them ('int' object has no
attribute 'encode'), so transfer wrote no results.json."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np

from lmscale.transfer import plots
from tests.transfer.conftest import random_lm


def test_a_heatmap_of_bytes_shows_the_decoded_text_aligned_with_the_trace(tmp_path):
    text = "\n héllo — ok ".encode() + b"\xff!"  # an invalid byte: one U+FFFD
    trace = np.arange(len(text), dtype=np.float32)
    chars, values = plots._per_char(text, trace)
    assert chars == "\n héllo — ok \ufffd!"
    ends = np.cumsum([len(c.encode()) for c in "\n héllo — ok "] + [1, 1]) - 1
    np.testing.assert_array_equal(values, trace[ends])
    plots.heatmap_png([text], [trace], str(tmp_path / "h.png"), unit=1)
    plots.heatmap_html([text], [trace], str(tmp_path / "h.html"), unit=1)
    page = (tmp_path / "h.html").read_text(encoding="utf-8")
    assert "é" in page and "—" in page and "\ufffd" in page
    assert (tmp_path / "h.png").stat().st_size > 0


def test_transfer_on_an_openai_model_writes_its_heatmap_of_the_framed_text(tmp_path):
    from lmscale.transfer.featurize import unit_trace
    from lmscale.transfer.run import run_transfer
    lm = dataclasses.replace(random_lm(), derived={"preprocess": "openai"})
    for name in ("train", "val"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows([(f"a {'good' if i % 2 else 'bad'} film, number {i} of them all here "
                          "— héllo", i % 2) for i in range(8)])
    out = tmp_path / "out"
    results = run_transfer(str(tmp_path), str(tmp_path / "train.csv"), str(tmp_path / "val.csv"),
                           lm=lm, output=str(out), baseline="none", Cs=[1.0], examples=1)
    assert json.loads((out / "results.json").read_text())["neuron"] == results["neuron"]
    assert (out / "neuron_heatmap.png").exists()
    page = (out / "neuron_heatmap.html").read_text(encoding="utf-8")
    shown = "".join(re.findall(r"<span [^>]*>([^<]*)</span>", page))
    assert shown.startswith("\n a ") and shown.endswith("héllo ")  # as the model read it
    values = [float(v) for v in re.findall(r"title='([-0-9.]+)'", page)]
    trace = unit_trace(lm, shown[2:-1], results["neuron"]["index"], state="cell")
    assert len(values) == len(shown) and len(trace) == len(shown.encode())
    assert values[-1] == float(f"{trace[-1]:.3f}")
