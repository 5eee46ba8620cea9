"""Learning-rate schedules: warmup, then constant, linear decay to 0, or cosine decay to 0.

A schedule is a pure function of the step (an ``optax.Schedule``), so a resumed run
gets exactly the learning rates an uninterrupted one would.
"""

from __future__ import annotations

import optax


def make_schedule(kind: str, lr: float, *, warmup_steps: int, decay_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``kind`` until ``decay_steps``.

    ``decay_steps`` is the step at which "linear" and "cosine" reach 0 (counted from step
    0, warmup included); later steps stay at 0.
    """
    body_steps = max(1, decay_steps - warmup_steps)
    if kind == "constant":
        body = optax.constant_schedule(lr)
    elif kind == "linear":
        body = optax.linear_schedule(lr, 0.0, body_steps)
    elif kind == "cosine":
        body = optax.cosine_decay_schedule(lr, body_steps, alpha=0.0)
    else:
        raise ValueError(f"unknown optim.schedule {kind!r}; expected constant, linear or cosine")
    if warmup_steps <= 0:
        return body
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, body], boundaries=[warmup_steps])
