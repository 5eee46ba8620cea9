"""Runs a sweep's points as ``lmscale.train`` subprocesses, one after another or K at a time.

Each point is an ordinary run in DIR/NAME (so it resumes) started with the sweep's config
file, the sweep command's ``--config.*`` overrides and the point's fields. While it trains
the runner reads its metrics.jsonl: a diverged loss (divergence.py) stops it with SIGTERM
(the trainer saves and exits) and marks it ``div``. Finished points (``ok``/``div``) are
never retrained. A SIGTERM/SIGINT (SIGHUP, SIGUSR1: as SIGTERM) to the sweep is passed to
the points, which save; if the sweep process dies outright, its points get SIGTERM from the
kernel (PR_SET_PDEATHSIG, which each trainer asks for itself: ``cli.die_with_parent``).
A point's lock is held by its trainer too, so a re-run waits for a previous one to exit.

With several GPUs, ``parallel`` processes get disjoint CUDA_VISIBLE_DEVICES groups; on CPU
each of them runs as one device (``JAX_NUM_CPU_DEVICES=1``), as the K processes share the cores.
"""

from __future__ import annotations

import dataclasses
import json
import re
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

from lmscale.cli import EXIT_DIVERGED, PARENT_ENV
from lmscale.early_signals import REQUEST_SIGNALS, taken_signals
from lmscale.sweeps.divergence import DEFAULT_FACTOR, find_divergence, read_records
from lmscale.sweeps.grid import Point, SweepError, override_flags
from lmscale.sweeps.report import planned
from lmscale.sweeps.workdir import LOCK_FILE, Lock, is_finished, read_status, write_status


@dataclasses.dataclass
class RunOptions:
    config_file: str
    config_flags: list[str]  # the sweep command's --config.* overrides, passed to every point
    parallel: int = 1
    divergence_factor: float = DEFAULT_FACTOR
    poll_seconds: float = 1.0
    python: str = sys.executable
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


class SweepInterrupted(Exception):
    """The sweep was stopped by a signal (``signum``: the one that ended it; the command exits
    128 + it, as a process a signal ends); its running points stopped (those past their first
    step saved a checkpoint) and re-running resumes them."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass
class _Job:
    point: Point
    dir: str
    proc: subprocess.Popen
    lock: Lock
    log_file: Any
    started: float
    prior: dict[str, Any]
    divergence: dict[str, Any] | None = None


def single_process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a point's trainer, one process whatever the sweep's environment says:
    a sweep in a SLURM batch script of several tasks (SLURM_NTASKS without a step's
    variables) had every point fail with "start one task per process with srun (or pass
    --num_processes=1)", a flag the sweep gives no way to pass."""
    from lmscale.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
    env = {k: v for k, v in environ.items() if k not in (ENV_COORDINATOR, ENV_PROCESS_ID)}
    env[ENV_NUM_PROCESSES] = "1"
    return env


def device_groups(parallel: int) -> list[dict[str, str]]:
    """Per-slot environment: disjoint CUDA_VISIBLE_DEVICES groups where GPUs are visible."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
            gpus = [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            gpus = []
    if parallel == 1:
        return [{}]
    if not gpus:  # CPU: K processes share the cores, so none splits the host (host_devices)
        return [{"JAX_NUM_CPU_DEVICES": "1"} for _ in range(parallel)]
    if len(gpus) < parallel:
        raise SweepError(f"--parallel={parallel} needs at least {parallel} GPUs; {len(gpus)} are visible")
    per, extra = divmod(len(gpus), parallel)
    groups, start = [], 0
    for k in range(parallel):
        n = per + (k < extra)
        groups.append({"CUDA_VISIBLE_DEVICES": ",".join(gpus[start:start + n])})
        start += n
    return groups


def per_device_batch_note(points: list[Point], parallel: int,
                          cpu_devices: str | None = None) -> str | None:
    """A note when points set ``train.per_device_batch_size``: their global batch (and rate)
    follows the devices of their slot, which ``--parallel`` sets (a re-run with another one
    trained the points left at other batches, unsaid); ``cpu_devices``: the command's own
    ``parallel.cpu_devices``, each CPU slot's count then."""
    if not any(p.overrides.get("train.per_device_batch_size") for p in points):
        return None
    cpu = f"{cpu_devices} devices each (the command's parallel.cpu_devices)" if cpu_devices \
        else "one device each"
    where = (f"on a CPU host {cpu}, on GPUs its group" if parallel > 1 else "all the host's")
    return (f"note: the points set train.per_device_batch_size: each trains a global batch of "
            f"it times its devices ({where} with --parallel={parallel}), the learning rate "
            f"scaled for that batch; another --parallel gives the points left other batches, "
            f"and a point stopped under one does not resume under another")


def idle_groups_note(parallel: int, to_run: int, envs: list[dict[str, str]]) -> str | None:
    """A note when fewer points are left than GPU groups: the groups (and so each point's
    device count and global batch) follow --parallel, and the extra groups stay idle."""
    if to_run >= parallel or not any("CUDA_VISIBLE_DEVICES" in env for env in envs):
        return None
    sizes = sorted({len(env["CUDA_VISIBLE_DEVICES"].split(",")) for env in envs})
    each = " or ".join(str(n) for n in sizes)
    return (f"note: --parallel={parallel} with {to_run} point{'s' * (to_run != 1)} to train: each "
            f"point runs on its group of {each} GPU{'s' * (sizes != [1])} and "
            f"{parallel - to_run} group{'s' * (parallel - to_run != 1)} stay idle; "
            f"--parallel={to_run} would give each point more GPUs (and a larger global batch "
            f"where train.per_device_batch_size sets it)")


def given_cpu_devices(options: RunOptions) -> str | None:
    """The sweep command's own ``parallel.cpu_devices``, if it sets it: each point then gets
    that many CPU devices, not a CPU slot's one (appended after it, the slot's count won,
    unsaid)."""
    given = [f.split("=", 1)[1] for f in options.config_flags
             if f.startswith("--config.parallel.cpu_devices=")]
    return given[-1] if given else None


def train_command(point: Point, point_dir: str, options: RunOptions,
                  env: dict[str, str] | None = None) -> list[str]:
    """The point's ``lmscale.train`` command. A CPU slot's one device (``JAX_NUM_CPU_DEVICES``
    in ``env``) is also said as ``parallel.cpu_devices``, so that the logged command and the
    point's config.json rerun it on as many devices (bit for bit) when started by hand."""
    devices = None if given_cpu_devices(options) else (env or {}).get("JAX_NUM_CPU_DEVICES")
    return [options.python, "-m", "lmscale.train", f"--config={options.config_file}",
            f"--workdir={point_dir}", *options.config_flags, *override_flags(point.overrides),
            *([f"--config.parallel.cpu_devices={devices}"] if devices else [])]


def completed(point_dir: str) -> int | None:
    """The run's final step if it trained to its end (a record at derived.steps), else None."""
    try:
        with open(os.path.join(point_dir, "config.json")) as f:
            steps = json.load(f)["derived"]["steps"]
    except (OSError, KeyError, ValueError):
        return None
    return steps if any(r.get("step") == steps for r in read_records(point_dir)) else None


class Runner:
    """Trains the unfinished points of a sweep in ``workdir``."""

    def __init__(self, workdir: str, options: RunOptions) -> None:
        self.workdir = workdir
        self.options = options
        self.stopping = 0  # the signal stopping the sweep (0: none)
        self.trained: list[str] = []  # names of the points this call started a trainer for
        self._waiting: set[str] = set()

    def run(self, points: list[Point]) -> None:
        pending = [p for p in points if not is_finished(os.path.join(self.workdir, p.name))]
        done = len(points) - len(pending)
        if done:
            self.options.log(f"sweep: {done} of {len(points)} points already finished; "
                             f"{len(pending)} to run")
        if not pending:
            return
        envs = device_groups(self.options.parallel)
        cpu_devices = given_cpu_devices(self.options)
        if cpu_devices:  # JAX_NUM_CPU_DEVICES=1 would win over it
            envs = [{k: v for k, v in e.items() if k != "JAX_NUM_CPU_DEVICES"} for e in envs]
        for note in (idle_groups_note(self.options.parallel, len(pending), envs),
                     per_device_batch_note(pending, self.options.parallel, cpu_devices)):
            if note:
                self.options.log(note)
        free = list(range(self.options.parallel))
        running: dict[int, tuple[_Job, int]] = {}
        self._running = running  # for _on_signal's second signal
        # SIGTERM, SIGINT, and as SIGTERM SIGHUP (a closed terminal) and SIGUSR1 (Slurm's
        # --signal=USR1@T), unless ignored from the start (nohup), as the trainers take them
        handlers = {s: signal.signal(s, self._on_signal) for s in taken_signals()}
        try:
            while pending or running:
                while pending and free and not self.stopping:
                    job = self._start(pending[0], envs[free[0]])
                    if job is None:  # its previous trainer still holds the lock: try later
                        break
                    pending.pop(0)
                    running[job.proc.pid] = (job, free.pop(0))
                for pid, (job, slot) in list(running.items()):
                    if self._poll(job):
                        del running[pid]
                        free.append(slot)
                if self.stopping:
                    for job, _ in running.values():
                        self._signal(job, signal.SIGTERM)
                    if not running:
                        break
                time.sleep(self.options.poll_seconds)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.stopping:
            raise SweepInterrupted("sweep stopped by a signal; the running points stopped (those past "
                                   "their first step saved a checkpoint); re-run the same command "
                                   "to resume", self.stopping)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopping and signum in REQUEST_SIGNALS:  # the same request again (a scheduler
            # repeats it; `timeout` signals the process, then its group; a closed terminal
            # sends SIGHUP to the group), as the trainer takes it (training/stop.py): the
            # points still stop at a checkpoint
            name = signal.Signals(signum).name
            self.options.log(f"sweep: {name} while stopping; the running points still stop at a "
                             f"checkpoint (a second Ctrl-C stops them at once)")
            return
        if self.stopping:  # a second Ctrl-C: stop the points at once, without a checkpoint
            # (SIGKILL: a trainer may not have taken its first signal yet, and the parent-
            # death SIGTERM would only ask it again to stop at a checkpoint). Each killed
            # point's status says so (it stayed "running").
            for job, _ in list(getattr(self, "_running", {}).values()):
                if job.proc.returncode is not None:  # reaped and finished by _poll
                    continue
                try:  # not Popen.kill: its poll() would reap an exited point unfinished
                    os.kill(job.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    _, wait_status, usage = os.wait4(job.proc.pid, 0)
                except ChildProcessError:  # reaped by _poll as the signal came
                    continue
                self._finish(job, os.waitstatus_to_exitcode(wait_status), usage)
            raise SweepInterrupted("sweep stopped at once by a second signal: the running points "
                                   "were killed without a checkpoint (re-run the same command to "
                                   "resume them from their last one)", signum)
        self.stopping = signum  # the first signal: the exit status of a clean stop
        self.options.log(f"sweep: signal {signum}; stopping the running points (those past their "
                         f"first step save a checkpoint; a second Ctrl-C stops them at once)")

    def _signal(self, job: _Job, signum: int) -> None:
        if not getattr(job, "_signalled", False):
            try:
                job.proc.send_signal(signum)
            except ProcessLookupError:
                pass
            job._signalled = True  # type: ignore[attr-defined]

    def _start(self, point: Point, env: dict[str, str]) -> _Job | None:
        point_dir = os.path.join(self.workdir, point.name)
        os.makedirs(point_dir, exist_ok=True)
        lock = Lock(os.path.join(point_dir, LOCK_FILE))
        if not lock.try_acquire():
            if point.name not in self._waiting:
                self.options.log(f"sweep: {point.name} is still held by a previous trainer; waiting")
                self._waiting.add(point.name)
            return None
        prior = read_status(point_dir) or {}
        command = train_command(point, point_dir, self.options, env)
        log_file = open(os.path.join(point_dir, "train.log"), "a", encoding="utf-8",
                        errors="surrogateescape")  # a path's bytes as given, in any locale
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**single_process_env(os.environ),
                                     "PYTHONUNBUFFERED": "1", **env,
                                     PARENT_ENV: str(os.getpid())},  # cli.die_with_parent
                                pass_fds=(lock.fd,))
        write_status(point_dir, {"status": "running", "point": point.to_dict(), "command": command,
                                 "pid": proc.pid, "wall_s": prior.get("wall_s", 0.0),
                                 "cpu_s": prior.get("cpu_s", 0.0)})
        self.trained.append(point.name)
        where = f" on {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
        self.options.log(f"sweep: start {point.name}{where}")
        return _Job(point, point_dir, proc, lock, log_file, time.perf_counter(), prior)

    def _poll(self, job: _Job) -> bool:
        """Checks one running point; returns True once it has exited (and its status is written)."""
        pid, wait_status, usage = os.wait4(job.proc.pid, os.WNOHANG)
        if pid == 0:
            if job.divergence is None:
                job.divergence = find_divergence(read_records(job.dir), self.options.divergence_factor)
                if job.divergence is not None:
                    self.options.log(f"sweep: {job.point.name} diverged ({job.divergence['reason']}); stopping it")
                    self._signal(job, signal.SIGTERM)
            return False
        job.proc.returncode = os.waitstatus_to_exitcode(wait_status)
        self._finish(job, job.proc.returncode, usage)
        return True

    def _finish(self, job: _Job, returncode: int, usage: resource.struct_rusage) -> None:
        job.log_file.close()
        job.lock.release()
        records = read_records(job.dir)
        divergence = job.divergence or find_divergence(records, self.options.divergence_factor)
        if divergence is None and returncode == EXIT_DIVERGED:  # found at a save, before a log
            divergence = _divergence_at_save(os.path.join(job.dir, "train.log"), records)
        final = completed(job.dir)
        status: dict[str, Any] = {
            "point": job.point.to_dict(), "command": job.proc.args, "returncode": returncode,
            "wall_s": job.prior.get("wall_s", 0.0) + time.perf_counter() - job.started,
            "cpu_s": job.prior.get("cpu_s", 0.0) + usage.ru_utime + usage.ru_stime,
            "step": max((r["step"] for r in records), default=0)}
        planned_steps = planned(self.workdir, job.point).get("steps")
        if planned_steps is not None and status["step"] > planned_steps:
            # another run (a hand-started lmscale.train with more steps) trained in the
            # point's folder: its trainer found it "already trained" and the sweep reported
            # the other run's results as this point's
            status.update(status="failed", error=(
                f"{job.dir} holds a run trained to step {status['step']}, past this point's "
                f"{planned_steps} steps: another run trained in its folder; move that run "
                f"elsewhere and re-run the sweep"))
        elif divergence is not None:
            status.update(status="div", divergence=divergence)
        elif returncode == 0 and final is not None:
            status["status"] = "ok"
        elif self.stopping or returncode == 0:
            # Where a re-run resumes: the checkpoint the trainer saved as it stopped (the last
            # logged step can be a few steps before it).
            status.update(status="interrupted", step=_saved_step(job.dir) or status["step"])
        elif returncode < 0:  # not the trainer's own error (its log's last line was a hint)
            status.update(status="failed", error=_killed(-returncode))
        else:
            status.update(status="failed", error=_last_error(os.path.join(job.dir, "train.log")))
        write_status(job.dir, status)
        extra = f": {status['error']}" if status["status"] == "failed" else ""
        self.options.log(f"sweep: {job.point.name} {status['status']} at step {status['step']} "
                         f"({status['wall_s']:.0f} s){extra}")


def _saved_step(point_dir: str) -> int | None:
    """The newest checkpoint step of a point's run (orbax's step folders), None if none."""
    try:
        names = os.listdir(os.path.join(point_dir, "checkpoints"))
    except OSError:
        return None
    return max((int(n) for n in names if n.isdigit()), default=None)


def _divergence_at_save(log_path: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The divergence record of a trainer that exited ``EXIT_DIVERGED``: its parameters were
    not finite at a checkpoint save, or its logged loss far above a uniform guess's
    (``train.divergence_factor``), before this sweep's own rule saw it (its error line names
    the step)."""
    error = _last_error(log_path)
    found = re.search(r"at step (\d+)", error)
    step = int(found.group(1)) if found else max((r["step"] for r in records), default=0)
    loss = re.search(r"training loss is ([0-9.e+-]+) nats", error)
    if loss:
        return {"step": step, "loss": float(loss.group(1)),
                "reason": f"loss {loss.group(1)} at step {step} above the trainer's "
                          f"train.divergence_factor x a uniform guess's"}
    if "training loss is not finite" in error:
        return {"step": step, "loss": None,
                "reason": f"non-finite loss at step {step} (found by the trainer, before a log)"}
    return {"step": step, "loss": None,
            "reason": f"parameters not finite at step {step} (found at a checkpoint save)"}


def _killed(signum: int) -> str:
    """A trainer ended by a signal, in words (SIGKILL: often the out-of-memory killer)."""
    import signal
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    why = " — often the out-of-memory killer" if signum == signal.SIGKILL else ""
    return f"killed by {name}{why} (re-run the sweep to resume it from its last checkpoint)"


def _last_error(log_path: str) -> str:
    """The trainer's last meaningful output line (its one-line error, or the exception)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:  # not the locale's
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["no output"])[-1][:300]
