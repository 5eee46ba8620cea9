"""The sweep command's flags reach its points as absl parsed them, and flags it would ignore
or choke on late are refused before any point trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.sweeps.conftest import write_sweep


def _sweep(tiny: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    sweep_file = write_sweep(out.parent / f"{out.name}.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [3e-3]}}
    """)
    return subprocess.run([sys.executable, "-m", "lmscale.sweep", f"--config={tiny / 'tiny.py'}",
                           f"--sweep={sweep_file}", f"--workdir={out}", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_overrides_from_a_flagfile_and_with_a_space_reach_every_point(tiny, tmp_path):
    """The points were given the raw argv's '--config.' arguments: an override in a
    --flagfile never reached them (sweep.json said hidden 16, the point trained 256), and
    '--config.x VALUE' reached them without its value (every point failed)."""
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("--config.model.hidden=12\n--config.train.steps=6\n")
    out = tmp_path / "out"
    proc = _sweep(tiny, out, f"--flagfile={flagfile}", "--config.model.embed", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (point,) = [p for p in out.iterdir() if (p / "config.json").exists()]
    model = json.load(open(point / "config.json"))
    assert (model["model"]["hidden"], model["model"]["embed"], model["train"]["steps"]) == (12, 4, 6)


def test_flags_it_would_ignore_or_fail_on_after_training_are_refused_first(tiny, tmp_path):
    """--label_column=a,b trained every point, then the report's transfer summary failed
    (KeyError 'neuron') on every later run too; transfer columns without transfer sets were
    ignored."""
    labeled = tmp_path / "l.csv"
    labeled.write_text("sentence,a,b\ngood,1,0\nbad,0,1\n")
    for flags, message in (
            ([f"--transfer_train={labeled}", f"--transfer_val={labeled}", "--label_column=a,b"],
             "--label_column='a,b': a sweep's transfer scores one 0/1 label column"),
            (["--text_column=review"], "--text_column names the transfer's columns; give "
                                       "--transfer_train and --transfer_val too"),
            # The point's own flag came last and won: the command's value was dropped unsaid.
            (["--config.optim.lr=0.5"], "--config.optim.lr=0.5: the sweep sets optim.lr for its "
                                        "points (optim.lr=0.003 at ")):
        out = tmp_path / "refused"
        proc = _sweep(tiny, out, *flags)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert not any(out.glob("*/config.json"))


def test_a_multilabel_transfer_in_a_point_does_not_break_the_report():
    """A point's folder can hold lmscale.transfer's multi-label results (no neuron)."""
    from lmscale.sweeps.transfer import transfer_summary
    summary = transfer_summary({"all_features": {"test_accuracy": 0.5, "val_accuracy": 0.6},
                                "features": {"dimensions": 16}, "multilabel": True})
    assert summary["neuron"] is None and summary["dimensions"] == 16


def test_a_workdir_that_is_a_file_is_one_line(tiny, tmp_path):
    """--workdir naming a file: FileExistsError's traceback, after the sweep was read."""
    out = tmp_path / "a_file"
    out.write_text("x")
    proc = _sweep(tiny, out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"--workdir={out} is a file, not a folder" in proc.stderr
