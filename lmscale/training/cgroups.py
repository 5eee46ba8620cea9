"""The folders of this process's cgroups that hold a controller's files (v1 and v2), its own
first, then each ancestor's: containers, Slurm jobs and systemd units limit memory and CPU
there, while /proc/meminfo and the CPU affinity show the whole machine. In a container the
path /proc/self/cgroup names is the host's, and the namespace's own cgroup is the mount's
root: every ancestor is tried, down to the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_folders(controller: str, proc_cgroup: str = PROC_CGROUP, root: str = CGROUP_ROOT
                   ) -> Iterator[tuple[str, bool]]:
    """(folder, whether it is cgroup v2) of each of this process's cgroups that may hold
    ``controller``'s files ("memory", "cpu"): v2's unified hierarchy under ``root``, v1's
    under ``root/<controller>`` or ``root/<its mount's name>`` (``cpu,cpuacct``); nothing
    where ``proc_cgroup`` cannot be read."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            bases, v2 = [root], True
        elif controller in controllers.split(","):
            bases, v2 = [os.path.join(root, controller), os.path.join(root, controllers)], False
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for base in dict.fromkeys(bases):
            for i in range(len(parts), -1, -1):
                yield os.path.join(base, *parts[:i]), v2


def cgroup_ints(path: str) -> list[int] | None:
    """The whitespace-separated non-negative integers of a cgroup file; None if unreadable or
    any word is not one ("max", "-1": no limit)."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    return [int(w) for w in words] if words and all(w.isdigit() for w in words) else None
