"""SIGTERM to the processes of a two-process run at different moments: they agree on one step,
both save it, both exit 0, and the resumed run equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from lmscale.training.metrics import read_metrics
from tests.conftest import REPO, catches, tiny_train_command, write_corpus
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


def _one_process(workdir, corpus, log, **overrides) -> subprocess.Popen:
    """One tiny training process, stderr into ``log``."""
    command = tiny_train_command(workdir, corpus, **{"train.log_every": 1, **overrides})
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), text=True)


def _wait_for(predicate, proc: subprocess.Popen, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_sigterm_during_start_up_ends_the_run_in_one_line_with_status_0(tmp_path):
    """Before the first step (data, restore, compile) SIGTERM killed the trainer silently
    (exit 143, empty log): a scheduler's stop then looked like a failure."""
    corpus = write_corpus(tmp_path / "corpus")
    run, log = tmp_path / "run", tmp_path / "log"
    proc = _one_process(run, corpus, log, **{"train.steps": 10_000})
    _wait_for(lambda: (run / ".lock").exists(), proc, "no lock: the run never started")
    proc.send_signal(signal.SIGTERM)  # the lock is taken before the data and the compile
    assert proc.wait(timeout=120) == 0
    text = log.read_text()
    assert "stopped by signal 15 outside the training steps: nothing to save (re-run to start " \
           "or resume)" in text, text
    assert "Traceback" not in text and "step 1/" not in text, text


def test_ctrl_c_twice_stops_at_once_in_one_line(tmp_path):
    """The second signal raised KeyboardInterrupt inside orbax's save: 140 lines of
    tracebacks. Now one line, exit 130; the next run resumes from the latest checkpoint."""
    corpus = write_corpus(tmp_path / "corpus")
    run, log = tmp_path / "run", tmp_path / "log"
    proc = _one_process(run, corpus, log, **{"train.steps": 100_000, "checkpoint.every": 5})
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and '"step": 12,' in metrics.read_text(), proc,
              "the run never logged step 12")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    text = log.read_text()
    assert "stopped at once by a second Ctrl-C: no checkpoint saved" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_a_sigterm_while_the_tool_imports_is_one_line_and_status_0(tmp_path):
    """Before main() (imports, flags: 0.3-0.8 s here) a SIGTERM killed it with 143, silently."""
    corpus = write_corpus(tmp_path / "corpus")
    run, log = tmp_path / "run", tmp_path / "log"
    proc = _one_process(run, corpus, log, **{"train.steps": 10_000})
    _wait_for(lambda: catches(proc.pid, signal.SIGTERM), proc, "no handler ever installed")
    proc.send_signal(signal.SIGTERM)  # as soon as the first handler is in: while it imports
    assert proc.wait(timeout=60) == 0
    assert log.read_text().strip() == ("stopped by signal 15 while starting: nothing to save "
                                       "(re-run to start or resume)")
