"""Huge pages for malloc on CPU hosts: a tool restarts itself once with glibc's tunable
(training/host_memory.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lmscale.training.host_memory import (glibc_version, huge_pages_environment, huge_pages_on,
                                          thp_mode)
from tests.conftest import REPO, tiny_train_command, write_corpus


def test_the_kernel_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert thp_mode(str(path)) == "always"
    assert thp_mode(str(tmp_path / "missing")) is None


def test_the_restart_environment_adds_the_tunable_only_where_it_changes_something():
    glibc = (2, 36)
    assert huge_pages_environment({}, "madvise", glibc)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    kept = huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"},
                                  "madvise", glibc)
    assert kept == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}
    assert huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", glibc) is None
    assert huge_pages_environment({}, "always", glibc) is None  # large mappings get them anyway
    assert huge_pages_environment({}, "never", glibc) is None
    assert huge_pages_environment({}, None, glibc) is None  # not Linux
    assert huge_pages_environment({}, "madvise", (2, 34)) is None  # no such tunable yet
    assert huge_pages_environment({}, "madvise", None) is None  # musl, macOS
    assert huge_pages_on(kept) and not huge_pages_on({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


_PROBE = """
import ctypes, os, sys
from lmscale.training.host_memory import restart_with_huge_pages
print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
restart_with_huge_pages(True, entry=sys.argv[1] == "entry")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
ctypes.memset(libc.malloc(size), 1, size)  # what XLA:CPU does with a step's temporaries
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print("huge_kb", int(huge[0].split()[1]))
"""


@pytest.mark.skipif(thp_mode() != "madvise" or (glibc_version() or (0, 0)) < (2, 35),
                    reason="needs Linux THP in madvise mode and glibc >= 2.35")
def test_an_entry_point_restarts_once_and_its_malloc_gets_huge_pages():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}

    def probe(*args: str) -> list[list[str]]:
        out = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        return [line.split() for line in out.splitlines()]

    first, second, huge = probe("entry")
    assert first[0] == second[0] == "run" and first[1] == second[1]  # same process, re-executed
    assert first[2:] == [] and second[2] == "glibc.malloc.hugetlb=1"
    assert int(huge[1]) >= 32 << 10  # most of the 64 MiB block sits on 2 MiB pages

    only, plain = probe("library")  # a main() called from a notebook or a test: no restart
    assert only[2:] == [] and int(plain[1]) == 0


@pytest.mark.skipif(thp_mode() != "madvise" or (glibc_version() or (0, 0)) < (2, 35)
                    or shutil.which("gdb") is None,
                    reason="needs Linux THP in madvise mode, glibc >= 2.35 and gdb")
def test_a_sigterm_as_the_trainer_restarts_itself_stops_it(tmp_path):
    """A SIGTERM that came while the trainer's execve replaced it (here: delivered at a
    breakpoint in libc's execve, under gdb) was lost, its handler waiting for the next
    bytecode: the run trained on to its end (or, in the kernel's part, exit 143). Held
    blocked through the exec, the restarted trainer takes it: one line, exit 0."""
    write_corpus(tmp_path / "corpus")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    command = tiny_train_command(tmp_path / "run", tmp_path / "corpus" / "doc0.txt",
                                 **{"train.steps": 30})
    out = subprocess.run(
        ["gdb", "-q", "-batch", "-nx", "-ex", "set startup-with-shell off",
         "-ex", "handle SIGTERM nostop noprint pass", "-ex", "set breakpoint pending on",
         "-ex", "break execve", "-ex", "run", "-ex", "delete", "-ex", "signal SIGTERM",
         "--args", *command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=300).stdout
    assert "is executing new program" in out  # it restarted, the signal on its way
    assert "stopped by signal 15 while starting" in out and "final val" not in out, out[-2000:]
