"""A prepare's temporary folder, OUTPUT.tmp-HOST-PID, renamed to OUTPUT when complete; the
removal of those a killed prepare of this machine left; the output's folders (prepare.py)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys

from lmscale.data.errors import DataError

# The machine in a prepare's temporary folder's name: only this machine's processes can be
# told dead (a shared filesystem may hold another machine's live prepare).
HOST = socket.gethostname().replace(os.sep, "_") or "host"


def remove_abandoned(output: str) -> None:
    """Removes the OUTPUT.tmp-HOST-PID folders of this machine's prepares that were killed
    (their process is gone): a SIGKILL leaves up to a few times the input's size there."""
    parent, name = os.path.split(os.path.abspath(output))
    prefix = f"{name}.tmp-{HOST}-"
    for entry in os.listdir(parent or ".") if os.path.isdir(parent or ".") else []:
        if entry.startswith(f"{name}.tmp-") and entry[len(name) + 5:].isdigit():  # before hosts
            print(f"note: {os.path.join(parent, entry)} may be left by a killed prepare (of an "
                  f"older lmscale, which did not name its machine): remove it if no prepare is "
                  f"writing it", file=sys.stderr, flush=True)
        if not entry.startswith(prefix) or not entry[len(prefix):].isdigit():
            continue
        try:
            os.kill(int(entry[len(prefix):]), 0)
            continue  # a prepare still running (or a pid reused: left alone)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        folder = os.path.join(parent, entry)
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            print(f"note: removed {folder}, left by a prepare that was killed", file=sys.stderr,
                  flush=True)


def temporary_folder(output: str) -> str:
    """This process's temporary folder for ``output``."""
    return f"{output}.tmp-{HOST}-{os.getpid()}"


def make_output_folder(path: str, output: str) -> None:
    """``os.makedirs`` for ``output``, a failure one DataError naming the folder (was a traceback)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a file where a folder should be; a read-only or forbidden folder
        from lmscale.cli import nearest_existing
        blocked = nearest_existing(os.fspath(e.filename))  # the file in the way
        where = (f"{blocked} is a file, not a folder" if e.errno in (errno.EEXIST, errno.ENOTDIR)
                 else f"{blocked} cannot be written ({e.strerror})"
                 if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else f"{e.filename}: {e.strerror}")
        raise DataError(f"cannot make the output {output}: {where}") from None
