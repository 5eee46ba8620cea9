"""Whether the compiled training step fits this CPU host's memory, asked before it runs.

Why: a GPU-sized config started on a CPU host (say ``configs/mlstm4096_8gpu.py`` on a laptop)
compiles, then asks the operating system for tens of GiB of temporaries on its first step; on
Linux ``malloc`` promises them and the kernel's OOM killer ends the process later with a bare
"Killed" (or the machine swaps for an hour). The compiled program's own memory analysis knows
the size beforehand: the step is compiled ahead of time (the jitted call then reuses that
executable: nothing is compiled twice) and its new memory (temporaries and outputs, less what
the donated state's buffers take back) times this host's devices is compared with the memory
the kernel says is available, once the step is compiled (capped by the process's memory
cgroup, as containers and Slurm jobs limit it, and by its address-space rlimit).
Accelerators report their own out-of-memory errors by name, so only CPU hosts are checked,
and only single-process runs (processes of a multi-process CPU run may share one host's
memory, and one process refusing alone would leave the others waiting in the step's
all-reduce).
"""

from __future__ import annotations

import os
import resource
from typing import Any, Callable

import jax

from lmscale.config import ConfigError
from lmscale.training.cgroups import CGROUP_ROOT, PROC_CGROUP, cgroup_folders, cgroup_ints
from lmscale.training.host_devices import usable_cores

GiB = 1024 ** 3
MEMINFO = "/proc/meminfo"


def _kb_fields(path: str) -> dict[str, int]:
    """The "Key: N kB" fields of a /proc file (meminfo, self/status) in bytes; {} if unreadable."""
    fields: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * 1024  # kB
    except OSError:
        return {}
    return fields


def _meminfo_bytes(path: str | None, swap: bool) -> int | None:
    fields = _kb_fields(MEMINFO if path is None else path)
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + (fields.get("SwapFree", 0) if swap else 0)


def _inactive_file(path: str, key: str) -> int:
    """Reclaimable page cache in a cgroup's memory.stat (charged to it, not in the way)."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value)
    except OSError:
        pass
    return 0


def cgroup_available_bytes(proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT) -> int | None:
    """What this process's memory cgroups (v2 ``memory.max``, v1 ``memory.limit_in_bytes``; the
    tightest of its own and its ancestors') still allow, page cache counted as free; None when
    none limits it (containers, Slurm jobs and systemd units limit memory this way, and
    /proc/meminfo shows the whole machine's)."""
    best: int | None = None
    for folder, v2 in cgroup_folders("memory", proc_cgroup, root):
        files = (("memory.max", "memory.current", "memory.stat", "inactive_file") if v2 else
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
                  "total_inactive_file"))
        limit, usage = (cgroup_ints(os.path.join(folder, name)) for name in files[:2])
        if not limit or not usage or limit[0] >= 2 ** 60:  # "max" / unlimited
            continue
        free = max(0, limit[0] - usage[0]
                   + _inactive_file(os.path.join(folder, files[2]), files[3]))
        best = free if best is None else min(best, free)
    return best


def available_host_bytes(path: str | None = None, swap: bool = True,
                         proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT) -> int | None:
    """MemAvailable + SwapFree (``swap``; else MemAvailable alone) of this Linux host in bytes,
    capped by this process's memory cgroup limits (``cgroup_available_bytes``) and by its
    address-space rlimit (``ulimit -v``) less what it maps already; None where not readable.

    ``path`` None: ``MEMINFO``."""
    found = [n for n in (_meminfo_bytes(path, swap), cgroup_available_bytes(proc_cgroup, root))
             if n is not None]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        mapped = _kb_fields("/proc/self/status").get("VmSize")
        if mapped is not None:
            found.append(max(0, soft - mapped))
    return min(found) if found else None


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2 ** 20:.1f} MiB"


def sizes(need: int, *others: int) -> list[str]:
    """``need`` and ``others`` for a refusal, in MiB where ``need`` and the last (what is
    available) would print alike ("needs 0.8 GiB ... and 0.8 GiB is available")."""
    numbers = (need, *others)
    if _size(need) != _size(numbers[-1]):
        return [_size(n) for n in numbers]
    return [f"{n / 2 ** 20:.0f} MiB" for n in numbers]


def step_new_bytes(compiled: Any) -> int:
    """Bytes one device's step allocates beyond its (already resident) arguments."""
    mem = compiled.memory_analysis()
    return max(0, mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes)


TRAINING_ADVICE = ("lower train.batch_size (or train.per_device_batch_size) or train.seq_len, "
                   "or recompute activations (model.remat='segments' for recurrent models, "
                   "'block' for transformers; `python -m lmscale.plan --config=... "
                   "--memory_gib=N` plans it); this config may be meant for GPUs")


def _checks_host() -> bool:
    """Whether this process's host is asked before a step or state is made: single-process
    CPU runs (accelerators name their own out-of-memory errors; the processes of a
    multi-process run may share one host, and one refusing alone would leave the others
    waiting in a collective)."""
    return jax.process_count() == 1 and jax.local_devices()[0].platform == "cpu"


STATE_ADVICE = ("use a smaller model (model.hidden, model.layers), or fewer CPU devices "
                "(parallel.cpu_devices=1: each device holds the whole state); this config may "
                "be meant for GPUs")


def check_state_fits_host(shapes: Any, devices: int, available: int | None = None, *,
                          temp_per_device: int = 0) -> None:
    """Raises ConfigError when a training state of ``shapes`` (``jax.ShapeDtypeStruct``s:
    parameters, optimizer moments, carry), held by each of this CPU host's ``devices`` (whole,
    but for the carry's rows, split among them), is larger than the memory available, before
    any of it is allocated. Without it a state too large for ``ulimit -v`` failed in JAX's
    initialization with a traceback, or hung (an allocation that failed in an asynchronous
    computation never completed, and SIGTERM waited on it). ``temp_per_device``: the
    temporaries of the program that computes the state, once compiled (random bits, casts:
    the 8192-d mLSTM's 7.6 GiB state peaked at 16.5 GiB while computed). Single-process CPU
    runs only, as :func:`check_step_fits_host`."""
    if not _checks_host():
        return
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    carry = size(getattr(shapes, "carry", ()))
    per_device = size(shapes) - carry + -(-carry // devices) + temp_per_device
    available = available_host_bytes() if available is None else available
    need = per_device * devices
    if available is not None and need > available:
        need_s, per_device_s, available_s = sizes(need, per_device, available)
        raise ConfigError(
            f"the model's training state (parameters, optimizer moments, carry"
            f"{', and the temporaries that compute it' if temp_per_device else ''}: "
            f"{per_device_s} on each of {devices} CPU devices) needs {need_s} of this host's "
            f"memory and "
            f"{available_s} is available: {STATE_ADVICE}")


CPU_CORE_FLOP_PER_S = 1e11  # a step's rate a core reaches at best (XLA:CPU's float32 matmuls)
SLOW_STEP_S = 30  # a CPU step estimated longer than this is said before the first one


def slow_cpu_step_note(flops_per_step: float, log_every: int, progress_bar: bool
                       ) -> str | None:
    """A note before the first step where one step would take minutes on this CPU host (a
    GPU config: configs/mlstm4096.py is 17 TFLOP a step): without it the run printed nothing
    for hours, its lines coming every ``train.log_every`` steps in a log. None elsewhere."""
    if not _checks_host():
        return None
    cores = usable_cores()
    seconds = flops_per_step / (CPU_CORE_FLOP_PER_S * cores)
    if seconds < SLOW_STEP_S:
        return None
    lines = "" if progress_bar else (f"; in a log its lines come every train.log_every="
                                     f"{log_every} steps")
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
    return (f"note: a training step is {flops_per_step / 1e12:.1f} TFLOP: on this host's "
            f"{cores} CPU core(s), at best ~{took} a step (this config may be meant for "
            f"GPUs){lines}")


def refuse_jax_debugging(what: str, compute: str) -> None:
    """ConfigError for the JAX debugging settings training's programs cannot run under:
    JAX_DISABLE_JIT (``jax_disable_jit``) — training compiles its programs ahead of time (to
    check they fit), which JAX refuses without jit ("Disable jit is not supported in the AOT
    path"), and its steps run op by op would take hours; JAX_DEBUG_NANS / JAX_DEBUG_INFS in
    float16 ``compute`` — dynamic loss scaling finds its scale by overflowing (from 2**32
    down, each step whose gradients are not finite skipped), and JAX stopped the first step
    with a FloatingPointError traceback."""
    if jax.config.jax_disable_jit:
        raise ConfigError(f"JAX_DISABLE_JIT is set (jax_disable_jit): {what} compiles its "
                          f"programs and does not run without jit; unset it (to debug, "
                          f"JAX_DEBUG_NANS=1 or jax.debug.print work under jit)")
    set_ = [name for name, on in (("JAX_DEBUG_NANS", jax.config.jax_debug_nans),
                                  ("JAX_DEBUG_INFS", jax.config.jax_debug_infs)) if on]
    if set_ and compute == "float16":
        raise ConfigError(f"{' and '.join(set_)} is set: {what} in float16 overflows on purpose "
                          f"(dynamic loss scaling skips the steps whose gradients are not "
                          f"finite), which JAX stops at; debug in bfloat16 or float32 "
                          f"(--config.precision.compute=bfloat16), or unset it")


def check_step_fits_host(step: Callable[..., Any], args: tuple[Any, ...],
                         available: int | None = None, *, what: str = "the training step",
                         advice: str = TRAINING_ADVICE, compiled: Any = None) -> None:
    """Raises ConfigError when the jitted ``step`` on ``args`` (its first call's arguments)
    would allocate more than this CPU host has available; does nothing on accelerators and in
    multi-process runs.

    ``available`` None: ``available_host_bytes()`` after the compile. ``what`` names
    the step in the error and ``advice`` says what to lower (fine-tuning has its own).
    ``compiled``: ``step`` already compiled for ``args`` (not compiled again)."""
    if not _checks_host():
        return
    # Arguments' devices: the mesh may use fewer of this host's devices than it has.
    devices = len({d for leaf in jax.tree.leaves(args) if isinstance(leaf, jax.Array)
                   for d in leaf.sharding.device_set}) or 1
    per_device = step_new_bytes(compiled or step.lower(*args).compile())
    # Read after the compile: what the compiler keeps resident (0.2-0.3 GiB measured for
    # small models on a 2-core host) is not available to the step's temporaries.
    available = available_host_bytes() if available is None else available
    if available is None:
        return
    need = per_device * devices
    if need > available:
        need_s, per_device_s, available_s = sizes(need, per_device, available)
        raise ConfigError(
            f"{what} needs {need_s} of this host's memory beyond the "
            f"model's state ({per_device_s} on each of {devices} CPU "
            f"devices, from the compiled step's memory analysis) and {available_s} "
            f"is available: {advice}")
