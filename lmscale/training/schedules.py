"""Learning-rate schedules: warmup, then constant, linear or cosine decay to 0; or slanted triangular.

A schedule is a pure function of the step (an ``optax.Schedule``), so a resumed run
gets exactly the learning rates an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

DECAYS_TO_ZERO = ("linear", "cosine")  # schedules whose rate is 0 from their horizon on


def make_schedule(kind: str, lr: float, *, warmup_steps: int, decay_steps: int,
                  ratio: float = 100.0, cut_frac: float = 0.002) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``kind`` until ``decay_steps``.

    ``decay_steps`` is the step at which "linear" and "cosine" reach 0 (counted from step
    0, warmup included); later steps stay at 0.
    """
    body_steps = max(1, decay_steps - warmup_steps)
    if kind == "slanted_triangular":
        return slanted_triangular(lr, decay_steps, ratio=ratio, cut_frac=cut_frac)
    if kind == "constant":
        body = optax.constant_schedule(lr)
    elif kind == "linear":
        body = optax.linear_schedule(lr, 0.0, body_steps)
    elif kind == "cosine":
        body = optax.cosine_decay_schedule(lr, body_steps, alpha=0.0)
    else:
        raise ValueError(f"unknown optim.schedule {kind!r}; expected constant, linear, cosine "
                         "or slanted_triangular")
    if warmup_steps > 0:
        warmup = optax.linear_schedule(0.0, lr, warmup_steps)
        body = optax.join_schedules([warmup, body], boundaries=[warmup_steps])
    if kind in DECAYS_TO_ZERO:  # exactly 0 from the horizon on (jitted, the reciprocal
        # rounding left 7.7e-11 past a linear decay's end: README says it stays at 0)
        decayed = body
        body = lambda step: jnp.where(jnp.asarray(step) >= decay_steps, 0.0, decayed(step))
    return _not_negative(body)


def warmup_note(schedule: str, warmup_steps: int, steps: int, decay_steps: int) -> str | None:
    """A note when the warmup does not fit the run (say a production config's 2000 warmup steps
    in a 10-step smoke run): the rate never reaches its peak, or drops to 0 right after it."""
    if warmup_steps <= 0 or schedule == "slanted_triangular":
        return None
    if warmup_steps >= steps:
        return (f"note: optim.warmup_steps={warmup_steps} is not shorter than the run's {steps} "
                f"steps: the learning rate rises to {(steps - 1) / warmup_steps:.1%} of its peak "
                f"at most")
    if schedule in DECAYS_TO_ZERO and decay_steps - warmup_steps <= 1:  # (derive() keeps
        # the horizon past the warmup by one step)
        return (f"note: optim.warmup_steps={warmup_steps} leaves the {schedule} decay no room "
                f"(its horizon is {decay_steps} steps): the learning rate drops from its peak "
                f"to 0 in one step")
    return None


def horizon_note(optim: Any, steps: int, decay_steps: int) -> str | None:
    """A note when ``optim.decay_steps`` or ``optim.decay_epochs`` ends a linear/cosine decay
    before the run ends: the steps past it train at rate 0 and change no weight (said nowhere;
    a horizon kept by a resume that raised train.steps is said where the resume is)."""
    explicit = optim.decay_steps or optim.decay_epochs
    if not explicit or optim.schedule not in DECAYS_TO_ZERO or decay_steps >= steps:
        return None
    setting = "optim.decay_steps" if optim.decay_steps else "optim.decay_epochs"
    return (f"note: the {optim.schedule} decay reaches 0 at step {decay_steps} ({setting}): the "
            f"run's steps {decay_steps + 1}-{steps} train at rate 0 and leave the weights as "
            f"they are")


def finetune_warmup_notes(schedule: str, warmup_steps: int, steps: int, decay_steps: int,
                          freeze_steps: int) -> list[str]:
    """:func:`warmup_note` for both parts of a fine-tune: the head's schedule runs from step 0,
    the LM's from ``freeze_steps`` over the rest (``make_finetune_optimizer``), so a warmup
    the head completes can leave the LM below its peak; an LM frozen for the whole run is said."""
    notes = [warmup_note(schedule, warmup_steps, steps, decay_steps)]
    if freeze_steps >= steps:
        notes.append(f"note: finetune.freeze_steps={freeze_steps} is not shorter than the run's "
                     f"{steps} steps: the LM stays frozen throughout (only the head trains)")
    elif freeze_steps > 0 and notes[0] is None:
        lm = warmup_note(schedule, warmup_steps, steps - freeze_steps,
                         max(decay_steps - freeze_steps, warmup_steps + 1))
        if lm:
            notes.append(lm.replace("the run's", f"the LM's (after finetune.freeze_steps="
                                    f"{freeze_steps})").replace("the learning rate",
                                                                 "the LM's learning rate"))
    return [n for n in notes if n]


def batch_and_rate_note(config, devices: int, lr: float) -> str | None:
    """What the run's global batch and peak rate became, when the config derives them
    (``train.per_device_batch_size``, ``optim.lr_scaling``): a GPU config started on a CPU
    host trains at another batch and rate than its numbers say."""
    t, o = config.train, config.optim
    if not t.per_device_batch_size and o.lr_scaling == "none":
        return None
    batch = (f"global batch {t.batch_size} ({t.per_device_batch_size} per device x {devices} devices)"
             if t.per_device_batch_size else f"global batch {t.batch_size}")
    rate = f"learning rate {lr:.3g}"
    if o.lr_scaling != "none":
        cap = f", capped at {o.lr_max:g}" if o.lr_max > 0 else ""
        rate += f" ({o.lr:g} at batch {o.base_batch_size}, scaled {o.lr_scaling}{cap})"
    return f"note: {batch}, {rate}"


def _not_negative(schedule: optax.Schedule) -> optax.Schedule:
    """``schedule`` floored at 0: jitted, XLA divides by a constant as a multiply by its
    reciprocal, and a linear decay ended at -4.5e-11 instead of 0 (lr 3e-3, warmup 20, decay
    30): a step up the gradient at every step past the horizon."""
    return lambda step: jnp.maximum(schedule(step), 0.0)


def slanted_triangular(lr: float, total_steps: int, *, ratio: float, cut_frac: float) -> optax.Schedule:
    """ULMFiT's slanted triangle as sentiment-discovery defines it (learning_rates.py).

    Rises linearly from lr/ratio at step 0 to lr at step cut_frac * total_steps, then falls
    linearly back to lr/ratio at ``total_steps``, and stays there.
    """
    low = lr / ratio
    peak = max(cut_frac * total_steps, 1e-9)
    total = max(float(total_steps), peak + 1.0)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        up = low + (lr - low) * t / peak
        down = lr - (lr - low) * (t - peak) / (total - peak)
        return jnp.maximum(jnp.where(t <= peak, up, down), low)

    return schedule


def with_drops(schedule: optax.Schedule, drop_steps: Sequence[int], factor: float) -> optax.Schedule:
    """``schedule`` multiplied by ``factor`` once for each of ``drop_steps`` already reached
    (AWD-LSTM's ``--when``: the rate is divided by 10 after the listed epochs)."""
    boundaries = jnp.asarray(sorted(int(s) for s in drop_steps), jnp.int32)

    def dropped(step):
        passed = jnp.sum(jnp.asarray(step, jnp.int32) >= boundaries)
        return schedule(step) * jnp.asarray(factor, jnp.float32) ** passed

    return dropped
