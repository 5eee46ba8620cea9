"""The sweep report of points that did not train to their end."""

from __future__ import annotations

from lmscale.sweeps import expand, load_sweep_spec
from lmscale.sweeps.report import point_result, write_report
from lmscale.sweeps.workdir import claim, write_status
from tests.sweeps.conftest import base_config, write_sweep


def _points_with_status(tiny, tmp_path, base, sweep_source: str, status: dict):
    """A claimed sweep folder whose every point has ``status`` and nothing else."""
    sweep_file = write_sweep(tmp_path / "s.py", sweep_source)
    sweep = expand(load_sweep_spec(sweep_file), base)
    out = tmp_path / "out"
    claim(str(out), base.to_dict(), sweep, str(tiny / "tiny.py"), sweep_file)
    for point in sweep.points:
        (out / point.name).mkdir()
        write_status(str(out / point.name), status)
    return sweep_file, sweep, out


def test_a_point_failed_before_its_config_shows_its_known_lr_and_steps(tiny, tmp_path):
    """A point that failed before writing config.json showed "lr –" and "0/?" though its
    settings give both; a learning rate of a per-device batch under a scaling rule stays –."""
    base = base_config(tiny)
    sweep_file, sweep, out = _points_with_status(tiny, tmp_path, base, """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3, 5e-3]},
                    "derived": lambda p: {"train.steps": 50 if p["optim.lr"] < 3e-3 else 70}}
    """, {"status": "failed", "step": 0})
    results = write_report(str(out), sweep, title="t")
    assert [(r["status"], r["lr"], r["steps"]) for r in results] == [
        ("failed", 2e-3, 50), ("failed", 5e-3, 70)]
    report = (out / "report.md").read_text()
    assert "| 0.002 | 0.002 | failed | failed | 0/50 |" in report, report
    assert "| 0.005 | 0.005 | failed | failed | 0/70 |" in report, report
    with base.unlocked():
        base.optim.lr_scaling = "linear"
        base.train.per_device_batch_size = 2  # the global batch depends on the devices
    scaled = tmp_path / "scaled"
    claim(str(scaled), base.to_dict(), sweep, str(tiny / "tiny.py"), sweep_file)
    assert point_result(str(scaled), sweep.points[0])["lr"] is None
    assert point_result(str(scaled), sweep.points[0])["steps"] == 50


def test_a_finished_point_without_its_metrics_says_so(tiny, tmp_path):
    """A finished point whose metrics.jsonl was deleted read "ok (no val)", as if it had
    trained without validation."""
    import json
    _, sweep, out = _points_with_status(tiny, tmp_path, base_config(tiny), """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3, 5e-3, 8e-3]}}
    """, {"status": "ok", "step": 20})
    (out / sweep.points[1].name / "metrics.jsonl").write_text(
        json.dumps({"step": 20, "split": "train", "loss": 2.0, "bpc": 2.9}) + "\n")
    (out / sweep.points[2].name / "metrics.jsonl").write_text("")
    write_report(str(out), sweep, title="t")
    report = (out / "report.md").read_text()
    for said in ("ok (no metrics.jsonl)", "ok (no val)", "ok (no records)"):
        assert report.count(said) == 1, report


def test_a_point_left_running_is_counted_in_the_summary(tiny, tmp_path):
    """A point killed before its status was written stayed "running": the summary counted
    only the five statuses it knew ("2 points: ." of a two-point sweep)."""
    _, sweep, out = _points_with_status(tiny, tmp_path, base_config(tiny), """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3, 5e-3]}}
    """, {"status": "running", "step": 3})
    write_report(str(out), sweep, title="t")
    assert "2 points: 2 running." in (out / "report.md").read_text()


def test_a_diverged_points_curve_is_drawn_at_the_top_not_off_the_axes(tmp_path):
    """A diverged point's last train BPC (455 here) was plotted at its value, above the axes'
    top of 8.5: its line and x marker were invisible, only its legend entry showed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from unittest import mock
    from lmscale.sweeps import report

    point = mock.Mock(values={"lr": 50.0}, name="lr-50")
    ok = mock.Mock(values={"lr": 1e-3}, name="lr-0.001")
    sweep = mock.Mock(axes=["lr"], axis_values={"lr": [1e-3, 50.0]})
    results = [{"point": ok, "status": "ok", "tokens_per_step": 100, "val": [],
                "train": [{"step": s, "bpc": 8.0 - s / 100} for s in (10, 20, 30)]},
               {"point": point, "status": "div", "tokens_per_step": 100, "val": [],
                "train": [{"step": 10, "bpc": 455.0}]}]
    drawn = []
    real = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        lines = real(ax, *args, **kwargs)
        drawn.append(ax)
        return lines

    with mock.patch.object(plt.Axes, "plot", spy):
        report._curves(str(tmp_path), sweep, results)
    ax = drawn[0]
    low, high = ax.get_ylim()
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert all(low <= y <= high for y in ys), (ys, (low, high))


def test_a_failed_transfer_shows_no_old_accuracy_in_the_pair_tables(tmp_path):
    """The All points row said 'failed', the axis-pair cell the old results.json's accuracy."""
    import json

    from lmscale.sweeps.grid import Point, Sweep
    from lmscale.sweeps.report import write_report
    values = [{"model.hidden": h, "optim.lr": lr} for h in (8, 16) for lr in (1e-3, 3e-3)]
    points = [Point(f"hidden-{v['model.hidden']}_lr-{v['optim.lr']}", v, v) for v in values]
    sweep = Sweep(axes=["model.hidden", "optim.lr"],
                  axis_values={"model.hidden": [8, 16], "optim.lr": [1e-3, 3e-3]}, points=points)
    for p in points:
        (tmp_path / p.name / "transfer").mkdir(parents=True)
        (tmp_path / p.name / "transfer" / "results.json").write_text(json.dumps(
            {"all_features": {"val_accuracy": 0.777}, "neuron": {}, "features": {"dimensions": 8}}))
    write_report(str(tmp_path), sweep, title="t", transfer_failed={points[0].name: "gone"})
    pair = [line for line in (tmp_path / "report.md").read_text().splitlines()
            if line.startswith("| 8 |") and "steps" in line][0]
    assert pair.count("val acc 77.7 %") == 1 and "transfer failed" in pair, pair


def test_the_best_point_is_the_lowest_last_validation_bpc(tiny, tmp_path):
    """Each point shows its last val BPC and the furthest step any record reached; the report
    marks the point of the lowest last val BPC (not the first record's, nor the highest)."""
    import json
    _, sweep, out = _points_with_status(tiny, tmp_path, base_config(tiny), """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3, 5e-3, 8e-3]}}
    """, {"status": "ok", "step": 10})
    for i, (point, last) in enumerate(zip(sweep.points, (2.5, 2.1, 2.8))):
        (out / point.name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "split": "val", "loss": 2.0, "bpc": b}) + "\n"
            for s, b in ((10, 3.0 + i / 10), (20, last))))
    r = point_result(str(out), sweep.points[1])
    assert (r["val_bpc"], r["val_step"], r["step"]) == (2.1, 20, 20)
    write_report(str(out), sweep, title="t")
    report = (out / "report.md").read_text()
    assert f"Lowest validation BPC: {sweep.points[1].name} (2.100)" in report, report


def test_notes_are_read_as_utf8_under_an_ascii_locale(tiny, tmp_path):
    """DIR/notes.md was read in the locale's encoding: under LC_ALL=C (PYTHONUTF8=0) a note
    with an accent stopped the report with a UnicodeDecodeError traceback."""
    import os
    import subprocess
    import sys
    from tests.conftest import REPO
    _, _, out = _points_with_status(tiny, tmp_path, base_config(tiny), """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3]}}
    """, {"status": "ok", "step": 20})
    (out / "notes.md").write_text("## Findings\n\nthe caf\u00e9 corpus <b>helps</b>\n",
                                  encoding="utf-8")
    code = ("import sys\n"
            "from lmscale.sweeps import expand, load_sweep_spec\n"
            "from lmscale.sweeps.report import write_report\n"
            "from tests.sweeps.conftest import base_config\n"
            "from pathlib import Path\n"
            "sweep = expand(load_sweep_spec(sys.argv[1]), base_config(Path(sys.argv[2])))\n"
            "write_report(sys.argv[3], sweep, title='t')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.py"), str(tiny), str(out)],
                          env={**env, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)},
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "the caf\u00e9 corpus <b>helps</b>" in (out / "report.md").read_text(encoding="utf-8")
    assert ("<p>the caf\u00e9 corpus &lt;b&gt;helps&lt;/b&gt;</p>"
            in (out / "report.html").read_text(encoding="utf-8"))


def test_a_points_damaged_files_are_read_as_missing_not_a_traceback(tiny, tmp_path):
    """A finished point's torn or hand-edited config.json, a metrics.jsonl line that is no
    record (a number, a record without its step) and a results.json that is no object made
    the sweep's report (every re-run of the sweep) a JSONDecodeError, AttributeError,
    KeyError or TypeError traceback."""
    import json
    _, sweep, out = _points_with_status(tiny, tmp_path, base_config(tiny), """
        def get_sweep():
            return {"grid": {"optim.lr": [2e-3, 5e-3]}}
    """, {"status": "ok", "step": 20})
    records = [{"step": 20, "split": "train", "loss": 2.0, "bpc": 2.9},
               {"step": 20, "split": "val", "loss": 2.1, "bpc": 3.0}]
    for point, config in zip(sweep.points, ['{"derived": {"ste', "[1]"]):
        d = out / point.name
        (d / "config.json").write_text(config)
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records[:1]) + '5\n{"split": "val"}\n'
            + "9" * 5000 + "\n" + json.dumps(records[1]) + "\n")
        (d / "transfer").mkdir()
        (d / "transfer" / "results.json").write_text("[1]")
    results = write_report(str(out), sweep, title="t")
    assert [(r["val_bpc"], r["step"], r["steps"], r["transfer"]) for r in results] == [
        (3.0, 20, 20, None)] * 2
    assert "| 0.002 | 0.002 | ok | 3.000 * | 20/20 |" in (out / "report.md").read_text()
