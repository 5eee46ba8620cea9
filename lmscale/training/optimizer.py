"""The optimizer: clip by global norm, Adam, and the learning-rate schedule, as one optax chain."""

from __future__ import annotations

import ml_collections
import optax

from lmscale.training.schedules import make_schedule


def make_optimizer(optim: ml_collections.ConfigDict, decay_steps: int, lr: float | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (transformation, schedule); the schedule is also used to log the learning rate.

    ``lr`` is the peak learning rate after batch-size scaling (``config.derive``'s "lr");
    None uses ``optim.lr`` as is.
    """
    schedule = make_schedule(optim.schedule, optim.lr if lr is None else lr,
                             warmup_steps=optim.warmup_steps, decay_steps=decay_steps,
                             ratio=optim.stlr_ratio, cut_frac=optim.stlr_cut_frac)
    parts = []
    if optim.clip > 0:
        parts.append(optax.clip_by_global_norm(optim.clip))
    parts.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
