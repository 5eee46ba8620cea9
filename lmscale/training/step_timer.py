"""Throughput of a training loop's logging windows, the steps that compile left out.

A step that compiles its program (a loop's first; fine-tuning's first of each batch width,
frozen and unfrozen) takes seconds against milliseconds: timed alone (the work queued before
it waited for first), it is left out of its window's steps and seconds, and its seconds are
added to ``compile_s``; a window whose first steps compile starts after them. A window of
only such steps has no rate (None).
"""

from __future__ import annotations

import time
from typing import Any

import jax


class StepTimer:
    """``before(compiles, pending)`` / ``after(compiles, outputs)`` around each step;
    ``rates(*counts)`` per second of the window's steps; ``reset()`` starts the next window,
    ``restart()`` the timing of this one afresh (after a validation or a save inside it)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.compile_s = time.perf_counter(), 0, None
        self._t = 0.0

    def restart(self) -> None:
        """The window's timed steps start again from now (a validation's or a save's seconds
        are no step's), its compiling steps' seconds kept for its record: ``reset`` dropped
        them, and a record whose window held a validation had no ``first_step_s``."""
        compile_s = self.compile_s
        self.reset()
        self.compile_s = compile_s

    def before(self, compiles: bool, pending: Any) -> None:
        if compiles:
            jax.block_until_ready(pending)  # the window's steps so far finish in its time
            self._t = time.perf_counter()

    def after(self, compiles: bool, outputs: Any) -> None:
        if compiles:
            jax.block_until_ready(outputs)
            now = time.perf_counter()
            if self.steps:
                self.start += now - self._t  # out of the window
            else:  # the window starts here: what came before (the loop's set-up, the first
                self.start = now  # batch's reading) is not the timed steps' either
            self.compile_s = (self.compile_s or 0.0) + now - self._t
        else:
            self.steps += 1

    def rates(self, *counts: float) -> list[float | None]:
        """Each of ``counts`` (per step) per second of the window's timed steps, from one read
        of the clock (their ratios are exact); None without any timed step."""
        seconds = time.perf_counter() - self.start
        return [self.steps * c / seconds if self.steps else None for c in counts]
