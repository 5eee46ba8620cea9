"""A training tool's signals while it starts (stdlib only: installed before the imports).

From the interpreter's start until ``training.stop.cli_signals`` takes over (imports, flags:
about 0.3-0.8 s, once more after a re-exec for huge pages) a SIGTERM killed the process
silently with status 143; a launch script's SIGINT was ignored when the process was started
in the background. Here either ends it with one line: nothing has started that a checkpoint
would keep (SIGTERM: exit 0, as a scheduler's stop; SIGINT: 130).
"""

from __future__ import annotations

import os
import signal
from typing import Any


def _starting(signum: int, frame: Any) -> None:
    os.write(2, f"stopped by signal {signum} while starting: nothing to save (re-run to "
                f"start or resume)\n".encode())
    os._exit(0 if signum == signal.SIGTERM else 130)


def stop_quietly_while_starting() -> None:
    """Installs the start-up handler for SIGTERM and SIGINT (call first in ``__main__``)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _starting)
