"""Dynamic loss scaling (README "Mixed precision") against a reference written from its text:
a step with any non-finite gradient is skipped (parameters and optimizer state unchanged) and
halves S (not below 1); S grows by its factor after `window` finite steps in a row, up to 2**64; `skipped` counts the
skipped steps; the learning-rate schedule counts applied updates only and the logged lr is the
one applied. The reference state machine is plain Python; the float16 train step is checked
against it on a real overflow-then-recover run, and its first applied Adam update against the
equations (first Adam step: -lr * g / (|g| + eps), so max |delta p| = lr to ~1e-3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.optimizer import make_optimizer
from lmscale.training.precision import LossScale
from lmscale.training.state import create_state
from lmscale.training.steps import make_train_step


class RefScale:
    def __init__(self, initial, factor, window):
        self.scale, self.factor, self.window = float(initial), float(factor), int(window)
        self.good = 0
        self.skipped = 0

    def step(self, finite: bool):
        if not finite:
            self.scale = max(self.scale / self.factor, 1.0)
            self.good = 0
            self.skipped += 1
            return
        self.good += 1
        if self.good == self.window:
            self.scale = min(self.scale * self.factor, 2.0**64)  # README: capped at 2**64
            self.good = 0


@pytest.mark.parametrize("initial,factor,window", [(8.0, 2.0, 3), (4.0, 3.0, 1), (2.0**32, 2.0, 5)])
def test_state_machine_follows_the_documented_rule(initial, factor, window):
    rng = np.random.default_rng(int(window))
    flags = rng.random(300) < 0.6
    ls = LossScale.create(dynamic=True, initial=initial, factor=factor, window=window)
    ref = RefScale(initial, factor, window)
    update = jax.jit(lambda s, f: s.update(f))
    for f in flags:
        ls = update(ls, jnp.asarray(bool(f)))
        ref.step(bool(f))
        np.testing.assert_allclose(float(ls.scale), ref.scale, rtol=1e-6)
        assert int(ls.skipped) == ref.skipped
        assert float(ls.scale) >= 1.0
    assert ref.scale < 1e30  # stays in float32's range (see the test below)


def test_an_overflowing_scale_comes_back_down_on_a_non_finite_step():
    """S grown past float32's range was inf, and inf halved stays inf: every later step was
    skipped and the stuck-run stop (at S = 1) never fired. Growth stops at 2**64."""
    ls = LossScale.create(dynamic=True, initial=2.0**63, factor=2.0, window=1)
    for _ in range(3):
        ls = ls.update(jnp.asarray(True))
    assert float(ls.scale) == 2.0**64
    ls = ls.update(jnp.asarray(False))  # documented: halves
    assert float(ls.scale) == 2.0**63
    huge = LossScale.create(dynamic=True, initial=2.0**64, factor=1e30, window=1)
    assert float(huge.update(jnp.asarray(True)).scale) == 2.0**64


@pytest.mark.parametrize("field,value", [("loss_scale_init", 2.0**128), ("loss_scale_init", 0.5),
                                         ("loss_scale_factor", 1.0)])
def test_a_loss_scale_that_float32_cannot_hold_is_refused(field, value):
    from lmscale.config import ConfigError, validate
    cfg = default_config()
    setattr(cfg.precision, field, value)
    with pytest.raises(ConfigError, match=r"precision\.loss_scale_init must be in \[1, 2\*\*64\]"):
        validate(cfg)


def test_a_loss_scale_window_past_int32_is_refused():
    """The window is compared with an int32 count of good steps: 2**31 (a window meant to keep
    S fixed) passed the checks, and the first float16 step stopped with an OverflowError
    traceback, after the run had written its config.json."""
    from lmscale.config import ConfigError, validate
    cfg = default_config()
    cfg.precision.loss_scale_window = 2**31
    with pytest.raises(ConfigError, match=r"loss_scale_window in \[1, 2\*\*31 - 1\]; got "
                                          r".*, 2147483648$"):
        validate(cfg)
    cfg.precision.loss_scale_window = 2**31 - 1  # the largest: a float16 step takes it
    validate(cfg)
    ls = LossScale.create(dynamic=True, window=cfg.precision.loss_scale_window)
    assert int(jax.jit(lambda s: s.update(jnp.asarray(True)))(ls).good_steps) == 1


def test_float16_run_skips_halves_grows_and_schedules_applied_updates_only():
    cfg = default_config()
    cfg.model.hidden, cfg.model.embed = 32, 16
    model = build_model(cfg.model, 257, rngs=nnx.Rngs(0), dtype=jnp.float16)
    cfg.optim.clip = 0.0
    decay = 40
    tx, schedule = make_optimizer(cfg.optim, decay, lr=1e-3)  # linear decay to 0 at 40
    window = 2
    initial = 2.0 ** 32
    ls = LossScale.create(dynamic=True, initial=initial, factor=2.0, window=window)
    graphdef, state = create_state(model, tx, 4, seed=0, loss_scale=ls)
    step = jax.jit(make_train_step(graphdef, tx, schedule, mesh_lib.make_mesh(jax.devices()[:1]),
                                   dropout=False))
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(1, 257, (4, 8)), jnp.int32),
             "targets": jnp.asarray(rng.integers(1, 257, (4, 8)), jnp.int32),
             "weights": jnp.ones((4, 8), jnp.float32), "resets": jnp.zeros((4, 8), bool)}
    ref = RefScale(initial, 2.0, window)
    applied, first_update_checked, flags = 0, False, []
    for i in range(30):
        new, m = step(state, batch)
        finite = bool(m["finite"])
        flags.append(finite)
        # the logged lr is the schedule at the number of updates applied before this step
        np.testing.assert_allclose(float(m["lr"]), float(schedule(applied)), rtol=1e-6)
        same = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                                (new.params, new.opt_state),
                                                (state.params, state.opt_state))))
        if not finite:
            assert same and not np.isfinite(float(m["grad_norm"]))
        else:
            assert not same and np.isfinite(float(m["grad_norm"]))
            if not first_update_checked:  # first Adam step: |dp| <= lr, max ~ lr
                lr = 1e-3 * (1 - applied / decay)
                delta = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                            zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))
                np.testing.assert_allclose(delta, lr, rtol=2e-3)
                first_update_checked = True
            applied += 1
        ref.step(finite)
        assert float(new.loss_scale.scale) == ref.scale, (i, flags)
        assert int(new.loss_scale.skipped) == ref.skipped and int(new.step) == i + 1
        state = new
    assert first_update_checked and not flags[0] and flags[-1]
    assert ref.skipped >= 1 and applied >= 2 * window
    assert ref.scale == 2.0 ** 32 / 2 ** ref.skipped * 2 ** (applied // window)  # it grew too
