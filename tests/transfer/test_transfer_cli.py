"""The transfer tool end to end on SST with a (tiny) trained LM, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tests.conftest import REPO
from tests.transfer.conftest import SST

pytestmark = pytest.mark.shared_data


def run_tool(*args):
    return subprocess.run([sys.executable, "-m", "lmscale.transfer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


# A shorter C grid than the default: the tiny LM's features carry little signal, and
# liblinear's largest Cs (1, 2) took most of each run's time on them.
C = "--C=0.0078125,0.03125,0.125,0.5"


def test_transfer_end_to_end_on_sst(sst_run, tmp_path):
    out = tmp_path / "transfer"
    proc = run_tool(f"--workdir={sst_run}", f"--train={SST}/train.csv", f"--val={SST}/val.csv",
                    f"--test={SST}/test.csv", f"--output={out}", C)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "neuron" in proc.stdout and "baseline" in proc.stdout
    # a log without a terminal says each stage as it starts (it was silent through a long fit)
    assert "featurizing train: " in proc.stderr and "fitting L1 logistic regressions" in proc.stderr
    r = json.loads((out / "results.json").read_text())
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert 0.0 <= r["all_features"][key] <= 1.0
    assert 0 <= r["neuron"]["index"] < 32 and 0.0 <= r["neuron"]["test_accuracy"] <= 1.0
    assert r["baseline"]["test_accuracy"] > 0.7  # bag of words on SST: ~0.78
    assert list(r["all_features"]["val_accuracy_by_C"]) == ["0.0078125", "0.03125", "0.125", "0.5"]
    assert r["data"]["test"]["texts"] == 1821 and r["features"]["dimensions"] == 32
    assert [t["k"] for t in r["top_k"]] == [1, 2, 4, 8, 16]
    for name in ("neuron_histogram.png", "weights.png", "neuron_heatmap.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "<span title=" in (out / "neuron_heatmap.html").read_text()
    # The features were cached in the run: a second run does not featurize again.
    again = run_tool(f"--workdir={sst_run}", f"--train={SST}/train.csv", f"--val={SST}/val.csv",
                     f"--output={tmp_path / 'again'}", "--baseline=none", C)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "again" / "results.json").read_text())["neuron"] == {
        k: v for k, v in r["neuron"].items() if k != "test_accuracy"} | {"test_accuracy": None}
    assert r["features"]["compute"] == "float32"
    # bfloat16 matmuls: features of their own (a cache entry per split), as good a classifier.
    features = Path(sst_run) / "features"
    cached = len(list(features.iterdir()))
    half = run_tool(f"--workdir={sst_run}", f"--train={SST}/train.csv", f"--val={SST}/val.csv",
                    f"--output={tmp_path / 'bf16'}", "--baseline=none", "--compute=bfloat16", C)
    assert half.returncode == 0, half.stderr[-2000:]
    rb = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert rb["features"]["compute"] == "bfloat16"
    assert len(list(features.iterdir())) == cached + 2
    assert abs(rb["all_features"]["val_accuracy"] - r["all_features"]["val_accuracy"]) < 0.03
    # Its saved classifier featurizes in bfloat16 too, as it was fit.
    import lmscale
    classifier = lmscale.load_classifier(str(tmp_path / "bf16"))
    assert classifier.lm.compute == "bfloat16" and lmscale.load_classifier(str(out)).lm.compute == "float32"
    probs, _ = classifier.predict(["a fine film", "dull and lifeless"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("args,message", [
    (["--label_column=stars"], "no column 'stars'; columns are ['label', 'sentence']"),
    (["--train={semeval}"], "no column 'sentence'"),
    (["--C=0.5,abc"], "C must be a number, got 'abc'"),
    (["--C=0"], "C must be finite and > 0, got '0'"),
])
def test_bad_columns_and_Cs_are_one_line_errors(sst_run, args, message):
    from tests.conftest import shared_data
    needs = any("{semeval}" in a for a in args)  # registered data: skipped without it
    semeval = shared_data("semeval2018_ec") / "train.csv" if needs else None
    base = {"--train": f"{SST}/train.csv"}
    extra = [a.format(semeval=semeval) for a in args]
    for a in extra:
        base.pop(a.split("=")[0], None)
    proc = run_tool(f"--workdir={sst_run}", *[f"{k}={v}" for k, v in base.items()],
                    f"--val={SST}/val.csv", *extra)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]


def test_workdir_without_checkpoint_and_non_binary_labels(sst_run, tmp_path):
    proc = run_tool(f"--workdir={tmp_path}", f"--train={SST}/train.csv", f"--val={SST}/val.csv")
    assert proc.returncode == 1 and "is not a training run" in proc.stderr.strip().splitlines()[-1]
    three = tmp_path / "three.csv"
    three.write_text("sentence,label\na b,0\nc d,1\ne f,2\n")
    proc = run_tool(f"--workdir={sst_run}", f"--train={three}", f"--val={SST}/val.csv")
    assert proc.returncode == 1
    assert "has values [0, 1, 2]; binary classification needs exactly two classes" in \
        proc.stderr.strip().splitlines()[-1]


def test_a_classifier_in_its_workdir_moves_and_copies_with_it(sst_run, tmp_path):
    """WORKDIR/transfer reads the LM of the workdir it sits in: a moved workdir still
    classifies, a copy reads the copy (it read the original's weights), and with the LM
    gone the error names where it was."""
    import csv
    import shutil
    import lmscale
    rows = list(csv.DictReader(open(f"{SST}/train.csv")))
    for name, part in (("tr", rows[:160]), ("va", rows[160:240])):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["label", "sentence"])
            w.writeheader()
            w.writerows({"label": r["label"], "sentence": r["sentence"]} for r in part)
    lm_a = tmp_path / "lm_a"
    shutil.copytree(sst_run, lm_a)
    proc = run_tool(f"--workdir={lm_a}", f"--train={tmp_path}/tr.csv", f"--val={tmp_path}/va.csv",
                    "--baseline=none", C)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = lmscale.load_classifier(str(lm_a / "transfer")).predict(["a fine film"])[0]
    copy = tmp_path / "lm_copy"
    shutil.copytree(lm_a, copy)
    assert lmscale.load_classifier(str(copy / "transfer")).lm.workdir == str(copy)
    lm_b = tmp_path / "lm_b"
    lm_a.rename(lm_b)
    moved = lmscale.load_classifier(str(lm_b / "transfer"))
    assert moved.lm.workdir == str(lm_b)
    np.testing.assert_allclose(moved.predict(["a fine film"])[0], want, rtol=1e-6)
    # A classifier written elsewhere, copied where its path from there finds another run
    # (here one without its checkpoints): the absolute path it was fit with is read instead.
    elsewhere = tmp_path / "results" / "sst"
    proc = run_tool(f"--workdir={lm_b}", f"--train={tmp_path}/tr.csv", f"--val={tmp_path}/va.csv",
                    "--baseline=none", C, f"--output={elsewhere}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(tmp_path / "results", tmp_path / "deep" / "results")
    shutil.copytree(lm_b, tmp_path / "deep" / "lm_b", ignore=shutil.ignore_patterns("checkpoints"))
    assert lmscale.load_classifier(str(tmp_path / "deep" / "results" / "sst")).lm.workdir == str(lm_b)
    alone = tmp_path / "alone"
    shutil.copytree(lm_b / "transfer", alone)
    shutil.rmtree(lm_b)
    with pytest.raises(FileNotFoundError, match=f"it was fit on {lm_a}"):
        lmscale.load_classifier(str(alone))


def test_a_reader_that_left_before_the_results_is_no_traceback(sst_run, tmp_path):
    """``lmscale.transfer ... | head -1``: the results printed after the work met a closed
    pipe, a BrokenPipeError traceback and exit status 1 (results.json written)."""
    import os
    rows = ["sentence,label"] + [f"{'good' if i % 2 else 'bad'} movie {i},{i % 2}"
                                 for i in range(12)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "t.csv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a user's stdout
    proc = subprocess.Popen([sys.executable, "-m", "lmscale.transfer", f"--workdir={sst_run}",
                             f"--train={csv}", f"--val={csv}", f"--output={tmp_path / 'tr'}",
                             "--baseline=none", "--C=1.0", "--features_dir="], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader left before the results: `| true`
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 0 and "Traceback" not in err, err[-2000:]
    assert (tmp_path / "tr" / "results.json").exists()
