"""Joining a multi-process run: ``jax.distributed`` set up before anything touches devices.

A run over many hosts (or many processes on one host) is one JAX program per process; they
find each other through a coordinator (process 0 serves it at ``host:port``). Where the
settings come from, first match wins:

1. flags ``--coordinator_address``, ``--num_processes``, ``--process_id`` of lmscale.train,
2. the environment ``LMSCALE_COORDINATOR_ADDRESS``, ``LMSCALE_NUM_PROCESSES``,
   ``LMSCALE_PROCESS_ID`` (what ``launch/local.py`` sets; a flag beats its variable),
3. a SLURM job step with more than one task (``srun``) or an Open MPI job (``mpirun``):
   jax's own cluster detection finds the count and the rank (and, on GPUs, one device per
   task); a SLURM step's coordinator is named here (:func:`slurm_coordinator`), on a port
   of its job *and step*, which process 0 checks is free,
4. otherwise one process: nothing to initialize.

``resolve`` is the pure decision; ``initialize`` calls ``jax.distributed.initialize``. An
unreachable coordinator makes jax abort the process (SIGABRT) once ``timeout_s`` is over,
so ``initialize`` first prints one line on stderr saying whom it is waiting for.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import sys
from typing import Callable, Mapping, TypeVar

from lmscale.training.host_devices import affinity_cores, forced_device_count

ENV_COORDINATOR = "LMSCALE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LMSCALE_NUM_PROCESSES"
ENV_PROCESS_ID = "LMSCALE_PROCESS_ID"

# What jax's cluster detection (jax/_src/clusters) needs to find in the environment.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
OMPI_URI = "OMPI_MCA_orte_hnp_uri"


class DistributedError(ValueError):
    """Multi-process settings that are incomplete or contradict each other."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """How this process joins the run.

    ``coordinator_address``, ``num_processes`` and ``process_id`` are what is passed to
    ``jax.distributed.initialize``; None leaves that value to jax's cluster detection.
    ``rank`` and ``size`` are the same numbers for messages (from the cluster's variables
    when jax will detect them). ``source`` says where the settings came from.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    rank: int
    size: int
    source: str

    def describe(self, timeout_s: int) -> str:
        """The line printed before connecting: who, to whom, and for how long."""
        where = (f"coordinator {self.coordinator_address}" if self.coordinator_address
                 else f"the coordinator jax derives from {self.source}")
        return (f"process {self.rank}/{self.size}: connecting to {where} "
                f"(timeout {timeout_s} s; settings from {self.source})")


def resolve(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
            env: Mapping[str, str]) -> ProcessGroup | None:
    """Decides from flags (None when not given) and ``env``; None means a single process."""
    address = coordinator_address if coordinator_address is not None else env.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    flagged = (coordinator_address, num_processes, process_id)
    from_flags = any(v is not None for v in flagged)
    from_env = any(f is None and v is not None for f, v in zip(flagged, (address, count, pid)))
    source = " and ".join(name for name, used in (("flags", from_flags), ("LMSCALE_* environment", from_env))
                          if used)
    if count is not None and count < 1:
        raise DistributedError(f"the number of processes must be at least 1, got {count}")
    if count is not None and pid is not None and not 0 <= pid < count:
        raise DistributedError(f"process id {pid} is outside 0..{count - 1} (number of processes {count})")
    if count == 1:
        return None  # one process: nothing to coordinate, whatever the cluster says
    if address is not None:
        _check_address(address)
    if None not in (address, count, pid):
        return ProcessGroup(address, count, pid, pid, count, source)

    cluster = _cluster(env)
    if cluster is None:
        if (address, count, pid) == (None, None, None):
            return None
        missing = [flag for flag, v in (("--coordinator_address", address), ("--num_processes", count),
                                        ("--process_id", pid)) if v is None]
        raise DistributedError(
            f"a multi-process run needs --coordinator_address, --num_processes and --process_id "
            f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}, or a SLURM/Open MPI "
            f"job); missing {', '.join(missing)}")
    kind, rank, size = cluster
    source = f"{source} and {kind}" if source else kind
    if count is not None and count != size:
        raise DistributedError(f"--num_processes={count} but this {kind} job step has {size} "
                               f"tasks: leave --num_processes out (the step's task count is used)")
    if kind == "SLURM" and address is None:
        address = slurm_coordinator(env)
    if kind == "Open MPI" and OMPI_URI not in env:
        # jax detects Open MPI by this variable only; without it (Open MPI 5) pass all three.
        if address is None:
            raise DistributedError(
                f"an Open MPI job without {OMPI_URI} (Open MPI 5?): jax cannot find the "
                f"coordinator; pass --coordinator_address=HOST:PORT of rank 0")
        count, pid = size if count is None else count, rank if pid is None else pid
        return ProcessGroup(address, count, pid, pid, count, source)
    return ProcessGroup(address, count, pid, rank if pid is None else pid,
                        size if count is None else count, source)


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
               timeout_s: int, *, message: str | None = None, rank: int | None = None) -> None:
    """``jax.distributed.initialize`` with a bounded wait, after one line on stderr.

    None values are left to jax's cluster detection (SLURM, Open MPI). Must run before any
    device query (``jax.devices()``, creating an array, ...). If the coordinator cannot be
    reached within ``timeout_s`` seconds, jax aborts the process (SIGABRT).
    """
    import jax
    if timeout_s < 1:
        raise DistributedError(f"--initialization_timeout must be at least 1 second, got {timeout_s}")
    if message is None:
        message = (f"process {process_id if process_id is not None else '?'}/"
                   f"{num_processes or '?'}: connecting to coordinator "
                   f"{coordinator_address or '(from the cluster)'} (timeout {timeout_s} s)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    # jax's preemption service installs a C++ SIGTERM handler over cli_signals' (a scheduler's
    # or Ctrl-C's stop during start-up was logged and ignored: the run trained to its end);
    # lmscale's processes agree on a stop themselves (training/stop.py)
    jax.config.update("jax_enable_preemption_service", False)
    threads = cpu_pool_size(os.environ, affinity_cores(), jax.config.jax_num_cpu_devices)
    if threads is not None:
        os.environ["PJRT_NPROC"] = str(threads)  # read when the CPU client is created, after this
    print(message, file=sys.stderr, flush=True)
    # All three given: no cluster detection, which would also narrow a SLURM/MPI task to one GPU.
    explicit = None not in (coordinator_address, num_processes, process_id)
    if coordinator_address is not None and (process_id if process_id is not None else rank) == 0:
        _check_port_free(coordinator_address)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               cluster_detection_method="deactivate" if explicit else None,
                               initialization_timeout=timeout_s)
    if num_processes is not None and jax.process_count() != num_processes:
        why = (f"this process was started as one of {num_processes} processes, and the run has "
               f"{jax.process_count()} (as process 0 was told): give every process the same count")
        leave_word(why)
        raise DistributedError(why)
    check_same_device_counts([d.process_index for d in jax.devices()])


def check_same_device_counts(owners: list[int]) -> None:
    """Every process must bring as many devices (``owners``: each global device's process):
    the batch is split evenly among them, and the first gather of unequal shares failed with
    "cannot reshape array of size 3 into shape (2,2)". Every process sees the same list, so
    all raise the one error without a collective."""
    counts = {p: owners.count(p) for p in sorted(set(owners))}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"process {p}: {n}" for p, n in counts.items())
        raise DistributedError(
            f"the processes have different numbers of devices ({listed}): every process of a "
            f"run must bring as many (the same CUDA_VISIBLE_DEVICES count, GPUs per task, or "
            f"XLA_FLAGS=--xla_force_host_platform_device_count / parallel.cpu_devices on CPU)")


def join(group: ProcessGroup | None, timeout_s: int) -> None:
    """Joins the run that ``group`` (from :func:`resolve`) describes; nothing for a single
    process. Must run before any device query, like :func:`initialize`."""
    if group is not None:
        initialize(group.coordinator_address, group.num_processes, group.process_id, timeout_s,
                   message=group.describe(timeout_s), rank=group.rank)


def cpu_pool_size(env: Mapping[str, str], cpus: int, num_cpu_devices: int = -1) -> int | None:
    """Threads XLA's CPU client needs in a multi-process run, if more than it would take.

    Each local CPU device blocks one thread of the client's pool in a cross-process
    collective while it waits for the other processes, and the launch of the next program
    blocks another one per device; with fewer than 2 per device the processes deadlock.
    The pool has one thread per core (or ``PJRT_NPROC``), so a 2-core machine running 2
    devices per process needs more. Returns the ``PJRT_NPROC`` to set, or None.
    """
    if "PJRT_NPROC" in env or "NPROC" in env:
        return None  # the user's choice
    forced = forced_device_count(env)
    devices = num_cpu_devices if num_cpu_devices > 0 else 1 if forced is None else forced
    return 2 * devices if 2 * devices > cpus else None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {text!r}") from None


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if (not sep or not host or "/" in host or "@" in host or not port.isdigit()
            or not 0 < int(port) < 65536):
        raise DistributedError(f"coordinator address must be HOST:PORT (no scheme or path), "
                               f"got {address!r}")


def _check_port_free(address: str) -> None:
    """Process 0 hosts the coordinator on every interface at the address's port: a port taken
    by another program made it crash (a segmentation fault inside jax) instead of saying so."""
    port = int(address.rpartition(":")[2])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise DistributedError(
                        f"the coordinator's port {port} is already in use on this host (process "
                        f"0 hosts the coordinator there): pick another port") from None


def _cluster(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(name, rank, size) of a multi-task SLURM step or Open MPI job in ``env``, else None."""
    if _env_int(env, "SLURM_NTASKS") not in (None, 0, 1):
        missing = [v for v in SLURM_VARS if v not in env]
        if missing:
            raise DistributedError(
                f"SLURM_NTASKS={env['SLURM_NTASKS']} but {', '.join(missing)} unset: start one "
                f"task per process with srun (or pass --num_processes=1 for a single process)")
        size, rank = int(env["SLURM_NTASKS"]), _env_int(env, "SLURM_PROCID")
        if rank is None or not 0 <= rank < size:
            raise DistributedError(f"SLURM_PROCID={env['SLURM_PROCID']!r} is not a task id "
                                   f"0..{size - 1} of SLURM_NTASKS={size}")
        return "SLURM", rank, size
    if _env_int(env, "OMPI_COMM_WORLD_SIZE") not in (None, 0, 1):
        return "Open MPI", int(env.get("OMPI_COMM_WORLD_RANK", "0")), int(env["OMPI_COMM_WORLD_SIZE"])
    return None


def slurm_coordinator(env: Mapping[str, str]) -> str:
    """HOST:PORT of a SLURM step's coordinator: the step's first node, on ``JAX_COORDINATOR_PORT``
    or a port of 61440..65535 from the job id and the step id. (jax's own choice is of the job
    id only: two steps of one job on one first node, or two jobs 4096 ids apart sharing it,
    met at one coordinator, and the later one's tasks aborted the running one with "task
    unexpectedly tried to connect with a different incarnation".) Step 0 keeps jax's port."""
    port = env.get("JAX_COORDINATOR_PORT", "").strip()
    if not port:
        job, step = _env_int(env, "SLURM_JOB_ID"), _env_int(env, "SLURM_STEP_ID") or 0
        if job is None:
            raise DistributedError("SLURM_JOB_ID unset: start the tasks with srun")
        port = str(61440 + (job + 1031 * step) % 4096)  # 1031: odd, so 4096 steps differ
    return f"{_first_host(env['SLURM_STEP_NODELIST'])}:{port}"


def _first_host(nodelist: str) -> str:
    """The first name of a SLURM host list: ``node[07-09,12],gpu1`` -> ``node07``,
    ``rack1-[2-3]-ib`` -> ``rack1-2-ib`` (what ``scontrol show hostnames | head -1`` says)."""
    host, i = [], 0
    while i < len(nodelist) and nodelist[i] != ",":
        if nodelist[i] == "[":
            end = nodelist.index("]", i)
            host.append(re.split(r"[,-]", nodelist[i + 1:end])[0])
            i = end + 1
        else:
            host.append(nodelist[i])
            i += 1
    return "".join(host)


def process_0_says(flag: bool) -> bool:
    """``flag`` as process 0 has it, on every process: a decision the processes must take
    together (each looking for itself raced with process 0 creating what it looked for)."""
    import jax
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(int(multihost_utils.broadcast_one_to_all(np.int32(flag))))


T = TypeVar("T")


def process_0_does(action: Callable[[], T], others_error: Callable[[], Exception],
                   errors: tuple[type[BaseException], ...] = (OSError,)) -> T | None:
    """``action()`` on process 0 alone (a file only it writes or moves), every process told
    whether it succeeded before any goes on: one that failed between process 0's write and
    the next collective left the others waiting there, and process 0 in jax's shutdown
    barrier (a 5-minute hang, SIGTERM ignored). Process 0 raises its own error; the others
    ``others_error()``, a line pointing at it. Returns the action's result (None elsewhere)."""
    import jax
    result, failure = None, None
    if jax.process_index() == 0:
        try:
            result = action()
        except errors as e:
            failure = e
    if not process_0_says(failure is None):
        raise failure if failure is not None else others_error()
    return result


def refuse_several_processes(tool: str, env: Mapping[str, str]) -> None:
    """For a tool that runs as one process over its host's devices (all but training):
    started by launch/local.py or ``srun`` with several tasks, each task did the whole job
    (fine-tuning: its own run in the one workdir until the workdir lock stopped all but one;
    transfer: the same files written by each; eval: its line once per task). One line from
    every task now (exit 1), before any work. A half-set environment (an sbatch script's own:
    SLURM_NTASKS without a step's variables) is one process."""
    try:
        group = resolve(None, None, None, env)
    except DistributedError:
        group = _several_without_coordinator(env)
    if group is not None:
        print(f"error: {tool} runs as one process (over the devices of its host), and this "
              f"one was started as one of several (process {group.rank} of {group.size}, from "
              f"{group.source}): start it once, without launch/local.py (or with srun "
              f"--ntasks=1)", file=sys.stderr)
        sys.exit(1)


def _several_without_coordinator(env: Mapping[str, str]) -> ProcessGroup | None:
    """A launch of several processes that a trainer could not join (no coordinator to be
    found), which a one-process tool must still refuse: an Open MPI 5 job (no
    OMPI_MCA_orte_hnp_uri: ``mpirun -n 2 python -m lmscale.eval`` ran the whole job twice), or
    LMSCALE_NUM_PROCESSES > 1 without an address. None for the half-set SLURM batch environment."""
    for name, rank_name, source in ((ENV_NUM_PROCESSES, ENV_PROCESS_ID, "LMSCALE_* environment"),
                                    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI")):
        size, rank = env.get(name, "").strip(), env.get(rank_name, "").strip()
        if size.isdigit() and int(size) > 1:
            return ProcessGroup(None, int(size), None, int(rank) if rank.isdigit() else 0,
                                int(size), source)
    return None


def check_same_config(config: object) -> None:
    """Multi-process runs: refuses to start when the processes were given different configs
    (another --config.* flag on one host): each would initialize and update its own replica,
    and the "replicated" parameters would silently differ."""
    from lmscale.config import ConfigError
    differ = processes_that_differ(config.to_json(sort_keys=True))
    if differ:
        raise ConfigError(f"process(es) {differ} were started with another config than process 0 "
                          f"(other --config.* flags or config file): every process of a run must "
                          f"be given the same command")


def processes_that_differ(text: str) -> list[int]:
    """The processes whose ``text`` differs from process 0's (compared by a hash, gathered
    from every process: all must call it); [] in a single-process run."""
    import jax
    if jax.process_count() == 1:
        return []
    import hashlib

    import numpy as np
    from jax.experimental import multihost_utils
    digest = hashlib.sha256(text.encode()).digest()[:8]
    mine = np.frombuffer(digest, np.int32)
    try:
        every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    except jax.errors.JaxRuntimeError:  # a process left before it joined (a Gloo timeout here)
        from lmscale.config import ConfigError
        raise ConfigError(f"a process of the run left before the processes agreed on their "
                          f"settings ({word_left() or 'see its error'})") from None
    return [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]


_LEFT = "lmscale/left/"  # the coordinator's key-value store: why a process left the run


def leave_word(why: str) -> None:
    """Tells the processes that stay why this one leaves (read by :func:`word_left`); a
    process whose peer left waited in its first collective and died with a Gloo traceback."""
    try:
        from jax._src import distributed as state  # no public key-value API
        state.global_state.client.key_value_set(f"{_LEFT}{state.global_state.process_id}", why)
    except Exception:  # best effort: the caller raises its own error anyway
        pass


def word_left() -> str | None:
    """What the processes that left said, "process k: ..."; None where none could be read."""
    try:
        from jax._src import distributed as state
        said = state.global_state.client.key_value_dir_get(_LEFT)
    except Exception:
        return None
    return "; ".join(f"process {key.rsplit('/', 1)[-1]}: {why}" for key, why in sorted(said)) or None
