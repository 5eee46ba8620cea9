"""A ``resume=false`` start over a previous run: its files moved aside, not deleted.

Process 0 moves them to ``WORKDIR/archive/<time>/``; every process learns whether it could
(a failed move left the others at a barrier and process 0 in jax's shutdown barrier).
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from lmscale.training.resume import RUN_FILES


def _archive(workdir: str, names: tuple[str, ...], said: str) -> str | None:
    """Process 0's part of :func:`archive_previous_run`: the move; the folder, or None."""
    present = [name for name in names if os.path.exists(os.path.join(workdir, name))]
    if not present:
        return None
    stamp = os.path.join(workdir, "archive", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    target, n = stamp, 1
    while True:  # a folder of its own: two archives in one second must not merge
        try:
            os.mkdir(target)
            break
        except FileExistsError:
            n += 1
            target = f"{stamp}-{n}"
    for name in present:
        shutil.move(os.path.join(workdir, name), os.path.join(target, name))
    print(f"{said} {target}", file=sys.stderr, flush=True)
    return target


def archive_previous_run(workdir: str, names: tuple[str, ...] = RUN_FILES,
                         said: str = "resume=false: the previous run moved to") -> str | None:
    """Moves a previous run's files (``names``) to WORKDIR/archive/<time>/ (process 0, every
    process told whether it could); the folder, or None where there was nothing to move.
    ``said``: the note, the folder appended (its words before ":" say why, in an error)."""
    from lmscale.cli import OutputError
    from lmscale.distributed import process_0_does
    why = said.split(":")[0]

    def move() -> str | None:
        try:
            return _archive(workdir, names, said)
        except OSError as e:
            raise OutputError(f"cannot move the previous run in {workdir} to {workdir}/archive "
                              f"({why}): {e}") from None
    return process_0_does(move, lambda: OutputError(
        f"process 0 could not move the previous run in {workdir} to {workdir}/archive "
        f"({why}); see its error"), errors=(OutputError,))
