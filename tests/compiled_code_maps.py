"""A test process's compiled programs kept below the kernel's limit on memory maps.

Every program XLA:CPU compiles is loaded as machine code in memory maps of its own (code, read-
only data, data: three each, per kernel), and JAX keeps each program while its function may be
called again. A test process that ran a few hundred test files held 40-48 k maps (measured:
both xdist workers of the whole suite, 2026-12-07), near Linux's default limit of 65,530
(``vm.max_map_count``). Past it, an ``mmap`` fails, and jaxlib does not check: the next cache
write (``executable.serialize()`` in ``compilation_cache.put_executable_and_time``) died of
SIGSEGV, reproduced at once by holding 64.5 k maps before ``test_bfloat16_lm`` (a worker of
two CI runs died there, in ``test_lm.py`` and ``test_eval_rows.py``). So at the end of a test
file, a process that holds more than half the limit drops JAX's caches of compiled programs:
those of finished tests are then freed (4,662 maps to 583 after ``test_transformer.py``), and
a later test compiles its own again (read from the session's persistent cache).
"""

from __future__ import annotations

import gc
import sys

import pytest

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


def release_compiled_programs(limit: int) -> bool:
    """Drops JAX's caches of compiled programs where this process holds more than ``limit``
    memory maps; says whether it did."""
    if "jax" not in sys.modules or memory_maps() <= limit:
        return False
    sys.modules["jax"].clear_caches()
    gc.collect()  # the programs of finished tests' functions, which cycles may still hold
    return True


@pytest.hookimpl(trylast=True)  # after the runner's own, which tears down the file's fixtures
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """At the end of each test file: release_compiled_programs past half the kernel's limit."""
    if nextitem is None or nextitem.path != item.path:
        release_compiled_programs(max_map_count() // 2)
