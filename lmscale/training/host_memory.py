"""Transparent huge pages for the step's buffers on Linux CPU hosts (glibc's malloc).

Why: XLA:CPU allocates a compiled step's temporaries afresh on every run (~200 MB per
device for the 1024-unit mLSTM at 64 x 64). glibc serves allocations that large with fresh
``mmap``s, so every 4 KiB page faults on its first touch: ~1.4 M page faults per 10 steps
there. glibc >= 2.35 can advise the kernel to back its mappings with 2 MiB pages (tunable
``glibc.malloc.hugetlb=1``), which takes the faults down 10x and the 1024-unit step from
958–997 ms to 840–900 ms on the 2-core CI machine (benchmarks/README.md, issue 11).

The tunable is read when the process starts, so a command-line tool started without it
re-executes itself, once, with it added to ``GLIBC_TUNABLES`` (same interpreter, arguments
and process id) before it imports JAX. Nothing happens where it would change nothing: the
kernel's THP mode is not ``madvise`` (``always`` backs large mappings anyway, ``never``
refuses), the C library is not glibc >= 2.35, an accelerator runs the step, or the user
set ``glibc.malloc.hugetlb`` (``=0`` turns this off), or the config does
(``parallel.cpu_huge_pages=False``).
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from typing import Mapping

from lmscale.early_signals import taken_signals

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
TUNABLE = "glibc.malloc.hugetlb"


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the glibc this interpreter runs on, or None for another C library."""
    name, version = platform.libc_ver()
    parts = version.split(".")
    if name != "glibc" or len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def huge_pages_on(env: Mapping[str, str]) -> bool:
    """Whether this process's malloc was started with huge pages (the tunable set to 1)."""
    return f"{TUNABLE}=1" in env.get("GLIBC_TUNABLES", "").split(":")


def huge_pages_environment(env: Mapping[str, str], mode: str | None,
                           glibc: tuple[int, int] | None) -> dict[str, str] | None:
    """The environment to restart with so that malloc uses huge pages, or None when a restart
    would change nothing (see the module doc)."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or mode != "madvise" or glibc is None or glibc < (2, 35):
        return None
    new = dict(env)
    new["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return new


def restart_with_huge_pages(enabled: bool, *, entry: bool) -> None:
    """Re-executes this program with huge pages for malloc where that applies (module doc).

    ``entry``: whether the caller is the program's entry point (``__name__ == "__main__"``);
    a tool's ``main`` called from a notebook or a test never restarts its process.
    """
    if not enabled or not entry:
        return
    from lmscale.training.host_devices import cpu_runs_the_step
    if not cpu_runs_the_step(os.environ):
        return
    env = huge_pages_environment(os.environ, thp_mode(), glibc_version())
    if env is None:
        if huge_pages_on(os.environ):  # restarted: a signal held through the exec is taken now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, taken_signals())
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # A signal that came while execve replaced the program was lost (its handler would have
    # run at the next bytecode: the run went on as if it never came), or ended the new
    # program before its handlers were in (exit 143). Blocked, it stays pending through the
    # exec until the restarted program takes it, above; one that came before is taken here.
    held = taken_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    finally:  # not restarted
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
