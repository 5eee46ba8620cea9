"""One writer at a time into an output folder: the files a tool writes together (a transfer's
results.json, classifier pair and plots; generate's samples.json and heatmaps; classify's
predictions and their metrics) come from one run even when two runs name the same output.

Each file is already written atomically (``lmscale.atomic``); without this, two runs ending
together interleaved their files: results.json of one beside the classifier of the other.
The lock is an exclusive ``flock`` on the folder itself (no lock file is left beside the
user's files), taken only while the files are written, and waited for: the second run writes
after the first, and its files are the ones left, as when the runs follow each other. The
kernel drops it when its holder exits however it exits. Filesystems without ``flock`` on
folders (some network mounts) are written unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from typing import Iterator

# A wait this long is said (another run is writing, e.g. plotting, into the folder).
NOTE_AFTER_S = 2.0


@contextlib.contextmanager
def writing_into(folder: str, tool: str) -> Iterator[None]:
    """Holds ``folder``'s write lock for the ``with`` block (waiting for another holder,
    which ``tool``'s note names after ``NOTE_AFTER_S``); ``folder`` must exist."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:  # made by this run at its start: moved away since
        _still_there(-1, folder, tool)
        raise
    except OSError:  # not openable as a folder here: the writes themselves will say why
        yield
        return
    try:
        _lock(fd, folder, tool)
        _still_there(fd, folder, tool)
        yield
    finally:
        os.close(fd)  # releases the lock


def _still_there(fd: int, folder: str, tool: str) -> None:
    """A one-line error where ``folder`` was moved or removed since this run opened it: a
    ``lmscale.train --config.resume=false`` archives WORKDIR/transfer and generate/ (a transfer
    running meanwhile ended with "[Errno 2] No such file or directory: .../neuron_histogram.png"
    and left part of its files in archive/<time>/transfer)."""
    try:
        there = os.path.samestat(os.fstat(fd), os.stat(folder))
    except OSError:
        there = False
    if not there:
        from lmscale.cli import OutputError
        raise OutputError(f"{folder} was moved or removed while this {tool} ran (a training run "
                          f"started with --config.resume=false archives the previous run's "
                          f"outputs): nothing was written; re-run it")


def _lock(fd: int, folder: str, tool: str) -> None:
    """Takes the lock on ``fd``, noting once when another process holds it for long."""
    deadline, noted = time.monotonic() + NOTE_AFTER_S, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not noted and time.monotonic() > deadline:
                print(f"note: another {tool} is writing into {folder}; waiting for it to "
                      f"finish (its files are then replaced by this run's)", file=sys.stderr,
                      flush=True)
                noted = True
            time.sleep(0.05)
        except OSError:  # no flock here (some network filesystems): written unlocked
            return
