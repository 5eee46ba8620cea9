"""launch/slurm_mlstm.sbatch run as SLURM would (its job variables set, an ``srun`` on PATH
that records what it was asked to start), without a cluster."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "launch", "slurm_mlstm.sbatch")


def _submit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text('#!/usr/bin/env bash\n'
                    'echo "cpus=${SRUN_CPUS_PER_TASK:-unset}" > "$SRUN_LOG"\n'
                    'printf "%s\\n" "$@" >> "$SRUN_LOG"\n')
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "12", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SRUN_LOG": str(tmp_path / "srun.log")}
    return subprocess.run(["bash", SCRIPT, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_job_starts_one_trainer_per_task_with_the_cores_asked_for(tmp_path):
    """srun (Slurm 22.05+) no longer reads --cpus-per-task from the job: SRUN_CPUS_PER_TASK."""
    proc = _submit(tmp_path, "configs/mlstm4096_8gpu.py", "runs/x", "--config.train.steps=10")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "srun.log").read_text().splitlines()
    assert lines[0] == "cpus=12"
    assert "lmscale.train" in lines and "--config=configs/mlstm4096_8gpu.py" in lines
    assert "--workdir=runs/x" in lines and lines[-1] == "--config.train.steps=10"
    assert (tmp_path / "runs" / "x").is_dir()


def test_a_flag_where_config_and_workdir_go_is_refused_before_anything_starts(tmp_path):
    """`sbatch slurm_mlstm.sbatch CONFIG --config.x=1` took the flag as WORKDIR and failed in
    the queued job with "mkdir: unrecognized option"."""
    proc = _submit(tmp_path, "configs/mlstm4096_8gpu.py", "--config.train.steps=10")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --config.train.steps=10 where CONFIG and WORKDIR go")
    assert not (tmp_path / "srun.log").exists()
    assert not (tmp_path / "--config.train.steps=10").exists()
