"""Stopping on SIGTERM/SIGINT at a step every process agrees on.

One process stops at the next step boundary after the signal. In a multi-process run the
signal reaches the processes at different moments (or only some of them); a process that
stopped on its own would enter the checkpoint's barrier while the others wait in the next
step's all-reduce, and the run would hang with no checkpoint. So the processes agree: every
``every`` steps each contributes its local flag to one tiny all-gather (the same steps in
every process, so the collectives line up), and all of them stop at the first such step
where any flag is set. Then all save the same step's checkpoint and exit 0.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np


class StopSignal:
    """Set by SIGTERM/SIGINT; ``should_stop(step)`` says whether to stop at this step boundary.

    A second signal raises KeyboardInterrupt at once (no checkpoint).
    """

    def __init__(self, every: int = 10, processes: int | None = None) -> None:
        self.signal: int | None = None  # the signal this process received
        self.stopping = False  # agreed: every process stops at this step boundary
        self.every = max(int(every), 1)
        self.processes = jax.process_count() if processes is None else processes
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        """Restores the previous handlers, except that after an agreed stop that SIGINT did not
        cause, a default SIGTERM becomes ignored: a scheduler signals every process of a run,
        some after they agreed to stop and saved, and such a late signal must not turn the
        clean stop into exit status -15 while the process closes its files and exits. (A
        notebook's stop by its interrupt button keeps SIGTERM as it was.)"""
        for sig, handler in self._previous.items():
            if (sig == signal.SIGTERM and handler == signal.SIG_DFL and self.stopping
                    and self.signal != signal.SIGINT):
                handler = signal.SIG_IGN
            signal.signal(sig, handler)

    def should_stop(self, step: int) -> bool:
        """One process: whether a signal came. Many: at every ``every``-th step, whether any
        process got one (a collective; all processes must call this at the same steps)."""
        if self.processes == 1:
            self.stopping = self.signal is not None
        elif step % self.every == 0:
            self.stopping = agreed_any(self.signal is not None)
        return self.stopping


def agreed_any(flag: bool) -> bool:
    """Whether ``flag`` is set in any process (an all-gather of one int32 per process)."""
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(int(flag), np.int32))
    return bool(np.max(np.asarray(flags)))
