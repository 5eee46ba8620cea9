"""Sweeps that train: a diverging point is marked "div" and the sweep goes on; a finished
sweep re-runs without training; a folder holding another sweep is refused in one line; damaged
sweep files and a text changed under the same path; the trainer's command and log (stops and
kills: test_runner_stops.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmscale.sweeps import SweepError, run_sweep
from lmscale.sweeps.divergence import find_divergence
from tests.conftest import REPO
from tests.sweeps.conftest import base_config, write_sweep

QUIET = dict(poll_seconds=0.1, log=lambda line: None)


@pytest.fixture(scope="module")
def finished(tiny: Path) -> tuple[Path, str, dict]:
    """A sweep whose first point diverges (learning rate 100) and second trains normally."""
    sweep_file = write_sweep(tiny / "lr.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [100.0, 3e-3]}}
    """)
    out = tiny / "lr_sweep"
    result = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    return out, sweep_file, result


def test_diverging_point_is_div_and_sweep_continues(finished):
    out, _, result = finished
    status = {r["point"].name: r["status"] for r in result["results"]}
    assert status == {"lr-100": "div", "lr-0.003": "ok"}
    div = json.loads((out / "lr-100" / "sweep_status.json").read_text())
    # blown up at its first logged loss: the trainer's own rule (above 1.5 x a uniform
    # guess's), which the sweep's running minimum (none before the first record) missed
    assert div["divergence"]["step"] <= 20 and any(
        why in div["divergence"]["reason"] for why in ("running minimum", "non-finite",
                                                       "above the trainer's"))
    ok = [json.loads(line) for line in (out / "lr-0.003" / "metrics.jsonl").read_text().splitlines()]
    assert ok[-1]["split"] == "val" and ok[-1]["step"] == 20
    report = (out / "report.md").read_text()
    assert "div (step" in report and f"{ok[-1]['bpc']:.3f}" in report
    # the best point named and marked (a diverged one never is), its command where it is
    assert (f"Lowest validation BPC: lr-0.003 ({ok[-1]['bpc']:.3f}), marked * below. Each "
            f"point's command is the first line of its NAME/train.log.") in report
    assert f"| {ok[-1]['bpc']:.3f} * |" in report and report.count(" * |") == 1
    assert (out / "curves.png").stat().st_size > 1000 and (out / "report.html").exists()


def test_a_point_folder_holding_a_longer_run_is_failed_not_its_result(tiny, finished):
    """A hand-started lmscale.train with more steps into a point's folder (the sweep had
    marked the point failed: "in use by another lmscale process"): the re-run's trainer found
    it "already trained" and the sweep reported the other run as the point, "ok at step 24",
    its BPC in the report (and possibly the best)."""
    import shutil

    from lmscale.sweeps.grid import point_config
    from lmscale.training.loop import train
    out, sweep_file, _ = finished
    other = tiny / "intruded_sweep"
    shutil.copytree(out, other)
    config = point_config(base_config(tiny), {"optim.lr": 3e-3})
    with config.unlocked():
        config.train.steps = 24  # the sweep's points train 20
    train(config, str(other / "lr-0.003"))
    (other / "lr-0.003" / "sweep_status.json").write_text('{"status": "failed"}')
    again = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(other), **QUIET)
    status = json.loads((other / "lr-0.003" / "sweep_status.json").read_text())
    assert status["status"] == "failed" and "past this point's 20 steps" in status["error"], status
    assert [r["status"] for r in again["results"]] == ["div", "failed"]


def test_a_point_whose_parameters_diverge_before_a_log_is_div(tiny):
    """A loss not finite (lr 3e38: past float32 by the second update) found at a checkpoint save (step 2), before any logged loss (every
    10 steps): the trainer exits EXIT_DIVERGED and the point is "div", not "failed"."""
    sweep_file = write_sweep(tiny / "inf.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [3e38]}}
    """)
    out = tiny / "inf_sweep"
    result = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out),
                       config_flags=["--config.train.log_every=10", "--config.checkpoint.every=2"],
                       **QUIET)
    [point] = result["results"]
    assert point["status"] == "div", point
    status = json.loads((out / point["point"].name / "sweep_status.json").read_text())
    assert status["returncode"] == 3 and status["divergence"] == {
        "step": 2, "loss": None, "reason": "non-finite loss at step 2 (found by the trainer, "
                                           "before a log)"}
    assert "div (step 2)" in (out / "report.md").read_text()


def test_rerun_of_finished_sweep_trains_nothing(tiny, finished):
    out, sweep_file, _ = finished
    before = {p: (out / p / "metrics.jsonl").read_bytes() for p in ("lr-100", "lr-0.003")}
    again = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert again["trained"] == []
    assert {p: (out / p / "metrics.jsonl").read_bytes() for p in before} == before
    assert [r["status"] for r in again["results"]] == ["div", "ok"]


def test_folder_of_another_sweep_is_refused(tiny, finished):
    out, _, _ = finished
    other = write_sweep(tiny / "other.py", "def get_sweep():\n    return {'grid': {'model.hidden': [8]}}\n")
    with pytest.raises(SweepError, match="holds a different sweep"):
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), other, str(out), **QUIET)
    cli = subprocess.run([sys.executable, "-m", "lmscale.sweep", f"--config={tiny / 'tiny.py'}",
                          f"--sweep={other}", f"--workdir={out}"], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 1
    assert cli.stderr.startswith("error: ") and "holds a different sweep" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


def test_values_added_to_an_axis_extend_the_sweep_and_keep_its_points(tiny, finished):
    """Another learning rate for the same sweep was refused ("holds a different sweep"): a
    new folder trained every point again."""
    import shutil
    out, _, _ = finished
    grown = tiny / "grown_sweep"
    shutil.copytree(out, grown)
    before = {p: (grown / p / "metrics.jsonl").read_bytes() for p in ("lr-100", "lr-0.003")}
    more = write_sweep(tiny / "lr3.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [100.0, 3e-3, 1e-3]}}
    """)
    again = run_sweep(base_config(tiny), str(tiny / "tiny.py"), more, str(grown), **QUIET)
    assert again["trained"] == ["lr-0.001"]
    assert {p: (grown / p / "metrics.jsonl").read_bytes() for p in before} == before
    assert [r["status"] for r in again["results"]] == ["div", "ok", "ok"]
    record = json.loads((grown / "sweep.json").read_text())
    assert [p["name"] for p in record["points"]] == ["lr-100", "lr-0.003", "lr-0.001"]
    assert record["extended"][0]["points_added"] == ["lr-0.001"]
    fewer = write_sweep(tiny / "lr1.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [3e-3]}}
    """)
    with pytest.raises(SweepError, match="its point lr-0.001 is not in this one"):
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), fewer, str(grown), **QUIET)


def test_divergence_rule():
    rec = lambda step, loss: {"split": "train", "step": step, "loss": loss}
    assert find_divergence([rec(2, 5.0), rec(4, 3.0), {"split": "val", "step": 4, "loss": 9.0}, rec(6, 4.4)]) is None
    assert find_divergence([rec(2, 5.0), rec(4, 3.0), rec(6, 4.6)])["step"] == 6
    assert find_divergence([rec(2, 5.0), rec(4, float("nan"))])["reason"] == "non-finite loss at step 4"
    for loss in (float("nan"), float("inf")):  # strict JSON in sweep_status.json, no NaN
        assert json.dumps(find_divergence([rec(2, 5.0), rec(4, loss)]), allow_nan=False) == (
            '{"step": 4, "loss": null, "reason": "non-finite loss at step 4"}')


def test_data_not_fetched_is_one_error_before_any_point(tiny, tmp_path, monkeypatch):
    """A config reading an unfetched data set started every point, each failing alone (the
    advice only in their train.log): the sweep says it once and starts none."""
    from lmscale.data.errors import DataError
    from lmscale.datasets import data_path
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path / "empty_cache"))
    sweep_file = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)
    base = base_config(tiny)
    with base.unlocked():
        base.data.train = data_path("tinyshakespeare", "input.txt")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not fetched yet: python -m lmscale.datasets fetch "
                                        "tinyshakespeare"):
        run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert not out.exists()
    missing = write_sweep(tmp_path / "m.py", """
        def get_sweep():
            return {"grid": {"data.train": ["/nonexistent/x.txt"]}}
    """)
    with pytest.raises(DataError, match="/nonexistent/x.txt"):  # a point's own data too
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), missing, str(out), **QUIET)


def test_a_finished_sweep_reruns_without_its_text(tiny, tmp_path):
    """Re-running a finished sweep (for its report) trains nothing and needs no text: the
    data check covers the points still to train only."""
    import shutil
    from tests.conftest import write_corpus
    corpus = write_corpus(tmp_path / "corpus", files=1, lines=200)
    base = base_config(tiny)
    with base.unlocked():
        base.data.train = corpus
    sweep_file = write_sweep(tmp_path / "one.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [3e-3]}}
    """)
    out = tmp_path / "out"
    first = run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert first["trained"] and first["results"][0]["status"] == "ok"
    shutil.rmtree(tmp_path / "corpus")
    again = run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert again["trained"] == [] and again["results"][0]["status"] == "ok"


@pytest.mark.parametrize("flag, value", [("divergence_factor", "nan"),
                                         ("cpu_budget_minutes", "nan")])
def test_a_nan_flag_is_refused_before_any_point_runs(tiny, tmp_path, flag, value):
    """nan passes absl's lower_bound: --divergence_factor=nan turned divergence detection off
    (a loss going 5.5 -> 217 was reported ok)."""
    sweep = write_sweep(tmp_path / "s.py", "def get_sweep():\n    return {'grid': {'model.hidden': [8]}}\n")
    cli = subprocess.run([sys.executable, "-m", "lmscale.sweep", f"--config={tiny / 'tiny.py'}",
                          f"--sweep={sweep}", f"--workdir={tmp_path / 'out'}", f"--{flag}={value}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and f"--{flag}" in cli.stderr, cli.stderr[-1000:]
    assert not (tmp_path / "out").exists()


def test_damaged_sweep_files_are_one_line_or_recovered(tiny, finished):
    """A torn sweep_status.json, sweep_runs.jsonl or sweep.json was a JSONDecodeError
    traceback on every later run of the sweep."""
    import shutil
    out, sweep_file, _ = finished
    copy = tiny / "damaged"
    shutil.copytree(out, copy)
    (copy / "lr-0.003" / "sweep_status.json").write_text('{"status": "o')
    with open(copy / "sweep_runs.jsonl", "a") as f:
        f.write('{"time": "2026-')  # a full disk's torn line
    again = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(copy), **QUIET)
    assert [r["status"] for r in again["results"]] == ["div", "ok"]  # recovered from its folder
    assert "Sweep time" in (copy / "report.md").read_text()
    (copy / "sweep.json").write_text('{"points": [')
    with pytest.raises(SweepError, match=r"sweep.json is damaged \(.*\): it records which sweep"):
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(copy), **QUIET)


def test_text_changed_under_the_same_path_is_refused_while_points_remain(tiny, tmp_path):
    """A corpus edited between two runs of a sweep: the finished points had read the old text,
    the rest trained on the new, and only a resumed point's train.log said so."""
    import shutil
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and looked at the dog. " * 400)
    base = base_config(tiny)
    with base.unlocked():
        base.data.train = str(corpus)
    sweep_file = write_sweep(tiny / "text.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [8, 16]}}
    """)
    out = tmp_path / "text_sweep"
    run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert json.loads((out / "sweep_text.json").read_text())["hidden-8"][0][0] == str(corpus)
    again = run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert again["trained"] == []  # nothing changed, nothing left: as before
    shutil.rmtree(out / "hidden-16")  # a point still to train
    corpus.write_text("a wholly other text about ships and the sea. " * 500)
    with pytest.raises(SweepError, match=r"the text of point hidden-16 changed since the sweep "
                                         r"began \(.*corpus.txt.*\): the points trained so far "
                                         r"read the old text"):
        run_sweep(base, str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)


def test_a_cpu_slot_records_its_one_device_in_the_command(monkeypatch, tmp_path):
    """--parallel=K on CPU runs each point as one device (JAX_NUM_CPU_DEVICES=1): the command
    (train.log, sweep_status.json) and so the point's config.json say so, or rerunning them by
    hand splits the host into one device per core and the run differs (~1e-7 from step 1)."""
    from lmscale.sweeps.grid import Point
    from lmscale.sweeps.runner import RunOptions, device_groups, train_command
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no nvidia-smi")))
    envs = device_groups(2)
    assert envs == [{"JAX_NUM_CPU_DEVICES": "1"}] * 2
    point = Point(name="seed-3", values={"seed": 3}, overrides={"seed": 3})
    for env in envs:
        command = train_command(point, str(tmp_path / "p"), RunOptions("c.py", ["--config.train.steps=3"]), env)
        assert command[-1] == "--config.parallel.cpu_devices=1"
    assert not any("cpu_devices" in a for a in
                   train_command(point, str(tmp_path / "p"), RunOptions("c.py", []), {}))


def test_a_command_cpu_device_count_is_kept_under_parallel():
    """--parallel=2 --config.parallel.cpu_devices=2: the slot's 1 came after and won, unsaid."""
    from lmscale.sweeps.grid import Point
    from lmscale.sweeps.runner import RunOptions, train_command
    point = Point("lr-0.001", {"optim.lr": 1e-3}, {"optim.lr": 1e-3})
    given = RunOptions("c.py", ["--config.parallel.cpu_devices=2"], parallel=2)
    command = train_command(point, "d", given, {"JAX_NUM_CPU_DEVICES": "1"})
    assert [a for a in command if "cpu_devices" in a] == ["--config.parallel.cpu_devices=2"]
    plain = RunOptions("c.py", [], parallel=2)
    assert train_command(point, "d", plain, {"JAX_NUM_CPU_DEVICES": "1"})[-1] == "--config.parallel.cpu_devices=1"


def test_a_trainers_log_is_utf8_in_an_ascii_locale(tmp_path):
    """train.log was opened in the locale's encoding: under LC_ALL=C (PYTHONUTF8=0) a
    point's command naming a non-ASCII path was a UnicodeEncodeError, and its last error
    read back from a UTF-8 log a UnicodeDecodeError (the sweep's traceback)."""
    log = tmp_path / "train.log"
    log.write_text("$ python -m lmscale.train\nerror: no such file: caf\u00e9.txt\n",
                   encoding="utf-8")
    code = ("import sys\nfrom lmscale.sweeps.runner import _last_error\n"
            "print(ascii(_last_error(sys.argv[1])))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-c", code, str(log)], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**env, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ascii("error: no such file: caf\u00e9.txt")


def test_a_point_command_naming_a_non_ascii_folder_is_logged_in_an_ascii_locale(tmp_path):
    """The trainer's command line heads its train.log: a sweep folder named café, under
    LC_ALL=C (PYTHONUTF8=0), was a UnicodeEncodeError starting the point."""
    code = ("import sys\n"
            "from lmscale.sweeps.grid import Point\n"
            "from lmscale.sweeps.runner import Runner, RunOptions\n"
            "runner = Runner(sys.argv[1], RunOptions(sys.argv[1] + '/c.py', [], log=print))\n"
            "job = runner._start(Point('pt', {'optim.lr': 1e-3}, {'optim.lr': 1e-3}), {})\n"
            "job.proc.kill()\n"
            "job.proc.wait()\n"
            "job.log_file.close()\n")
    workdir = tmp_path / "caf\u00e9"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_CTYPE", "PYTHONIOENCODING")}
    done = subprocess.run([sys.executable, "-c", code, str(workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**env, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    head = (workdir / "pt" / "train.log").read_text(encoding="utf-8").splitlines()[0]
    assert head.startswith("$ ") and f"{workdir}/pt" in head
