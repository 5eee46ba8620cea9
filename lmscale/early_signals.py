"""A training tool's signals while it starts (stdlib only: installed before the imports).

From the interpreter's start until ``training.stop.cli_signals`` takes over (imports, flags:
about 0.3-0.8 s, once more after a re-exec for huge pages) a SIGTERM killed the process
silently with status 143; a launch script's SIGINT was ignored when the process was started
in the background. Here either ends it with one line: nothing has started that a checkpoint
would keep (SIGTERM, SIGHUP, SIGUSR1: exit 0, as a scheduler's stop; SIGINT: 130).
"""

from __future__ import annotations

import os
import signal
from typing import Any


def _starting(signum: int, frame: Any) -> None:
    os.write(2, f"stopped by signal {signum} while starting: nothing to save (re-run to "
                f"start or resume)\n".encode())
    os._exit(130 if signum == signal.SIGINT else 0)


# Requests to stop at the next step boundary with a checkpoint: SIGTERM, and as it SIGHUP (the
# terminal closed, an ssh session dropped) and SIGUSR1 (Slurm's ``--signal=USR1@T``), which
# killed the process by their default action with no checkpoint.
REQUEST_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def taken_signals() -> tuple[int, ...]:
    """The signals a tool handles: REQUEST_SIGNALS and SIGINT, but SIGHUP and SIGUSR1 left
    ignored where the process started ignoring them (``nohup``: the run outlives its
    terminal, as asked; the handlers installed here keep that, being taken only then)."""
    return tuple(s for s in (*REQUEST_SIGNALS, signal.SIGINT)
                 if s in (signal.SIGTERM, signal.SIGINT) or signal.getsignal(s) != signal.SIG_IGN)


def stop_quietly_while_starting() -> None:
    """Installs the start-up handler for :func:`taken_signals` (call first in ``__main__``)."""
    for sig in taken_signals():
        signal.signal(sig, _starting)
