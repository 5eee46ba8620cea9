"""launch/single_host.sh under a scheduler's time limit: SIGTERM to the script's whole process
group reaches the trainer once; it saves where it stops and the script exits 0 after it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, TINY_TRAIN_FLAGS, catches, write_corpus


def start_script(tmp_path, env=None, **settings) -> subprocess.Popen:
    """launch/single_host.sh training the tiny model on a small corpus in tmp_path/run, in a
    process group of its own (as a job's), logging every 5 steps; ``env`` added to its
    environment."""
    flags = {**TINY_TRAIN_FLAGS, "data.train": write_corpus(tmp_path / "corpus"),
             "train.steps": 100000, "train.log_every": 5, "train.progress_bar": True,
             "checkpoint.every": 100000, **settings}
    return subprocess.Popen(
        [shutil.which("bash"), "launch/single_host.sh", "configs/quickstart.py",
         str(tmp_path / "run"), *(f"--config.{k}={v}" for k, v in flags.items())],
        cwd=REPO, env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_step_10(script: subprocess.Popen, log) -> None:
    deadline = time.time() + 240
    while not (log.exists() and "step 10/" in log.read_text()):
        assert script.poll() is None and time.time() < deadline, "the trainer never logged"
        time.sleep(0.1)


def saved_where_it_stopped(workdir) -> None:
    text = (workdir / "train.log").read_text()
    assert "stopped by signal 15 at step" in text and "Traceback" not in text, text[-2000:]
    step = int(text.split("stopped by signal 15 at step ")[1].split(";")[0])
    assert step >= 10 and (workdir / "checkpoints" / str(step)).is_dir()


def test_sigterm_to_the_process_group_saves_and_waits(tmp_path):
    script = start_script(tmp_path)
    try:
        wait_for_step_10(script, tmp_path / "run" / "train.log")
    finally:
        os.killpg(script.pid, signal.SIGTERM)  # the whole group: the script and, before, the trainer
    assert script.wait(timeout=120) == 0  # it waited for the trainer (it exited 143 at once)
    # Once: it got two before, and died.
    assert (tmp_path / "run" / "train.log").read_text().count("stopped by signal 15") == 1
    saved_where_it_stopped(tmp_path / "run")


def test_without_setsid_the_trainer_still_runs_in_a_session_of_its_own(tmp_path):
    """setsid(1) is util-linux's: on macOS the script ended at once, "setsid: command not
    found" (exit 127). Without it the trainer still gets a session of its own, and a SIGTERM
    to the job's process group saves and exits 0."""
    shims = tmp_path / "bin"  # the commands the script runs, setsid not among them
    shims.mkdir()
    for name in ("mkdir", "tee", "sleep"):
        (shims / name).symlink_to(shutil.which(name))
    workdir = tmp_path / "run"
    script = start_script(tmp_path, env={"PATH": str(shims)})
    try:
        wait_for_step_10(script, workdir / "train.log")
        trainer = int(subprocess.run(["pgrep", "-f", f"lmscale.train .*workdir={workdir}( |$)"],
                                     capture_output=True, text=True).stdout.split()[-1])
        assert os.getsid(trainer) == trainer
    finally:
        os.killpg(script.pid, signal.SIGTERM)
    assert script.wait(timeout=120) == 0
    saved_where_it_stopped(workdir)


def test_sigterm_to_the_trainer_and_the_script_is_one_stop(tmp_path):
    """A scheduler that signals every process of the job (systemd, a cgroup kill) reaches the
    trainer directly and through the script: two SIGTERMs, which stopped the trainer at once
    without a checkpoint (exit 130). Now the second is the same request: saved, exit 0."""
    workdir = tmp_path / "run"
    script = start_script(tmp_path)
    try:
        wait_for_step_10(script, workdir / "train.log")
        trainer = int(subprocess.run(["pgrep", "-f", f"lmscale.train .*workdir={workdir}( |$)"],
                                     capture_output=True, text=True).stdout.split()[-1])
        os.kill(trainer, signal.SIGTERM)
        time.sleep(0.05)
    finally:
        os.kill(script.pid, signal.SIGTERM)  # forwarded: the trainer's second SIGTERM
    assert script.wait(timeout=120) == 0
    saved_where_it_stopped(workdir)


def test_an_early_ctrl_c_through_the_script_stops_the_trainer(tmp_path):
    """The script forwarded Ctrl-C as SIGINT, which a trainer started in the background by
    bash ignores until its handlers are in: the run trained on to its end. The first signal
    goes on as SIGTERM."""
    script = start_script(tmp_path)
    trainer = []
    deadline = time.time() + 60
    while not (trainer and catches(trainer[0], signal.SIGTERM)):  # its first handler is in
        assert script.poll() is None and time.time() < deadline, "no trainer started"
        trainer = [int(p) for p in subprocess.run(
            ["pgrep", "-f", f"lmscale.train .*workdir={tmp_path / 'run'}( |$)"],
            capture_output=True, text=True).stdout.split()]
        time.sleep(0.01)
    script.send_signal(signal.SIGINT)
    assert script.wait(timeout=120) == 0
    assert "stopped by signal 15" in (tmp_path / "run" / "train.log").read_text()


def test_the_script_ends_after_tee_has_written_the_last_lines(tmp_path):
    """tee was started in the trainer's redirection, the trainer's child: the script waited for
    the trainer alone and could end before tee wrote the last lines, which a scheduler then
    kills with the job. A slow tee (it writes all 1 s after its input ends) shows it."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "tee").write_text(f'#!/bin/sh\nout=$(cat; echo .)\nsleep 1\n'
                               f'printf %s "${{out%.}}" | {shutil.which("tee")} "$@"\n')
    (shims / "tee").chmod(0o755)
    flags = {**TINY_TRAIN_FLAGS, "data.train": write_corpus(tmp_path / "corpus"),
             "train.steps": 3}
    script = subprocess.run(  # its output to /dev/null: not waiting for tee to close a pipe
        ["bash", "launch/single_host.sh", "configs/quickstart.py", str(tmp_path / "run"),
         *(f"--config.{k}={v}" for k, v in flags.items())],
        cwd=REPO, env={**os.environ, "PYTHON": sys.executable,
                       "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=240)
    assert script.returncode == 0
    log_file = tmp_path / "run" / "train.log"  # as the script ends
    log = log_file.read_text() if log_file.exists() else ""
    assert "step 3: final val bpc " in log, log[-2000:]
