"""A long Python session's compiled programs kept below the kernel's limit on memory maps.

Every program XLA:CPU compiles is loaded as machine code in memory maps of its own (code,
read-only data, data: three for each kernel), and JAX keeps a program while its function may
be called again. A notebook that trains, loads and featurizes one small LM after another
gained ~120-160 maps an experiment (7,883 after 60, measured), never freed; Linux's default
limit (``vm.max_map_count``) is 65,530. Past it an ``mmap`` fails and jaxlib does not check:
XLA's compiler, or JAX's compilation-cache write, dies of SIGSEGV — a notebook's kernel lost
with no word why (reproduced by holding 64.5 k maps before a compile). So each run or load
the Python API starts (``train``, ``finetune``, ``run_transfer``, ``load_lm``,
``load_classifier``) first drops JAX's caches of compiled programs where the process holds
more than half the limit: the programs of earlier experiments are freed, and any still used
compile again (read back from the compilation cache where it is on). A tool's process never
comes near it.
"""

from __future__ import annotations

import gc
import sys

DEFAULT_MAX_MAP_COUNT = 65530  # Linux's vm.max_map_count unless the system sets another


def max_map_count(path: str = "/proc/sys/vm/max_map_count") -> int:
    """The kernel's limit on a process's memory maps (Linux's default where it cannot be read)."""
    try:
        with open(path) as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return DEFAULT_MAX_MAP_COUNT


def memory_maps(path: str = "/proc/self/maps") -> int:
    """How many memory maps this process holds (0 where the system does not say)."""
    try:
        with open(path, "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def release_compiled_programs(limit: int) -> int:
    """Drops JAX's caches of compiled programs where this process holds more than ``limit``
    memory maps; returns the maps it held then (0: nothing done)."""
    held = memory_maps() if "jax" in sys.modules else 0
    if held <= limit:
        return 0
    sys.modules["jax"].clear_caches()
    gc.collect()  # the programs of finished runs' functions, which cycles may still hold
    return held


def release_near_map_limit(say: bool = True) -> None:
    """release_compiled_programs past half the kernel's limit, saying so on stderr (``say``)."""
    limit = max_map_count()
    held = release_compiled_programs(limit // 2)
    if held and say:
        print(f"note: this process held {held:,} memory maps, more than half the kernel's "
              f"limit (vm.max_map_count = {limit:,}), past which XLA crashes; most are "
              f"compiled programs: JAX's caches of them were cleared, and programs still in "
              f"use compile again", file=sys.stderr)
