"""A sweep's sentiment transfer (--transfer_train/--transfer_val): each finished point is
transferred and the report shows its accuracy; a bad labeled set is refused before training."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from lmscale.data.errors import DataError
from lmscale.sweeps import run_sweep
from lmscale.sweeps.transfer import TransferSets
from tests.sweeps.conftest import base_config, write_sweep

QUIET = dict(poll_seconds=0.1, log=lambda line: None)


def write_labeled(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        for i in range(n):
            label = i % 2
            words = rng.sample(["fine", "moving", "great"] if label else ["dull", "bad", "thin"], 2)
            w.writerow([f"the film was {words[0]} and {words[1]}", label])
    return str(path)


def test_sweep_transfers_its_points_and_checks_the_sets_first(tiny: Path):
    sweep_file = write_sweep(tiny / "h.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [16]}}
    """)
    train, val = write_labeled(tiny / "t.csv", 40, 0), write_labeled(tiny / "v.csv", 20, 1)
    typo = TransferSets(train, str(tiny / "nope.csv"))
    with pytest.raises(DataError, match="nope.csv"):  # found after training every point before
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(tiny / "typo"),
                  transfer=typo, **QUIET)
    assert not (tiny / "typo").exists()
    out = tiny / "with_transfer"
    result = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out),
                       transfer=TransferSets(train, val), **QUIET)
    [point] = result["results"]
    assert point["status"] == "ok" and point["transfer"]["dimensions"] == 16
    assert 0 <= point["transfer"]["val_accuracy"] <= 1
    saved = json.loads((out / "hidden-16" / "transfer" / "results.json").read_text())
    assert saved["all_features"]["val_accuracy"] == point["transfer"]["val_accuracy"]
    # Without a test set, the validation accuracies (the columns were "test", all "–").
    report = (out / "report.md").read_text()
    assert "| transfer val acc | neuron val acc |" in report, report
    assert f"| {100 * point['transfer']['val_accuracy']:.1f} % |" in report, report
    # The val file edited in place: transferred again (compared as a path, the old accuracies
    # stayed).
    import os
    write_labeled(tiny / "v.csv", 10, 3)
    made = os.path.getmtime(out / "hidden-16" / "transfer" / "results.json")
    os.utime(tiny / "v.csv", (made + 5, made + 5))
    lines = []
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out),
              transfer=TransferSets(train, val), poll_seconds=0.1, log=lines.append)
    assert "sweep: transfer hidden-16 (again: a labeled file was written since its results)" in lines
    saved = json.loads((out / "hidden-16" / "transfer" / "results.json").read_text())
    assert saved["data"]["val"]["texts"] == 10


def test_other_sets_are_transferred_again_and_a_failed_transfer_spares_the_others(tiny: Path):
    """A re-run naming other labeled sets reused the old sets' results under the new command;
    one point whose transfer failed (its checkpoints gone) ended the sweep before the others
    were transferred and before the report was written."""
    import shutil
    sweep_file = write_sweep(tiny / "two.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [8, 16]}}
    """)
    train, val = write_labeled(tiny / "t1.csv", 40, 0), write_labeled(tiny / "v1.csv", 20, 1)
    out = tiny / "again"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out),
              transfer=TransferSets(train, val), **QUIET)
    other_train = write_labeled(tiny / "t2.csv", 30, 2)
    shutil.rmtree(out / "hidden-8" / "checkpoints")
    lines = []
    result = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out),
                       transfer=TransferSets(other_train, val), poll_seconds=0.1, log=lines.append)
    assert "sweep: transfer hidden-16 (again: its results were made from other labeled sets)" in lines
    saved = json.loads((out / "hidden-16" / "transfer" / "results.json").read_text())
    assert saved["data"]["train"]["source"] == other_train and saved["data"]["train"]["texts"] == 30
    assert list(result["transfer_failed"]) == ["hidden-8"]
    assert "holds no checkpoint" in result["transfer_failed"]["hidden-8"]
    assert any(line.startswith("sweep: transfer hidden-8 failed: ") for line in lines)
    # The report said "–" for a failed transfer (or, as here, the old sets' accuracy)
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| 8 |"))
    assert row.rstrip(" |").endswith("failed | failed"), row
    assert "Transfer failed: hidden-8: " in report and "holds no checkpoint" in report


def test_a_test_set_that_is_the_train_file_is_refused_before_training(tiny: Path):
    sweep_file = write_sweep(tiny / "h.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [16]}}
    """)
    train, val = write_labeled(tiny / "t.csv", 40, 0), write_labeled(tiny / "v.csv", 20, 1)
    with pytest.raises(DataError, match="--transfer_test=.* is the --transfer_train file"):
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(tiny / "same"),
                  transfer=TransferSets(train, val, train), **QUIET)  # every transfer failed after training
    assert not (tiny / "same").exists()
