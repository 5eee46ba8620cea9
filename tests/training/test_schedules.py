"""Learning-rate schedules against their closed forms."""

import math

import numpy as np
import pytest

from lmscale.training.schedules import finetune_warmup_notes, make_schedule, warmup_note


def test_linear_decays_to_zero_at_decay_steps():
    s = make_schedule("linear", 1e-3, warmup_steps=0, decay_steps=100)
    for step in (0, 1, 50, 99, 100, 150):
        expected = 1e-3 * max(0.0, 1 - step / 100)
        np.testing.assert_allclose(float(s(step)), expected, rtol=1e-6, atol=1e-12)


def test_warmup_then_linear():
    s = make_schedule("linear", 2e-3, warmup_steps=10, decay_steps=110)
    np.testing.assert_allclose(float(s(0)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(s(5)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 2e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_past_the_horizon_the_rate_is_zero_not_below_it_jitted(kind):
    """As the training step computes it (jitted, where XLA multiplies by 1/10 instead of
    dividing): the linear decay of lr 3e-3, warmup 20, horizon 30 gave -4.47e-11 past 30."""
    import jax
    s = jax.jit(make_schedule(kind, 3e-3, warmup_steps=20, decay_steps=30))
    assert [float(s(step)) for step in (30, 31, 40, 1000)] == [0.0, 0.0, 0.0, 0.0]
    assert float(s(29)) > 0
    # above it, too: lr 3e-3, warmup 10, horizon 3000 gave 7.7e-11 from 3000 on
    s = jax.jit(make_schedule(kind, 3e-3, warmup_steps=10, decay_steps=3000))
    assert [float(s(step)) for step in (3000, 3024, 5000)] == [0.0, 0.0, 0.0]
    assert float(s(2999)) > 0


def test_cosine_and_constant():
    s = make_schedule("cosine", 1.0, warmup_steps=0, decay_steps=40)
    for step in (0, 10, 20, 40):
        np.testing.assert_allclose(float(s(step)), 0.5 * (1 + math.cos(math.pi * step / 40)), atol=1e-6)
    c = make_schedule("constant", 0.3, warmup_steps=4, decay_steps=10)
    assert float(c(2)) == pytest.approx(0.15)
    assert float(c(1000)) == pytest.approx(0.3)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown optim.schedule"):
        make_schedule("exp", 1.0, warmup_steps=0, decay_steps=1)


def test_slanted_triangular_matches_sentiment_discovery_shape():
    s = make_schedule("slanted_triangular", 1.0, warmup_steps=0, decay_steps=1000, ratio=100.0,
                      cut_frac=0.1)
    np.testing.assert_allclose(float(s(0)), 0.01, rtol=1e-6)  # lr / ratio
    np.testing.assert_allclose(float(s(50)), 0.01 + 0.99 * 0.5, rtol=1e-6)  # halfway up
    np.testing.assert_allclose(float(s(100)), 1.0, rtol=1e-6)  # peak at cut_frac * steps
    np.testing.assert_allclose(float(s(550)), 1.0 - 0.99 * 0.5, rtol=1e-6)  # halfway down
    np.testing.assert_allclose(float(s(1000)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(s(5000)), 0.01, rtol=1e-6)  # stays at the floor


def test_a_warmup_that_does_not_fit_the_run_is_noted():
    """A production config's warmup in a short run was silent: the rate never reached its peak
    (or a linear/cosine decay fell from the peak to 0 in one step)."""
    note = warmup_note("cosine", 5000, 10, 10)
    assert note.startswith("note: optim.warmup_steps=5000 is not shorter than the run's 10 steps")
    schedule = make_schedule("cosine", 1.0, warmup_steps=5000, decay_steps=10)
    assert f"{max(float(schedule(s)) for s in range(10)):.1%} of its peak" in note  # 0.2%
    assert "leaves the linear decay no room (its horizon is 101 steps)" in warmup_note("linear", 100, 200, 101)
    assert warmup_note("constant", 100, 200, 100) is None  # no decay to cut short
    for fits in (("linear", 100, 1000, 1000), ("cosine", 0, 5, 5), ("slanted_triangular", 100, 5, 5)):
        assert warmup_note(*fits) is None


def test_a_derived_batch_and_rate_are_said():
    """A GPU config on 2 CPU devices (256 per device, linear scaling capped at 3e-3) trained
    at global batch 512 and lr 2e-3 with nothing said (only config.json's derived values)."""
    from lmscale.config import config_from_file, derive, with_global_batch
    from lmscale.training.schedules import batch_and_rate_note
    config = with_global_batch(config_from_file("configs/mlstm4096_128gpu.py"), 2)
    lr = derive(config, steps_per_epoch=100)["lr"]
    assert batch_and_rate_note(config, 2, lr) == (
        "note: global batch 512 (256 per device x 2 devices), learning rate 0.002 (0.0005 at "
        "batch 128, scaled linear, capped at 0.003)")
    from lmscale.config import default_config
    assert batch_and_rate_note(default_config(), 2, 5e-4) is None  # nothing derived


def test_a_finetunes_warmup_note_counts_the_lms_steps_after_its_freeze():
    """The LM's schedule starts at finetune.freeze_steps: 100 warmup steps in a 150-step run
    fit the head, but the LM (unfrozen at 100) gets 50 and reaches 49 % of its peak."""
    assert finetune_warmup_notes("linear", 100, 300, 300, 0) == []
    assert finetune_warmup_notes("linear", 100, 300, 300, 100) == []
    (note,) = finetune_warmup_notes("constant", 100, 150, 150, 100)
    assert "not shorter than the LM's (after finetune.freeze_steps=100) 50 steps" in note
    assert "the LM's learning rate rises to 49.0% of its peak" in note
    (note,) = finetune_warmup_notes("linear", 20, 100, 100, 100)
    assert "the LM stays frozen throughout" in note
    assert len(finetune_warmup_notes("linear", 200, 100, 100, 0)) == 1  # the head's, said once


def test_a_decay_set_to_end_before_the_run_is_noted_with_its_steps_at_rate_zero():
    """optim.decay_steps=60 of an 80-step linear run: steps 61-80 ran at rate 0, unsaid."""
    from lmscale.config import default_config, derive
    from lmscale.training.schedules import horizon_note
    config = default_config()
    config.train.steps, config.optim.schedule, config.optim.decay_steps = 80, "linear", 60
    derived = derive(config, 1000)
    assert horizon_note(config.optim, derived["steps"], derived["decay_steps"]) == (
        "note: the linear decay reaches 0 at step 60 (optim.decay_steps): the run's steps 61-80 "
        "train at rate 0 and leave the weights as they are")
    for schedule, decay in (("linear", 0), ("constant", 60), ("cosine", 80)):  # no such steps
        config.optim.schedule, config.optim.decay_steps = schedule, decay
        assert horizon_note(config.optim, 80, derive(config, 1000)["decay_steps"]) is None

