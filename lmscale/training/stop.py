"""Stopping on SIGTERM/SIGINT at a step every process agrees on.

One process stops at the next step boundary after the signal. In a multi-process run the
signal reaches the processes at different moments (or only some of them); a process that
stopped on its own would enter the checkpoint's barrier while the others wait in the next
step's all-reduce, and the run would hang with no checkpoint. So the processes agree: every
``every`` steps each contributes its local flag to one tiny all-gather (the same steps in
every process, so the collectives line up), and all of them stop at the first such step
where any flag is set. Then all save the same step's checkpoint and exit 0.

Repeated signals: a scheduler or launcher may signal every process of a job and the launch
script forward the same signal again, so a repeated SIGTERM is the same request; a second
SIGINT (Ctrl-C twice) stops at once, without a checkpoint. Outside the training steps (start-
up: joining processes, data, restore; and closing), the command-line tools' ``cli_signals``
ends the process with one line: nothing is in progress that a checkpoint would keep. (The
step's program compiles in the first step, inside them: a signal then stops after it, saved.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import tqdm

from lmscale.early_signals import REQUEST_SIGNALS, taken_signals


class StopSignal:
    """Set by SIGTERM/SIGINT, or by ``request`` (a ``threading.Event`` another thread sets: a
    run in a server's or notebook's background thread takes no signal); ``should_stop(step)``
    says whether to stop at this step boundary.

    A SIGINT after the first signal raises KeyboardInterrupt at once (no checkpoint); a
    repeated SIGTERM is the same request (said once).
    """

    def __init__(self, every: int = 10, processes: int | None = None,
                 request: threading.Event | None = None) -> None:
        self.signal: int | None = None  # the signal this process received
        self.request = request
        self.stopping = False  # agreed: every process stops at this step boundary
        self.finishing = False  # set by the loop: its last step ran (its end's work goes on)
        self.every = max(int(every), 1)
        self.processes = jax.process_count() if processes is None else processes
        self._previous: dict[int, Any] = {}
        self._repeated = False
        self._acknowledgment: threading.Timer | None = None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in taken_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        if _RECEIVED:  # a start-up signal whose SignalExit was swallowed: stop at the start
            self.signal = _RECEIVED[-1]
            _RECEIVED.clear()
            if self.processes == 1:  # no step run yet: unwound now, as cli_signals says it
                # (the loop stopped silently without a progress bar; several processes agree
                # on the stop at their first step instead)
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)
                raise SignalExit(self.signal)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
            self._acknowledgment = threading.Timer(ACKNOWLEDGE_AFTER_S, self._acknowledge)
            self._acknowledgment.daemon = True
            self._acknowledgment.start()
        elif signum == signal.SIGINT:  # Ctrl-C again: stop now
            if self._previous.get(signal.SIGINT) is _cli_handler:
                _end(_SECOND_CTRL_C, 130)  # here, not in a library's wait it would unwind
            raise KeyboardInterrupt
        elif not self._repeated:
            self._repeated = True
            _say(f"signal {signum} after signal {self.signal}: already stopping at the next step "
                 f"boundary (a second Ctrl-C stops without a checkpoint)")

    def _acknowledge(self) -> None:
        """Says that the signal was taken when the step boundary is slow to come (a step of a
        large model on a CPU, its first step compiling, or the processes' next agreement):
        without it a Ctrl-C looked ignored for as long. A thread's write to sys.stderr (a
        progress bar's line), not the handler's: a notebook shows sys.stderr, not fd 2."""
        if self.stopping:
            return
        where = ("the next step boundary" if self.processes == 1 else
                 f"the next step the {self.processes} processes agree on (every "
                 f"{self.every} steps, train.stop_sync_every)")
        what = ("the run has taken its last step and ends when its last validation and save "
                "are done (a second Ctrl-C stops at once, without the save)" if self.finishing
                else f"stopping at {where}, then saving a checkpoint (a second Ctrl-C stops at "
                     f"once, without one)")
        tqdm.tqdm.write(f"signal {self.signal} received: {what}", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        """Restores the previous handlers, except that SIGTERM becomes ignored in a command-
        line tool (``cli_signals``), and after an agreed stop that SIGINT did not cause where
        it was the default: a scheduler signals every process of a run, some after they
        stopped or finished and saved, and such a late signal must not turn the clean end into
        exit status -15 while the process closes its files and exits. (A notebook's stop by
        its interrupt button keeps SIGTERM as it was, and so does a stop this process's
        ``request`` asked for: no scheduler signalled it, and a program that set its event,
        a server, must still end on SIGTERM.)"""
        if self._acknowledgment is not None:
            self._acknowledgment.cancel()
        requested = self.signal is None and self._requested()
        for sig, handler in self._previous.items():
            late = handler is _cli_handler or (handler == signal.SIG_DFL and self.stopping
                                                and self.signal != signal.SIGINT
                                                and not requested)
            if sig in REQUEST_SIGNALS and late:
                handler = signal.SIG_IGN
            signal.signal(sig, handler)

    def should_stop(self, step: int) -> bool:
        """One process: whether a signal came. Many: at every ``every``-th step, whether any
        process got one (a collective; all processes must call this at the same steps)."""
        asked = self.signal is not None or self._requested()
        if self.processes == 1:
            self.stopping = asked
        elif step % self.every == 0:
            self.stopping = agreed_any(asked)
        if self.stopping and self._acknowledgment is not None:
            self._acknowledgment.cancel()  # the stop's own line follows
        return self.stopping

    def cause(self) -> str:
        """What stopped the run, for its last line: "signal 15", "a stop request" (``request``
        set) or, where another process asked, "a signal or request in another process"."""
        if self.signal is not None:
            return f"signal {self.signal}"
        if self._requested():
            return "a stop request"
        return "a signal or request in another process"

    def _requested(self) -> bool:
        """Whether this process's ``request`` event is set."""
        return self.request is not None and self.request.is_set()


def agreed_any(flag: bool) -> bool:
    """Whether ``flag`` is set in any process (an all-gather of one int32 per process)."""
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(int(flag), np.int32))
    return bool(np.max(np.asarray(flags)))


class SignalExit(KeyboardInterrupt):
    """SIGTERM/SIGINT outside the training steps of a command-line tool (``cli_signals``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_RECEIVED: list[int] = []  # signals _cli_handler took (a raise can be swallowed: see there)


def _cli_handler(signum: int, frame: Any) -> None:
    """Unwinds the start-up (temporary files are removed on the way). A signal that lands
    while Python runs a gc callback or a finalizer has its exception dropped (JAX's
    _xla_gc_callback): it is remembered, and ``StopSignal`` takes it as its first."""
    _RECEIVED.append(signum)
    raise SignalExit(signum)


def _quiet_dropped_signal_exits(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """``sys.unraisablehook`` that leaves out the SignalExit a gc callback or finalizer
    dropped (remembered by ``_cli_handler``): Python printed it as "Exception ignored in:
    <function _xla_gc_callback …>" and a traceback above a stop that then went as asked.
    Others go to ``previous``."""
    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SignalExit):
            previous(unraisable)
    return hook


@contextlib.contextmanager
def cli_signals() -> Iterator[None]:
    """A training tool's signals outside its steps (wrap everything after the flags).

    SIGTERM/SIGINT during start-up (joining processes, preparing data, restoring) or while
    the finished run closes its files unwind the process (temporary files are
    removed) and end it with one line: exit 0 for SIGTERM (a scheduler's stop: nothing was in
    progress that a checkpoint would keep), 130 for SIGINT. In the steps ``StopSignal`` takes
    over (and ignores a late SIGTERM after them); its forced stop (Ctrl-C twice) is one line
    and exit 130 too, at once (unwound through orbax's wait, the interrupt was logged as its
    failure). The process ends by ``os._exit``: the library threads still writing an
    abandoned checkpoint would otherwise print their tracebacks at shutdown.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in taken_signals():
            signal.signal(sig, _cli_handler)
    sys.unraisablehook = _quiet_dropped_signal_exits(sys.unraisablehook)
    try:
        yield
    except SignalExit as e:
        _end(f"stopped by signal {e.signum} outside the training steps: nothing to save "
             f"(re-run to start or resume)", 0 if e.signum in REQUEST_SIGNALS else 130,
             grace=True)
    except KeyboardInterrupt:
        _end(_SECOND_CTRL_C, 130)


ACKNOWLEDGE_AFTER_S = 2.0  # a first signal is said when its stop has not come this soon
_COORDINATOR_GRACE_S = 3.0  # process 0's wait before it exits on a signal (see _end)

_SECOND_CTRL_C = ("stopped at once by a second Ctrl-C: no checkpoint saved (the latest one "
                  "stands; re-run to resume from it)")


def _say(message: str) -> None:
    """One line to stderr from a signal handler: a raw write (the handler may have interrupted
    a write to sys.stderr's buffer, which a print would re-enter)."""
    os.write(2, (message + "\n").encode())


def _end(message: str, status: int, grace: bool = False) -> None:
    """Says ``message`` and exits at once with ``status``. ``grace``: process 0 of several,
    which hosts the coordinator, waits a moment first: the others take the same signal a
    little later, and one still inside a collective when the coordinator went was aborted by
    jax (SIGABRT, seen under load) instead of ending with its own line."""
    from jax._src import distributed
    state = distributed.global_state
    if (grace and jax.distributed.is_initialized() and state.process_id == 0
            and state.num_processes > 1):
        time.sleep(_COORDINATOR_GRACE_S)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (RuntimeError, OSError, ValueError):  # re-entered, or a closed pipe
            pass
    _say(message)
    os._exit(status)
