"""Start K processes of one multi-process run on this machine, as a cluster would.

    python launch/local.py --num_processes=2 --devices_per_process=2 -- \\
        python -m lmscale.train --config=configs/quickstart.py --workdir=runs/two

Every process gets the same command and, in its environment, what a cluster run gives it:
``LMSCALE_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port, or ``--port``),
``LMSCALE_NUM_PROCESSES`` and ``LMSCALE_PROCESS_ID``, which lmscale.train reads (see
lmscale/distributed.py). Devices: on a machine whose ``nvidia-smi`` lists GPUs, process k
gets GPUs k*D .. k*D+D-1 through ``CUDA_VISIBLE_DEVICES``; otherwise D virtual CPU devices
(``--xla_force_host_platform_device_count=D`` appended to ``XLA_FLAGS``, ``JAX_PLATFORMS=cpu``).

Process 0's output passes through unchanged (progress bar included); the others' lines are
prefixed with ``[process k]``. When one process fails the others are stopped (SIGTERM,
then SIGKILL after ``--grace_s``) and the launcher says in words what happened and exits
non-zero. SIGTERM or Ctrl-C to the launcher is passed on to every process as SIGTERM, on
which lmscale.train checkpoints and exits; a second one kills them (SIGKILL), as does the
launcher's own death. Ctrl-Z (SIGTSTP) stops every process with the launcher, and ``fg``
continues them (within jax's 100-s heartbeat: a longer stop ends the run as it continues, said
so; a re-run resumes it). ``--process_ids=1`` starts only some of the processes (to debug, or
to see what a process does when the coordinator never comes up).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

# The same names as lmscale.distributed; repeated so that the launcher imports nothing heavy.
ENV_COORDINATOR = "LMSCALE_COORDINATOR_ADDRESS"
ENV_LAUNCH = "LMSCALE_LAUNCH_COMMAND"  # this launch as typed, for WORKDIR/commands.log
# The environment variables recorded with it: lmscale/training/command_log.py's RECORDED_ENV
# (this script imports no lmscale; a test keeps the two equal).
RECORDED_ENV = ("XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "TFDS_DATA_DIR",
                "LMSCALE_DATA", "LMSCALE_DATA_MIRROR", "LMSCALE_MODEL_MODULES",
                "LMSCALE_COMPILE_CACHE", "PYTHONPATH")
ENV_NUM_PROCESSES = "LMSCALE_NUM_PROCESSES"
ENV_PROCESS_ID = "LMSCALE_PROCESS_ID"
HEARTBEAT_S = 100  # jax.distributed.initialize's heartbeat_timeout_seconds (lmscale keeps it)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags before ``--``, the command to run after it."""
    parser = argparse.ArgumentParser(
        prog="launch/local.py", description="Run K processes of one multi-process run on this machine.",
        usage="%(prog)s --num_processes=K [--devices_per_process=D] [...] -- COMMAND [ARGS...]")
    parser.add_argument("--num_processes", type=int, required=True, help="processes in the run (K)")
    parser.add_argument("--devices_per_process", type=int, default=None,
                        help="devices of each process (D); default: GPUs / K, or 1 CPU device")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--process_ids", default="",
                        help="comma-separated ids to start (default: all); for debugging")
    parser.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto",
                        help="devices to hand out; auto: GPUs if nvidia-smi lists any")
    parser.add_argument("--grace_s", type=float, default=30.0,
                        help="after a failure, seconds the others get to stop before SIGKILL")
    if "--" not in argv:
        parser.error("give the command after '--', e.g. -- python -m lmscale.train ...")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command after '--'")
    if args.num_processes < 1:
        parser.error(f"--num_processes must be at least 1, got {args.num_processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        parser.error(f"--devices_per_process must be at least 1, got {args.devices_per_process}")
    try:
        args.process_ids = ([int(p) for p in args.process_ids.split(",") if p.strip()]
                            or list(range(args.num_processes)))
    except ValueError:
        parser.error(f"--process_ids must be comma-separated integers, got {args.process_ids!r}")
    bad = [p for p in args.process_ids if not 0 <= p < args.num_processes]
    if bad:
        parser.error(f"--process_ids {bad} outside 0..{args.num_processes - 1}")
    return args, command


def visible_gpus(environ: dict[str, str]) -> list[str]:
    """GPU ids this machine offers: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], process_id: int, num_processes: int, address: str,
                devices: int, gpus: list[str] | None) -> dict[str, str]:
    """The environment of process ``process_id``: the run's coordinates and its devices."""
    env = dict(base, **{ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(num_processes),
                        ENV_PROCESS_ID: str(process_id)})
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are written, also before an abort
    env[ENV_LAUNCH] = launch_command(base)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[process_id * devices:(process_id + 1) * devices])
    else:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{base['XLA_FLAGS']} {flag}" if base.get("XLA_FLAGS") else flag
        env["JAX_PLATFORMS"] = "cpu"
    return env


def launch_command(environ: dict[str, str]) -> str:
    """``cd CWD && [ENV=...] PYTHON launch/local.py ARGS``: this launch as typed, which the
    run's commands.log records (process 0's own command would start one process, with the
    XLA_FLAGS or CUDA_VISIBLE_DEVICES this launcher gave it)."""
    import shlex
    env = [f"{k}={shlex.quote(environ[k])}" for k in RECORDED_ENV if environ.get(k)]
    words = [*env, shlex.quote(sys.executable), *(shlex.quote(a) for a in sys.argv)]
    return f"cd {shlex.quote(os.getcwd())} && " + " ".join(words)


def describe_exit(process_id: int, returncode: int, address: str, sent: int | None = None) -> str:
    """What a process's exit status means, in words (``sent``: a signal the launcher sent it)."""
    if returncode >= 0:
        return f"process {process_id} exited with status {returncode} (its error is above)"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if sent == -returncode:
        return f"process {process_id} was stopped by the launcher ({name})"
    if name == "SIGABRT":
        return (f"process {process_id} was aborted (SIGABRT) — most often it could not reach the "
                f"coordinator at {address} within --initialization_timeout, or another process died "
                f"or stopped answering (its heartbeat timed out)")
    why = {"SIGKILL": " — often the out-of-memory killer", "SIGSEGV": " — a crash (segmentation fault)",
           "SIGTERM": " — terminated from outside", "SIGINT": " — interrupted"}.get(name, "")
    return f"process {process_id} was killed by {name}{why}"


def _parent_death_signal() -> object:
    """A function for the child to call (Linux): SIGKILL when the launcher dies, no orphans.

    (Not SIGTERM: jax's distributed runtime catches that, and a process stuck in a collective
    would live on.) Looked up here, in the parent, so the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


def _copy_lines(stream: IO[bytes], out: IO[bytes], prefix: bytes) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line)
        out.flush()
    stream.close()


class Launch:
    """The running processes: start, forward signals, stop, wait."""

    def __init__(self, command: list[str], envs: dict[int, dict[str, str]]) -> None:
        self.procs: dict[int, subprocess.Popen] = {}
        self.stopped: list[int] = []  # ids stopped by the launcher after another failed
        self.sent: dict[int, int] = {}  # id -> the last signal the launcher sent it
        self.interrupts = 0  # SIGTERM/SIGINT received by the launcher
        self.paused_s = 0.0  # the longest stop (Ctrl-Z) of the processes with the launcher
        # jax's heartbeat: a run of several processes (one alone joins no coordinator)
        self.heartbeat = any(int(env[ENV_NUM_PROCESSES]) > 1 for env in envs.values())
        self.threads: list[threading.Thread] = []  # copying the piped processes' output
        on_fork = _parent_death_signal()
        try:
            self._start(command, envs, on_fork)
        except OSError:
            self.signal_all(signal.SIGKILL)  # those started before the one that failed
            raise

    def _start(self, command: list[str], envs: dict[int, dict[str, str]], on_fork: object) -> None:
        for pid, env in envs.items():
            piped = pid != 0
            # Own session: a Ctrl-C on the terminal reaches the launcher only, which passes
            # on one SIGTERM (a second one to the launcher: SIGKILL).
            self.procs[pid] = subprocess.Popen(
                command, env=env, start_new_session=True, preexec_fn=on_fork,
                stdout=subprocess.PIPE if piped else None, stderr=subprocess.PIPE if piped else None)
        for pid, proc in self.procs.items():
            if proc.stdout is None:
                continue
            prefix = f"[process {pid}] ".encode()
            for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=_copy_lines, args=(stream, out, prefix), daemon=True)
                t.start()
                self.threads.append(t)

    def signal_all(self, sig: int) -> None:
        """Sends ``sig`` to every process still running."""
        for pid, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                    self.sent[pid] = sig
                except ProcessLookupError:
                    pass

    def interrupt(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT to the launcher: SIGTERM to all (they checkpoint); a second: SIGKILL."""
        self.interrupts += 1
        self.signal_all(signal.SIGTERM if self.interrupts == 1 else signal.SIGKILL)

    def suspend(self, signum: int, frame: object) -> None:
        """Ctrl-Z (SIGTSTP) to the launcher: the processes, in sessions of their own, went on
        training (process 0 printing over the shell's prompt); now they stop with it, all
        together (one stopped alone past jax's 100-s heartbeat aborted the run), and go on
        with it (``fg``, ``bg``, SIGCONT). Stopped longer than the heartbeat, all together
        too, the run ends as they go on (jax's coordinator finds every heartbeat stale): said
        as the processes stop, and in the launch's error line."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGSTOP)
        if self.heartbeat:
            print(f"launch: {len(running)} process{'es' if len(running) != 1 else ''} stopped "
                  f"with the launcher; continue them within {HEARTBEAT_S} s (fg, bg): a longer "
                  f"stop ends the run as it continues (jax's heartbeat; a re-run resumes it)",
                  file=sys.stderr, flush=True)
        began = time.monotonic()
        # Stops here until continued. SIGSTOP, not SIGTSTP's default action: the kernel
        # discards that in an orphaned process group (a launcher started from a script that
        # has exited), and the processes were continued at once.
        os.kill(os.getpid(), signal.SIGSTOP)
        self.paused_s = max(self.paused_s, time.monotonic() - began)
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def wait(self, grace_s: float) -> tuple[int, int] | None:
        """Waits for all; returns (id, status) of the first that failed, after stopping the rest."""
        failed: tuple[int, int] | None = None
        deadline: float | None = None
        # Every process is polled each time (a generator under any() stopped at the first
        # running one, so a later process's death went unseen until process 0 timed out).
        while [p.poll() for p in self.procs.values()].count(None):
            if failed is None:
                failed = next(((pid, p.returncode) for pid, p in self.procs.items()
                               if p.returncode not in (None, 0)), None)
                if failed is not None:
                    self.stopped = [pid for pid, p in self.procs.items() if p.poll() is None]
                    self.signal_all(signal.SIGTERM)
                    deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                self.signal_all(signal.SIGKILL)  # e.g. stuck in a collective with a dead peer
                deadline = None
            time.sleep(0.05)
        for t in self.threads:
            t.join(timeout=5)
        if failed is None:
            failed = next(((pid, p.returncode) for pid, p in self.procs.items() if p.returncode != 0), None)
        return failed


def failure_summary(pid: int, status: int, returncodes: dict[int, int], stopped_by_us: list[int],
                    sent: dict[int, int], address: str) -> str:
    """The launch's error line: the first process that failed (``pid``, ``status``), those the
    launcher's signal then ended, and those that failed on their own."""
    message = describe_exit(pid, status, address, sent.get(pid))
    # Those the launcher's signal ended; the others were ending on their own (the same error).
    stopped = [p for p in stopped_by_us if returncodes[p] in (-signal.SIGTERM, -signal.SIGKILL)
               or (returncodes[p] == 0 and p in sent)]  # a trainer's clean stop
    if stopped:
        message += f"; stopped process{'es' if len(stopped) > 1 else ''} " \
                   f"{', '.join(map(str, stopped))}"
    # Those that failed on their own: while being stopped, or at the same time as the first
    # (gone before the launcher stopped anyone: "failed too" used to leave them out).
    also = [p for p, code in returncodes.items() if p != pid and p not in stopped and code]
    if also:
        message += f"; process{'es' if len(also) > 1 else ''} {', '.join(map(str, also))} " \
                   f"failed too"
    return message


def main(argv: list[str]) -> int:
    """Runs the launch; returns the exit status: 0 when every process exited 0, else the first
    failed process's own (1 where a signal ended it; 2: the launch could not start)."""
    args, command = parse_args(argv)
    environ = dict(os.environ)
    gpus = visible_gpus(environ) if args.platform != "cpu" else []
    if args.platform == "gpu" and not gpus:
        print("error: --platform=gpu but nvidia-smi lists no GPUs", file=sys.stderr)
        return 2
    use_gpus = bool(gpus)
    k = args.num_processes
    devices = args.devices_per_process or (max(len(gpus) // k, 1) if use_gpus else 1)
    if use_gpus and devices * k > len(gpus):
        print(f"error: {k} processes x {devices} GPUs need {devices * k} GPUs; this machine offers "
              f"{len(gpus)} ({','.join(gpus)})", file=sys.stderr)
        return 2
    address = f"127.0.0.1:{args.port or free_port()}"
    envs = {pid: process_env(environ, pid, k, address, devices, gpus if use_gpus else None)
            for pid in args.process_ids}
    kind = "GPU" if use_gpus else "CPU device"
    print(f"launch: {len(envs)} of {k} processes x {devices} {kind}{'s' if devices > 1 else ''}, "
          f"coordinator {address}", file=sys.stderr, flush=True)

    try:
        launch = Launch(command, envs)
    except OSError as e:  # e.g. a mistyped program: nothing started (or the rest stopped)
        print(f"error: cannot start {command[0]!r} (the command after '--'): "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, launch.interrupt)
    signal.signal(signal.SIGTSTP, launch.suspend)
    failed = launch.wait(args.grace_s)
    if failed is None:
        return 0
    pid, status = failed
    returncodes = {p: proc.returncode for p, proc in launch.procs.items()}
    message = failure_summary(pid, status, returncodes, launch.stopped, launch.sent, address)
    if status == -signal.SIGABRT and launch.paused_s:
        message += (f"; the processes had been stopped with the launcher (Ctrl-Z) for "
                    f"{launch.paused_s:.0f} s: past jax's {HEARTBEAT_S}-s heartbeat, the run "
                    f"ends as it continues (re-run to resume from its last checkpoint)")
    print(f"error: {message}", file=sys.stderr, flush=True)
    # the first failed process's own status (the trainer's 3: diverged), as srun passes it on;
    # 1 for a process ended by a signal
    return status if 0 < status < 256 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
