"""Data parallelism inside one CPU host: one XLA CPU device per core.

Why: XLA:CPU runs a program's operations one after another and spreads each one over the
cores. Inside the recurrent loop the operations are small (a 256-unit mLSTM step is a
[1024, 256] x [256, 32] matmul and a few [256, 32] fusions), and spreading them costs more
than it gains: such a loop runs faster pinned to one core than on two. Split into one
device per core, the host runs the data-parallel step (the same update, tested equal to one
device) as independent per-core programs on B/N rows each, joined by one in-process
all-reduce of the gradients. On the 2-core CI machine this made the quickstart step 1.35x
faster (benchmarks/README.md, issue 11). Hosts with an accelerator (a CUDA/ROCm/TPU plugin
installed, or ``JAX_PLATFORMS`` naming another platform first) are left alone: the mesh
takes the accelerators there.

``parallel.cpu_devices``: 0 = one device per usable core, reduced to the largest count that
divides the global batch; N = N devices; 1 = one device. It must take effect before JAX
creates its CPU client, so the command-line tools apply it first thing; a device count the
user chose (``--xla_force_host_platform_device_count``, ``jax_num_cpu_devices``) wins, and
multi-process runs keep one device per process unless told otherwise.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from typing import Callable, Mapping

import ml_collections

from lmscale.training.cgroups import CGROUP_ROOT, PROC_CGROUP, cgroup_folders, cgroup_ints


def cgroup_cpu_quota(proc_cgroup: str | None = None, root: str | None = None) -> float | None:
    """CPUs this process's cgroups' CFS quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``
    / ``cpu.cfs_period_us``; the tightest of its own and its ancestors'), None when none
    limits it. ``docker --cpus=2`` and Kubernetes CPU limits set it, and the affinity still
    lists every core of the machine."""
    best: float | None = None
    for folder, v2 in cgroup_folders("cpu", proc_cgroup or PROC_CGROUP, root or CGROUP_ROOT):
        if v2:
            numbers = cgroup_ints(os.path.join(folder, "cpu.max")) or []
        else:
            quota, period = (cgroup_ints(os.path.join(folder, f"cpu.cfs_{name}_us"))
                             for name in ("quota", "period"))
            numbers = quota + period if quota and period else []
        if len(numbers) == 2 and numbers[1] > 0:
            cpus = numbers[0] / numbers[1]
            best = cpus if best is None else min(best, cpus)
    return best


def affinity_cores() -> int:
    """Cores this process may run on (its CPU affinity; the machine's where none), at least 1:
    what XLA sizes its CPU thread pool by, a CPU quota or not."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def usable_cores() -> int:
    """Cores this process may use, at least 1: its CPU affinity (taskset, a Slurm job's
    cpuset, ``docker --cpuset-cpus``) capped by its cgroups' CPU quota rounded up
    (``cgroup_cpu_quota``), as ``joblib.cpu_count`` counts them. One thread or device per
    host core in a 2-CPU container of a 32-core host made its steps 3-5x slower."""
    cores = affinity_cores()
    quota = cgroup_cpu_quota()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def auto_device_count(cores: int, batch_size: int, per_device_batch_size: int = 0) -> int:
    """Largest device count <= ``cores`` that the global batch splits into evenly.

    With ``per_device_batch_size`` > 0 the global batch follows the device count, so every
    count works and this is ``cores``.
    """
    if per_device_batch_size > 0:
        return max(1, cores)
    return max(d for d in range(1, max(1, cores) + 1) if batch_size % d == 0)


def forced_device_count(env: Mapping[str, str]) -> int | None:
    """The count of ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, or None."""
    match = re.search(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    return int(match.group(1)) if match else None


def user_device_count(env: Mapping[str, str]) -> int | None:
    """The CPU device count the user set in the environment, or None."""
    forced = forced_device_count(env)
    if forced is not None:
        return forced
    value = env.get("JAX_NUM_CPU_DEVICES", "").strip()
    return int(value) if value.lstrip("-").isdigit() and int(value) > 0 else None


ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")


def cpu_runs_the_step(env: Mapping[str, str],
                      has_module: Callable[[str], bool] | None = None) -> bool:
    """Whether the training step will run on the CPU: no accelerator plugin is installed, or
    ``JAX_PLATFORMS`` names only the CPU (where it names no CPU, no CPU device is used)."""
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    if has_module is None:
        has_module = lambda name: importlib.util.find_spec(name) is not None
    return not any(has_module(m) for m in ACCELERATOR_PLUGINS)


def split_host(config: ml_collections.ConfigDict, *, multi_process: bool = False,
               env: Mapping[str, str] | None = None) -> int | None:
    """Sets JAX's CPU device count from ``config.parallel.cpu_devices`` (see module doc).

    Returns the count set, or None when it was left alone: the user chose one, JAX's
    backends already exist, a multi-process run with the automatic setting, an accelerator
    will run the step, or one device.
    """
    return split_cpu_host(config.train.batch_size, int(config.parallel.cpu_devices),
                          per_device_batch_size=config.train.per_device_batch_size,
                          multi_process=multi_process, env=env)


def split_cpu_host(batch_size: int, devices: int = 0, *, per_device_batch_size: int = 0,
                   multi_process: bool = False,
                   env: Mapping[str, str] | None = None) -> int | None:
    """:func:`split_host` from its values: ``devices`` as ``parallel.cpu_devices`` (0 = one
    per core, reduced to a count that divides ``batch_size``). Notebooks call it as
    ``lmscale.use_cpu_cores``, before anything starts JAX."""
    import jax
    from jax._src import xla_bridge

    env = os.environ if env is None else env
    if devices < 0:
        from lmscale.config import ConfigError
        raise ConfigError(f"parallel.cpu_devices must be >= 0 (0 = one per core), got {devices}")
    chosen = user_device_count(env)
    if (chosen is not None and devices and chosen != devices and not multi_process
            and cpu_runs_the_step(env)):  # was ignored silently
        import sys
        print(f"note: the environment sets {chosen} CPU devices (XLA_FLAGS or "
              f"JAX_NUM_CPU_DEVICES); {devices} asked for (parallel.cpu_devices, or the run's "
              f"record) is not applied", file=sys.stderr, flush=True)
    if chosen is not None or jax.config.jax_num_cpu_devices > 0:
        return None
    if xla_bridge.backends_are_initialized() or (multi_process and devices == 0):
        return None
    if not cpu_runs_the_step(env):  # the mesh takes the accelerators; leave the CPU alone
        return None
    count = devices or auto_device_count(usable_cores(), batch_size, per_device_batch_size)
    if count <= 1:
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count


def split_host_like_run(workdir: str) -> int | None:
    """:func:`split_host` with a trained run's saved config and recorded device count, so that
    evaluating it uses as many devices as its training did and reproduces its logged
    validation exactly. Nothing when the workdir has no config.json (the tool reports that
    itself)."""
    from lmscale.config import load_config
    from lmscale.training.run_paths import best_folder
    path = os.path.join(best_folder(workdir)[0], "config.json")  # RUN/best: RUN's record
    if not os.path.isfile(path):
        return None
    config, derived = load_config(path)
    # The count the run recorded: also one chosen outside the config (XLA_FLAGS, a 2 x 2
    # launch), which parallel.cpu_devices does not say.
    # It wins over the config's (which a user-set count overrode: eval missed the logged loss).
    recorded = int(derived.get("devices") or 0)
    return split_cpu_host(config.train.batch_size, recorded or int(config.parallel.cpu_devices),
                          per_device_batch_size=config.train.per_device_batch_size)
