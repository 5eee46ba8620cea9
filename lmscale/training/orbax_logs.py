"""What orbax logs, made into what a user needs: a failed background save kept for
``Checkpointer.check`` and said in one line (a full disk, a folder this process cannot write),
a reader's listing of a run still training kept quiet, errors shortened to one line."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

_NO_SPACE = "No space left on device"  # strerror(ENOSPC), in orbax's/tensorstore's messages
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # a save in progress writes below STEP + this
BACKGROUND_FAILURES: list[tuple[str, BaseException]] = []  # this process's failed background saves (orbax's log record, its error)


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that found no space left."""
    return getattr(error, "errno", None) == errno.ENOSPC or _NO_SPACE in str(error)


def failed_write(error: BaseException) -> bool:
    """Whether a save's ``error`` is a write that failed (an OSError, a full disk, or
    tensorstore's error naming a save folder in progress), not weights orbax cannot save."""
    return isinstance(error, OSError) or disk_full(error) or _TMP_SUFFIX in str(error)


class DiskFullLogs(logging.Filter):
    """Orbax logs a failed save from each of its threads (a page of tracebacks), and the run
    stops at its next train record (several processes: at the next save; ``Checkpointer.check``
    says it in one line). Those logs become one line at once: a disk that is full, or a save
    folder this process cannot write (a host whose mount of a shared workdir is read-only)."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        full = _NO_SPACE in message or bool(error and disk_full(error))
        unwritable = isinstance(error, (OSError, ValueError)) and _TMP_SUFFIX in str(error)
        if error is not None and "in background save thread" in message:
            # orbax raises it once, from the wait of a thread that, with several processes,
            # may never end (``Checkpointer._previous_finished``): kept for ``check``
            BACKGROUND_FAILURES.append((message, error))
            del BACKGROUND_FAILURES[:-16]  # another folder's are never taken: kept few
        if DiskFullLogs.said and "after interpreter shutdown" in f"{message} {error}":
            return False  # the abandoned save's other threads, failing as Python exits
        if not (full or unwritable):
            return True
        if not DiskFullLogs.said:
            DiskFullLogs.said = True
            why = "the disk is full" if full else short_error(error)
            print(f"warning: a checkpoint could not be written: {why} (the run stops soon, "
                  f"naming the latest complete checkpoint)", file=sys.stderr,
                  flush=True)
        return False


def _install_once(kind: type[logging.Filter], name: str = "absl") -> None:
    """A filter of class ``kind`` on the logger ``name`` (absl's: orbax logs through it),
    once a process."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def filter_disk_full_logs() -> None:
    """Installs ``DiskFullLogs`` (by the first Checkpointer), also on asyncio's logger: the
    write tasks of a failed save whose errors orbax never collected were each logged at exit,
    "Task exception was never retrieved" and a traceback, after the run's one-line error."""
    _install_once(DiskFullLogs)
    _install_once(DiskFullLogs, "asyncio")


class _LiveRunListings(logging.Filter):
    """A reader (``read_only``) of a run still training lists step folders that the run is
    deleting or finishing: orbax logged "Metadata file does not exist" for each (55 lines in
    400 loads of a training run's LM). Dropped for a folder while a reader lists it."""

    directories: list[str] = []  # the folders being listed (two readers: listed twice)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Metadata file does not exist"):
            return True
        path = message.split(": ", 1)[-1]
        return not any(path.startswith(d + os.sep) for d in self.directories)


@contextlib.contextmanager
def listing_quietly(directory: str, read_only: bool) -> Iterator[None]:
    """Around a reader's listing of ``directory`` (``_LiveRunListings``)."""
    if not read_only:
        yield
        return
    _install_once(_LiveRunListings)
    _LiveRunListings.directories.append(directory)
    try:
        yield
    finally:
        _LiveRunListings.directories.remove(directory)


# Where tensorstore's spec (a page of JSON) begins in an error's text: older orbax appends it
# as " [tensorstore_spec ...]"; newer orbax ends its "Encountered error while reading array
# index: (slices...)" with ". See full TensorStore details: <bound method pybind11...spec of
# TensorStore({...". The cause (e.g. "... Truncated Zstd-compressed stream") is the chained
# exception that orbax raised it from.
_SPEC = re.compile(r" \[tensorstore_spec|\.? See full TensorStore details")


def short_error(error: BaseException) -> str:
    """An exception as one short line: without tensorstore's spec, and where orbax wrapped the
    real error in a message that only says which slice of an array failed, that error."""
    text = " ".join(str(error).split()) or type(error).__name__
    head, *spec = _SPEC.split(text, maxsplit=1)
    if spec:
        cause = error.__cause__ or error.__context__
        if "while reading array index" in head and cause is not None and cause is not error:
            return short_error(cause)
        text = head
    # a long quoted path shortened, not the line's end: its cause ("File name too long")
    text = re.sub(r'"([^"]{80,})"', lambda m: f'"{m[1][:30]}...{m[1][-40:]}"', text)
    return text if len(text) < 300 else text[:297] + "..."


def tmp_cleanup_finished(manager: Any) -> None:
    """Waits for ``manager``'s removal of a crashed save's temporary folders: orbax >= 0.12
    runs it in a thread of its own and waits for it only at the first save, so a run that
    failed before (bad data, a refused resume) exited while it ran, and its "cannot schedule
    new futures after interpreter shutdown" traceback followed the one-line error. Waiting
    costs a listing."""
    pending = getattr(manager, "_cleanup_tmp_directory_future", None)
    if pending is not None:
        pending.result()
