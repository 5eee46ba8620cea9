"""A sweep is one process: refused as one of several, and its points' trainers are single
processes whatever the sweep's environment says (a SLURM batch script of several tasks)."""

import os
import subprocess
import sys

from lmscale.distributed import resolve
from lmscale.sweeps.runner import single_process_env
from tests.conftest import REPO


def test_a_point_trains_as_one_process_in_a_batch_script_of_several_tasks():
    batch = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "99", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:1234",
             "LMSCALE_PROCESS_ID": "1", "PATH": "/bin"}
    env = single_process_env(batch)
    assert resolve(None, None, None, env) is None
    assert env["PATH"] == "/bin" and "LMSCALE_COORDINATOR_ADDRESS" not in env


def test_a_sweep_started_as_one_of_several_processes_is_refused(tmp_path):
    env = {**os.environ, "LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:1234",
           "LMSCALE_NUM_PROCESSES": "2", "LMSCALE_PROCESS_ID": "1"}
    out = subprocess.run([sys.executable, "-m", "lmscale.sweep", "--config=configs/quickstart.py",
                          "--sweep=configs/sweeps/lr_rules.py", f"--workdir={tmp_path / 's'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "lmscale.sweep runs as one process" in out.stderr and "process 1 of 2" in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_sweep_point_is_started_as_one_process_in_a_batch_script_of_several_tasks(
        tmp_path, monkeypatch):
    """The point's trainer gets single_process_env's environment (not the sweep's own: a
    SLURM batch script of several tasks failed every point asking for --num_processes=1)."""
    import pytest

    from lmscale.sweeps import runner
    from lmscale.sweeps.grid import Point
    for k, v in {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "99", "SLURM_PROCID": "0",
                 "LMSCALE_COORDINATOR_ADDRESS": "127.0.0.1:1234",
                 "LMSCALE_PROCESS_ID": "1", "LMSCALE_NUM_PROCESSES": "2"}.items():
        monkeypatch.setenv(k, v)
    seen = {}

    class Started(Exception):
        pass

    def popen(command, env, **kwargs):  # the environment the trainer would start with
        seen.update(env)
        raise Started

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    r = runner.Runner(str(tmp_path), runner.RunOptions("configs/quickstart.py", []))
    with pytest.raises(Started):
        r._start(Point("a", {}, {}), {})
    assert seen["LMSCALE_NUM_PROCESSES"] == "1"
    assert "LMSCALE_COORDINATOR_ADDRESS" not in seen and "LMSCALE_PROCESS_ID" not in seen
