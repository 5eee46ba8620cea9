"""SIGTERM to the processes of a two-process run at different moments: they agree on one step,
both save it, both exit 0, and the resumed run equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from lmscale.training.metrics import read_metrics
from tests.conftest import REPO, tiny_train_command, write_corpus
from tests.launch.test_local import _launcher_module, checkpoint_steps

COMPARED = ("step", "split", "loss", "bpc", "lr", "grad_norm")


def train_command(workdir, data, steps: int) -> list[str]:
    """No validation split (8,0,0): nothing to evaluate, so nothing more to compile."""
    return tiny_train_command(workdir, data, "--initialization_timeout=60", **{
        "data.split": "8,0,0", "train.steps": steps, "optim.decay_steps": 200,
        "train.log_every": 1, "train.stop_sync_every": 3, "checkpoint.every": 100000})


def start(workdir, data, steps: int) -> list[subprocess.Popen]:
    """Two processes of one run (1 CPU device each), as launch/local.py starts them. Later
    launches read their programs from the session's compilation cache (tests/conftest.py)."""
    local = _launcher_module()
    env = dict(os.environ)
    address = f"127.0.0.1:{local.free_port()}"
    return [subprocess.Popen(train_command(workdir, data, steps), cwd=REPO,
                             env=local.process_env(env, pid, 2, address, 1, None),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for pid in range(2)]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit status, stderr) of each; a process still running after ``timeout`` is killed (-9)."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            _, err = proc.communicate()
        results.append((proc.returncode, err))
    return results


def records(workdir) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in read_metrics(str(workdir))
            if r["split"] == "train"]


def test_sigterm_at_different_moments_stops_both_at_one_step(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    procs = start(run, corpus, 10_000)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not metrics.exists() or
                                           len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # one process first; the other a moment later
    time.sleep(0.7)
    if procs[0].poll() is None:
        procs[0].send_signal(signal.SIGTERM)
    results = finish(procs, timeout=120)
    assert [status for status, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    stopped = checkpoint_steps(run)[-1]
    assert stopped % 3 == 0  # an agreed step
    assert records(run)[-1]["step"] == stopped

    # The same command (with a reachable end) resumes; the result equals an uninterrupted run.
    end = stopped + 2
    assert [s for s, _ in finish(start(run, corpus, end), timeout=180)] == [0, 0]
    full = tmp_path / "full"
    assert [s for s, _ in finish(start(full, run / "data", end), timeout=180)] == [0, 0]
    assert records(run) == records(full)  # bitwise
    assert [r["step"] for r in records(full)] == list(range(1, end + 1))
