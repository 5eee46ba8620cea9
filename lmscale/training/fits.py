"""Whether the compiled training step fits this CPU host's memory, asked before it runs.

Why: a GPU-sized config started on a CPU host (say ``configs/mlstm4096_8gpu.py`` on a laptop)
compiles, then asks the operating system for tens of GiB of temporaries on its first step; on
Linux ``malloc`` promises them and the kernel's OOM killer ends the process later with a bare
"Killed" (or the machine swaps for an hour). The compiled program's own memory analysis knows
the size beforehand: the step is compiled ahead of time (the jitted call then reuses that
executable: nothing is compiled twice) and its new memory (temporaries and outputs, less what
the donated state's buffers take back) times this host's devices is compared with the memory
the kernel says is available. Accelerators report their own out-of-memory errors by name, so
only CPU hosts are checked, and only single-process runs (processes of a multi-process CPU run
may share one host's memory, and one process refusing alone would leave the others waiting
in the step's all-reduce).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from lmscale.config import ConfigError

GiB = 1024 ** 3
MEMINFO = "/proc/meminfo"


def available_host_bytes(path: str | None = None, swap: bool = True) -> int | None:
    """MemAvailable + SwapFree (``swap``; else MemAvailable alone) of this Linux host in bytes
    (None where not readable).

    ``path`` None: ``MEMINFO``."""
    fields: dict[str, int] = {}
    try:
        with open(MEMINFO if path is None else path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key] = int(parts[0]) * 1024  # kB
    except OSError:
        return None
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + (fields.get("SwapFree", 0) if swap else 0)


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2 ** 20:.1f} MiB"


def step_new_bytes(compiled: Any) -> int:
    """Bytes one device's step allocates beyond its (already resident) arguments."""
    mem = compiled.memory_analysis()
    return max(0, mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes)


TRAINING_ADVICE = ("lower train.batch_size (or train.per_device_batch_size) or train.seq_len, "
                   "or recompute activations (model.remat='segments' for recurrent models, "
                   "'block' for transformers; `python -m lmscale.plan --config=... "
                   "--memory_gib=N` plans it); this config may be meant for GPUs")


def check_step_fits_host(step: Callable[..., Any], args: tuple[Any, ...],
                         available: int | None = None, *, what: str = "the training step",
                         advice: str = TRAINING_ADVICE) -> None:
    """Raises ConfigError when the jitted ``step`` on ``args`` (its first call's arguments)
    would allocate more than this CPU host has available; does nothing on accelerators and in
    multi-process runs.

    ``available`` None: read from /proc/meminfo (MemAvailable + SwapFree). ``what`` names
    the step in the error and ``advice`` says what to lower (fine-tuning has its own)."""
    if jax.process_count() > 1 or jax.local_devices()[0].platform != "cpu":
        return
    available = available_host_bytes() if available is None else available
    if available is None:
        return
    # Arguments' devices: the mesh may use fewer of this host's devices than it has.
    devices = len({d for leaf in jax.tree.leaves(args) if isinstance(leaf, jax.Array)
                   for d in leaf.sharding.device_set}) or 1
    per_device = step_new_bytes(step.lower(*args).compile())
    need = per_device * devices
    if need > available:
        raise ConfigError(
            f"{what} needs {_size(need)} of this host's memory beyond the "
            f"model's state ({_size(per_device)} on each of {devices} CPU "
            f"devices, from the compiled step's memory analysis) and {_size(available)} "
            f"is available: {advice}")
