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
    for compiles, seconds in ((False, 0.02), (False, 0.02), (True, 0.3), (False, 0.02)):
        timer.before(compiles, x)
        time.sleep(seconds)
        timer.after(compiles, x)
    assert timer.steps == 3 and timer.compile_s == pytest.approx(0.3, abs=0.1)
    assert 3 / 0.15 < timer.rate() < 3 / 0.055  # the 0.06 s of the three, not 0.36
    assert timer.rate(10) == pytest.approx(10 * timer.rate(), rel=0.05)
    timer.reset()
    assert timer.rate() is None and timer.compile_s is None
    timer.before(True, x)
    timer.after(True, x)
    assert timer.rate() is None and timer.compile_s is not None  # a window of it alone
