"""Sweeps that train: a diverging point is marked "div" and the sweep goes on; a finished
sweep re-runs without training; a killed sweep resumes its unfinished points only; a folder
holding another sweep is refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
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


def start_sweep(tiny, sweep_file, out, log=None) -> subprocess.Popen:
    """``python -m lmscale.sweep`` of the tiny config over ``sweep_file`` into ``out`` (its
    log lines into the file ``log``, if given)."""
    return subprocess.Popen([sys.executable, "-m", "lmscale.sweep", f"--config={tiny / 'tiny.py'}",
                             f"--sweep={sweep_file}", f"--workdir={out}"], cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            stderr=open(log, "w") if log else subprocess.DEVNULL)


def start_endless_point(tiny, name: str) -> tuple[Path, Path, subprocess.Popen]:
    """(out, log, process) of a sweep of one point that trains until stopped (hidden-16),
    its files named after ``name``."""
    sweep_file = write_sweep(tiny / f"{name}.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [16]},
                    "derived": lambda p: {"train.steps": 100000, "train.log_every": 500,
                                          "checkpoint.every": 100000}}
    """)
    out, log = tiny / f"{name}_sweep", tiny / f"{name}.log"
    return out, log, start_sweep(tiny, sweep_file, out, log)


def wait_until(ready, proc: subprocess.Popen, what: str) -> None:
    """Polls ``ready()`` until true; fails naming ``what`` if the sweep ends or 300 s pass."""
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None and time.time() < deadline, what
        time.sleep(0.05)


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line for line in f if line.startswith("State:")), "")
    except OSError:
        return "zombie"  # gone meanwhile


def test_killed_sweep_resumes_unfinished_points_only(tiny):
    sweep_file = write_sweep(tiny / "kill.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [8, 16]},
                    "derived": lambda p: {"train.steps": 20 if p["model.hidden"] == 8 else 1000}}
    """)
    out = tiny / "kill_sweep"
    proc = start_sweep(tiny, sweep_file, out)
    second = out / "hidden-16" / "metrics.jsonl"
    try:  # until the second point is training
        wait_until(lambda: second.exists() and second.read_text().strip(), proc,
                   "sweep ended before its second point trained")
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: its trainer gets SIGTERM from the kernel
        proc.wait()
    trainer = json.loads((out / "hidden-16" / "sweep_status.json").read_text())["pid"]
    deadline = time.time() + 120
    while os.path.exists(f"/proc/{trainer}") and "zombie" not in _proc_state(trainer):
        assert time.time() < deadline, "the trainer outlived its sweep"
        time.sleep(0.2)
    stopped_at = max(json.loads(line)["step"] for line in second.read_text().splitlines())
    assert stopped_at < 1000  # stopped by the SIGTERM, not an orphan that trained to its end
    first = (out / "hidden-8" / "metrics.jsonl").read_bytes()
    assert json.loads((out / "hidden-8" / "sweep_status.json").read_text())["status"] == "ok"

    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()  # JAX's threads running, as in a notebook's sweep
    with warnings.catch_warnings(record=True) as caught:  # the trainers ask for the SIGTERM
        warnings.simplefilter("always")  # themselves: no fork-with-threads warning per point
        result = run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), **QUIET)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]
    assert result["trained"] == ["hidden-16"]
    assert (out / "hidden-8" / "metrics.jsonl").read_bytes() == first
    records = [json.loads(line) for line in second.read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 1000  # continued, nothing repeated
    assert (out / "hidden-16" / "train.log").read_text().count("$ ") == 2  # two trainer runs
    assert records[-1] == {**records[-1], "split": "val", "step": 1000}


def test_a_stopped_point_reports_the_step_it_saved(tiny):
    """A stop request to the sweep: each running point saves where it stops, and its status
    names that step (it named the last logged step: 0 here, logging every 500 steps). SIGHUP
    (a closed terminal; SIGUSR1, Slurm's warning, alike) is a request as SIGTERM is (it ended
    the sweep by its default action; the points, left with the status "running", saved on the
    parent-death SIGTERM)."""
    sweep_file = write_sweep(tiny / "stop.py", """
        def get_sweep():
            return {"grid": {"model.hidden": [16]},
                    "derived": lambda p: {"train.steps": 100000, "train.log_every": 500}}
    """)
    out = tiny / "stop_sweep"
    proc = start_sweep(tiny, sweep_file, out)
    started = out / "hidden-16" / "tb"  # made as the trainer's loop starts
    try:
        wait_until(started.exists, proc, "the point never started")
        time.sleep(2.0)  # some steps
    finally:
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP  # 129, as a process SIGHUP ends
    status = json.loads((out / "hidden-16" / "sweep_status.json").read_text())
    saved = [int(n.name) for n in (out / "hidden-16" / "checkpoints").iterdir() if n.name.isdigit()]
    assert status["status"] == "interrupted" and saved and status["step"] == max(saved) > 0


def test_divergence_rule():
    rec = lambda step, loss: {"split": "train", "step": step, "loss": loss}
    assert find_divergence([rec(2, 5.0), rec(4, 3.0), {"split": "val", "step": 4, "loss": 9.0}, rec(6, 4.4)]) is None
    assert find_divergence([rec(2, 5.0), rec(4, 3.0), rec(6, 4.6)])["step"] == 6
    assert find_divergence([rec(2, 5.0), rec(4, float("nan"))])["reason"] == "non-finite loss at step 4"


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


def test_stop_message_is_true_of_points_stopped_before_their_first_step(tiny, tmp_path):
    """A point stopped before its first step saves nothing ("nothing to save" in its train.log):
    the sweep said "the running points saved a checkpoint" all the same."""
    from lmscale.sweeps import expand, load_sweep_spec
    from lmscale.sweeps.runner import Runner, RunOptions, SweepInterrupted
    sweep_file = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [3e-3]}}
    """)
    lines: list[str] = []
    runner = Runner(str(tmp_path / "out"), RunOptions(str(tiny / "tiny.py"), [], log=lines.append))
    runner._on_signal(signal.SIGTERM, None)  # before any point started
    assert lines == [f"sweep: signal {int(signal.SIGTERM)}; stopping the running points (those past "
                     f"their first step save a checkpoint; a second Ctrl-C stops them at once)"]
    with pytest.raises(SweepInterrupted) as stopped:
        runner.run(expand(load_sweep_spec(sweep_file), base_config(tiny)).points)
    assert str(stopped.value) == ("sweep stopped by a signal; the running points stopped (those past "
                                  "their first step saved a checkpoint); re-run the same command "
                                  "to resume")


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_ctrl_c_stops_the_points_at_once_and_a_second_sigterm_at_a_checkpoint(tiny, second):
    """The runner's second signal unwound it, and its points got the parent-death SIGTERM,
    which a trainer now takes as the first signal again: they ran on, orphaned, to a
    checkpoint. A second Ctrl-C kills them before the runner exits (none is left running,
    each marked interrupted: their status said "running"); a repeated SIGTERM (`timeout`
    signals the process, then its group) is the same request, as in the trainer: they were
    killed mid-save."""
    out, log, proc = start_endless_point(tiny, f"stop2{second.name}")
    try:
        wait_until((out / "hidden-16" / "tb").exists, proc, "the point never started")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping the running points" in log.read_text(), proc,
                   "the sweep never took the first signal")
        proc.send_signal(second)  # while its point saves
        proc.wait(timeout=120)
    trainers = subprocess.run(["pgrep", "-f", f"lmscale.train .*workdir={out}/"],
                              capture_output=True, text=True).stdout.split()
    assert not trainers, trainers  # none left running on, orphaned
    said = log.read_text()  # one line, not a KeyboardInterrupt traceback
    status = json.loads((out / "hidden-16" / "sweep_status.json").read_text())
    assert "Traceback" not in said and status["status"] == "interrupted", said[-2000:]
    assert proc.returncode == 128 + second, (proc.returncode, said[-2000:])  # stopped, not failed
    if second == signal.SIGINT:
        assert "sweep stopped at once by a second signal" in said, said[-2000:]
    else:
        assert "SIGTERM while stopping; the running points still stop at a checkpoint" in said
        assert "sweep stopped by a signal; the running points stopped" in said
        assert status["step"] > 0 and os.path.isdir(out / "hidden-16" / "checkpoints" / str(status["step"]))


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


def test_a_trainer_killed_by_a_signal_is_said_so(tiny):
    """A point's trainer killed (the out-of-memory killer's SIGKILL) was reported with its log's
    last line, a start-up hint."""
    out, log, proc = start_endless_point(tiny, "sigkill")
    pattern = f"lmscale.train .*workdir={out}/"
    wait_until(lambda: subprocess.run(["pgrep", "-f", pattern]).returncode == 0, proc,
               "the point's trainer never started")
    subprocess.run(["pkill", "-KILL", "-f", pattern], check=True)
    proc.wait(timeout=120)
    status = json.loads((out / "hidden-16" / "sweep_status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith(
        "killed by SIGKILL — often the out-of-memory killer"), status


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


def test_a_trainer_whose_sweep_is_gone_ends_at_once():
    """A sweep that died between starting a trainer and the trainer's asking for its
    parent-death signal: the trainer (reparented) ends at once instead of training alone."""
    env = dict(os.environ, LMSCALE_DIE_WITH_PARENT="1")  # not this child's parent
    proc = subprocess.run([sys.executable, "-c", "from lmscale.cli import die_with_parent\n"
                           "die_with_parent()\nprint('trained')"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "trained" not in proc.stdout
    assert proc.stderr.strip() == "error: the sweep that started this tool has ended"


def test_a_point_that_exited_unpolled_before_a_second_ctrl_c_gets_its_status(tmp_path):
    """A point that ended after the first signal, not yet polled, when the second Ctrl-C came:
    Popen.kill reaped it, wait4 found no child, and its status stayed "running" with its lock
    held."""
    from lmscale.sweeps.grid import Point
    from lmscale.sweeps.runner import Runner, RunOptions, SweepInterrupted, _Job
    from lmscale.sweeps.workdir import Lock, read_status
    point_dir = tmp_path / "pt"
    point_dir.mkdir()
    lock = Lock(str(point_dir / "lock"))
    assert lock.try_acquire()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while not os.path.exists(f"/proc/{proc.pid}") or "Z" not in _proc_state(proc.pid):
        time.sleep(0.02)  # exited, unreaped (a zombie) as the main loop has not polled it yet
    job = _Job(Point("pt", {"optim.lr": 1e-3}, {"optim.lr": 1e-3}), str(point_dir), proc, lock,
               open(point_dir / "train.log", "w"), time.perf_counter(), {})
    said = []
    runner = Runner(str(tmp_path), RunOptions(str(tmp_path / "c.py"), [], log=said.append))
    runner._running = {proc.pid: (job, 0)}
    runner._on_signal(signal.SIGINT, None)
    with pytest.raises(SweepInterrupted, match="stopped at once by a second signal"):
        runner._on_signal(signal.SIGINT, None)
    assert read_status(str(point_dir))["status"] == "interrupted" and lock.fd is None


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
