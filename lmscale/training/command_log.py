"""WORKDIR/commands.log: how each start of a run was invoked, to run it again.

config.json records what trains, not how the run was started: a flag that is no config field
(``--workdir``, a relative ``--config=`` path, ``XLA_FLAGS``' fake devices, ``LMSCALE_DATA``)
was lost, and a resume with other overrides left no trace of them. Each start appends two
lines, a comment and a command that can be pasted into a shell::

    # 2026-12-06 07:30:00 UTC: start at step 0, 1 process x 8 devices, host node17
    cd /home/me/lmscale && XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        /usr/bin/python3 -m lmscale.train --config=configs/quickstart.py --workdir=runs/q

(on one line). A start from Python (a notebook's ``lmscale.api``) writes its argv as a comment.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from typing import Sequence

COMMANDS_LOG = "commands.log"
# Environment variables that change what a run does or where it reads, recorded with it.
RECORDED_ENV = ("XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "TFDS_DATA_DIR",
                "LMSCALE_DATA", "LMSCALE_DATA_MIRROR", "LMSCALE_MODEL_MODULES",
                "LMSCALE_COMPILE_CACHE", "PYTHONPATH")
LAUNCH_ENV = "LMSCALE_LAUNCH_COMMAND"  # set by launch/local.py: the launch as typed
# How the processes of a run of several found each other, named where no launch is known.
JOIN_ENV = ("LMSCALE_NUM_PROCESSES", "LMSCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
            "OMPI_COMM_WORLD_SIZE")


def invocation(argv: Sequence[str] | None = None, module: str | None = None) -> str:
    """The shell command that started this process: ``cd CWD && [ENV=...] PYTHON -m MODULE
    ARGS``; where it was not ``python -m lmscale.<tool>``, a comment with its argv."""
    argv = list(sys.argv if argv is None else argv)
    if module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = getattr(spec, "name", None)
    if not module or not module.startswith("lmscale."):
        return "# started from Python: " + " ".join(shlex.quote(a) for a in argv)
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in RECORDED_ENV if os.environ.get(k)]
    words = [*env, shlex.quote(sys.executable), "-m", module.removesuffix(".__main__"),
             *(shlex.quote(a) for a in argv[1:])]
    return f"cd {shlex.quote(os.getcwd())} && " + " ".join(words)


def record_command(workdir: str, start: int, processes: int, devices: int) -> None:
    """Appends this start's comment and command to WORKDIR/commands.log (process 0 only;
    an unwritable log is a note: it is no reason to stop a run). ``devices``: of all
    processes. A run of several processes records its launch (launch/local.py's, which
    starts them all), process 0's own command as a comment: pasted, it would start one
    process with this one's devices; under another launcher, how they joined."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    each = devices // processes
    where = (f"{processes} processes x {each} device{'s' if each > 1 else ''} ({devices} in all)"
             if processes > 1 else f"1 process x {devices} device{'s' if devices > 1 else ''}")
    lines = f"# {stamp}: start at step {start}, {where}, host {socket.gethostname()}\n"
    if processes == 1:
        lines += f"{invocation()}\n"
    elif os.environ.get(LAUNCH_ENV):
        lines += (f"{os.environ[LAUNCH_ENV]}\n# (launch/local.py; process 0 ran: "
                  f"{invocation()})\n")
    else:
        joined = ", ".join(f"{k}={os.environ[k]}" for k in JOIN_ENV if os.environ.get(k))
        lines += (f"# process 0 of {processes} ran the command below "
                  f"({joined or 'joined by flags'}); start every process as this run's were\n"
                  f"# {invocation()}\n")
    path = os.path.join(workdir, COMMANDS_LOG)
    try:
        with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write(lines)
    except OSError as e:
        print(f"note: {path} not written ({e.strerror}); the run goes on", file=sys.stderr,
              flush=True)
