"""One writer per workdir: a second training or fine-tuning process on the same folder is
refused instead of interleaving checkpoints and metrics with the first.

The lock is an exclusive ``flock`` on ``WORKDIR/.lock`` held by process 0 of a run (the
processes of one multi-host run share the workdir) for the run's lifetime. The kernel drops
it when the holder exits, however it exits (``kill -9`` included), so a crashed run never
leaves the workdir locked. Filesystems without ``flock`` (some network mounts) are not
locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from typing import IO, Iterator

import jax
import numpy as np

from lmscale.atomic import HOST, absolute_path
from lmscale.training.checkpoints import CheckpointError

LOCK_FILE = ".lock"
# The longest path a run writes below its workdir, with room for longer steps and process
# numbers: an orbax save's file, checkpoints/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/
# ocdbt.process_0/d/<32 hex digits> (112 bytes), beyond PATH_MAX failed the first save, the
# steps before it lost.
DEEPEST_FILE = 160
PATH_MAX = 4096  # Linux's longest path, in bytes


class WorkdirInUseError(CheckpointError):
    """Another process is training in this workdir."""


def make_workdir(workdir: str) -> None:
    """Makes ``workdir`` (and its parents) if needed; a one-line ``CheckpointError`` when it
    cannot be a run's folder: empty, a file, or not creatable (a read-only place, a parent
    that is a file)."""
    if not str(workdir).strip():
        raise CheckpointError("the workdir is empty: name a folder for the run (--workdir=DIR)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise CheckpointError(f"the workdir {workdir} is a file, not a folder")
    length = len(os.fsencode(absolute_path(workdir)))
    if length + DEEPEST_FILE >= PATH_MAX:
        raise CheckpointError(f"the workdir's path is {length} bytes long and a checkpoint's "
                              f"files lie up to {DEEPEST_FILE} bytes below it, past the "
                              f"{PATH_MAX} bytes a path may have (PATH_MAX): use a shorter "
                              f"path (the workdir: {workdir})")
    from lmscale.cli import refuse_links_out
    # commands.log, metrics.jsonl, config.json...: a link out would be written through
    refuse_links_out(workdir, error=CheckpointError)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot make the workdir {workdir}: {e.strerror or e} (is every "
                              f"folder above it a folder, and writable?)") from None


def hold_workdir(workdir: str) -> IO[str] | None:
    """Locks ``workdir`` for this process (process 0; others get None) until the returned file
    is closed or the process exits; ``WorkdirInUseError`` naming the holder's pid if taken."""
    if jax.process_index() != 0:
        return None
    path = os.path.join(workdir, LOCK_FILE)
    try:
        f = open(path, "a+")
    except OSError as e:
        raise CheckpointError(f"cannot write in the workdir {workdir}: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        # a run of this very process (another thread's train(), a notebook's) is no other's
        who = ("another run in this process" if holder == f"{os.getpid()} on {HOST}"
               else "another lmscale process")
        raise WorkdirInUseError(
            f"{workdir} is in use by {who} (pid {holder}): wait for it to "
            f"finish or stop it, or use another --workdir (the lock is the kernel's, released "
            f"when that process exits however it exits: removing {path} lets two runs write "
            f"the workdir at once)") from None
    except OSError:  # no flock on this filesystem: run unlocked
        return f
    try:  # unbuffered: a full disk fails here, naming the file (a write's error names none)
        os.ftruncate(f.fileno(), 0)
        # the machine too: on a shared filesystem the holder may be another machine's process
        os.pwrite(f.fileno(), f"{os.getpid()} on {HOST}".encode(), 0)
    except OSError as e:
        f.close()
        raise OSError(e.errno, e.strerror, path) from None
    return f


@contextlib.contextmanager
def locked_workdir(workdir: str) -> Iterator[None]:
    """Makes ``workdir`` if needed and holds its lock for the ``with`` block (released however
    the block ends: an exception kept in a notebook would hold it). A folder this call made
    that holds nothing but the lock when the block raises is removed: a run refused at its
    start (a missing data file) left an empty workdir behind."""
    created = not os.path.exists(workdir)
    make_workdir(workdir)
    lock, refused = None, None
    try:
        lock = hold_workdir(workdir)
    except (WorkdirInUseError, CheckpointError, OSError) as e:  # e.g. a full disk: the other
        refused = e  # processes learn it below (they waited in a collective for minutes)
        if created and jax.process_index() == 0 and set(os.listdir(workdir)) <= {LOCK_FILE}:
            shutil.rmtree(workdir, ignore_errors=True)
    try:
        if jax.process_count() > 1:
            _agree_on_workdir(workdir, refused)
        elif refused is not None:
            raise refused
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    try:
        yield
    except BaseException:
        if created and jax.process_index() == 0 and set(os.listdir(workdir)) <= {LOCK_FILE}:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.close()


def _agree_on_workdir(workdir: str, refused: Exception | None) -> None:
    """Multi-process runs: every process learns whether process 0 got the lock (the others
    waited on a collective until a Gloo timeout when it did not), and that every process sees
    the same folder (process 0's lock file): a workdir on host-local disks hung at the first
    checkpoint for 10 minutes."""
    from jax.experimental import multihost_utils

    from lmscale.distributed import process_0_says
    if not process_0_says(refused is None):
        if refused is not None:
            raise refused
        raise WorkdirInUseError(f"process 0 refused {workdir}: it is in use by another lmscale "
                                f"process, or cannot be written (see process 0's error)")
    path, sees = os.path.join(workdir, LOCK_FILE), True
    if jax.process_index() != 0:
        deadline = time.monotonic() + 10.0  # a network filesystem may show a new file late
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.2)
        sees = os.path.exists(path)
    blind = np.flatnonzero(np.asarray(multihost_utils.process_allgather(np.int32(sees))) == 0)
    if len(blind):
        raise not_shared_error(workdir, blind.tolist(), jax.process_index())


def not_shared_error(workdir: str, blind: list[int], me: int) -> CheckpointError:
    """The error of process ``me`` when processes ``blind`` do not see the lock file process 0
    made in its workdir: ``workdir`` is this process's, which is process 0's own folder only on
    process 0 (elsewhere it may be another folder, or the same name on another disk)."""
    path = os.path.join(workdir, LOCK_FILE)
    if me == 0:
        where = f"process 0's {path}"
    else:
        where = (f"process 0's lock file (this process, {me}, "
                 f"{'looked for it as' if me in blind else 'sees it as'} {path}, in the "
                 f"--workdir it was given)")
    return CheckpointError(
        f"{workdir} is not one folder for all processes: process(es) {blind} do not see "
        f"{where}; give every process the same --workdir, on a filesystem shared by all "
        f"processes")
