"""StepTimer (training/step_timer.py): a compiling step is timed alone, out of its window."""

from __future__ import annotations

import time

import jax.numpy as jnp
import pytest

from lmscale.training.step_timer import StepTimer


def test_a_compiling_step_inside_a_window_is_left_out():
    """Fine-tuning's unfreeze step inside a logging window: its seconds went into the
    window's (or, first fix, the window's other steps were thrown away)."""
    timer = StepTimer()
    x = jnp.ones(3)
    for compiles, seconds in ((False, 0.05), (False, 0.05), (True, 0.5), (False, 0.05)):
        timer.before(compiles, x)
        time.sleep(seconds)
        timer.after(compiles, x)
    assert timer.steps == 3 and 0.5 <= timer.compile_s < 0.9
    steps, tokens = timer.rates(1, 10)
    assert 3 / 0.45 < steps <= 3 / 0.15  # the 0.15 s of the three, not 0.65 (then 4.6)
    assert tokens == pytest.approx(10 * steps, rel=1e-12)  # one clock read: exact ratios
    timer.reset()
    assert timer.rates(1) == [None] and timer.compile_s is None
    timer.before(True, x)
    timer.after(True, x)
    assert timer.rates(1, 2) == [None, None] and timer.compile_s is not None  # it alone


def test_a_window_that_starts_with_a_compile_starts_after_it():
    """The loop's set-up and the first batch's reading came before its compiling first step:
    they were in the first window's seconds (a record at a third of the others' rate in CI)."""
    timer = StepTimer()
    x = jnp.ones(3)
    time.sleep(0.5)  # set-up after the timer was made
    for compiles in (True, False, False):
        timer.before(compiles, x)
        time.sleep(0.05)
        timer.after(compiles, x)
    (steps,) = timer.rates(1)
    assert 2 / 0.4 < steps <= 2 / 0.1  # the 0.1 s of the two, not 0.6 (then 3.3)


def test_a_restart_inside_a_window_keeps_its_compile_seconds():
    """The loop restarts a window's timing after a validation or a save inside it: the
    compiling step's seconds went with it (no first_step_s in the window's record)."""
    timer = StepTimer()
    x = jnp.ones(3)
    timer.before(True, x)
    time.sleep(0.2)
    timer.after(True, x)
    timer.restart()
    assert timer.compile_s >= 0.2 and timer.steps == 0
    timer.before(False, x)
    timer.after(False, x)
    assert timer.steps == 1 and timer.compile_s >= 0.2
    timer.reset()
    assert timer.compile_s is None
