"""Sweeps stopped: a killed sweep resumes its unfinished points only; a stop request has each
running point save where it stops and say that step; a second Ctrl-C stops the points at
once, a second SIGTERM at a checkpoint; a trainer killed, or whose sweep is gone, is said so."""

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

from lmscale.sweeps import run_sweep
from tests.conftest import REPO
from tests.sweeps.conftest import base_config, write_sweep

QUIET = dict(poll_seconds=0.1, log=lambda line: None)


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
