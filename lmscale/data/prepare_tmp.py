"""A prepare's temporary folder, OUTPUT.tmp-HOST-PID, renamed to OUTPUT when complete; the
removal of those a killed prepare of this machine left; the output's folders (prepare.py)."""

from __future__ import annotations

import errno
import os
import sys

from lmscale import atomic
from lmscale.data.errors import DataError

def remove_abandoned(output: str) -> None:
    """Removes the OUTPUT.tmp-HOST-PID folders of this machine's prepares that were killed
    (their process is gone: a SIGKILL leaves up to a few times the input's size there), and
    restores or removes an old OUTPUT a killed ``--overwrite`` had moved aside (atomic.py);
    a folder of an older lmscale, which did not name its machine, is only named."""
    parent, name = os.path.split(os.path.abspath(output))
    for entry in os.listdir(parent or ".") if os.path.isdir(parent or ".") else []:
        if entry.startswith(f"{name}.tmp-") and entry[len(name) + 5:].isdigit():  # before hosts
            print(f"note: {os.path.join(parent, entry)} may be left by a killed prepare (of an "
                  f"older lmscale, which did not name its machine): remove it if no prepare is "
                  f"writing it", file=sys.stderr, flush=True)
    atomic.remove_abandoned(output, "a prepare")


def temporary_folder(output: str) -> str:
    """This process's temporary folder for ``output``."""
    return atomic.temporary_name(output)


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
