"""A run whose parameters stopped being finite: refused at its next save or evaluation; a
run whose logged training loss is not finite, or far above a uniform guess's: stopped there.

A diverged run (too high a learning rate, an overflow) computes NaN or inf parameters;
saving them would rotate the last good checkpoints away, and a fine-tune's NaN classifier
predicted one class for every text as its "best". The LM training loop and the fine-tuning
loop check before they save, and stop with ``DivergedError`` (exit status
``EXIT_DIVERGED``, which sweeps read), naming the last good checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from lmscale.cli import EXIT_DIVERGED
from lmscale.training.checkpoints import CheckpointError, Checkpointer


class DivergedError(CheckpointError):
    """The run cannot go on at ``step``: its parameters are no longer finite (the state is not
    saved), or float16 skipped every step for a while (``precision.SkippedRun``)."""

    exit_status = EXIT_DIVERGED

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@jax.jit
def _all_finite(params: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def save_finite(checkpointer: Checkpointer, state: Any, meta: dict[str, Any],
                lower: str = "optim.lr or optim.clip") -> None:
    """Saves ``state`` unless its parameters hold NaN or inf (``check_finite``)."""
    check_finite(checkpointer, state, lower)
    checkpointer.save(state, meta)


def check_finite(checkpointer: Checkpointer, state: Any, lower: str = "optim.lr or optim.clip"
                 ) -> None:
    """A ``DivergedError`` where the parameters hold NaN or inf (a diverged run, or a damaged
    checkpoint resumed), naming the last good checkpoint: saving them would rotate the last
    good checkpoints away (``lower``: the settings to lower, said in the error)."""
    if not bool(_all_finite(state.params)):
        step = int(jax.device_get(state.step))
        checkpointer.close()  # an earlier save still being written completes
        latest = checkpointer.latest_step()
        if latest is None:  # diverged before the first checkpoint
            raise DivergedError(
                f"the parameters are not finite at step {step}: not saved, and no checkpoint "
                f"was written before it; start over (--config.resume=false) with a lower "
                f"{lower}", step)
        raise DivergedError(
            f"the parameters are not finite at step {step}: not saved, and the checkpoints "
            f"before it are kept (the latest: step {latest}, in {checkpointer.directory}); "
            f"resume from there with a lower {lower}, or "
            f"--config.checkpoint.fallback=true past a damaged one", step)


def check_loss(checkpointer: Checkpointer, loss: float, step: int, vocab_size: int,
               factor: float, skips_steps: bool = False) -> None:
    """A ``DivergedError`` when the logged training ``loss`` (nats a token) is not finite or
    above ``factor`` x ln(``vocab_size``), what a model guessing every token alike scores
    (``train.divergence_factor``; 0: only a loss that is not finite). A run at lr 100 logged
    126 nats a token over 256 bytes (ln 256 = 5.5), exited 0, and its rotated checkpoints all
    held the diverged weights. ``skips_steps`` (float16's dynamic loss scale): a loss that is
    not finite is an overflowed step it skipped, left to ``precision.SkippedRun``."""
    uniform = math.log(max(vocab_size, 2))
    if math.isfinite(loss) and not (factor > 0 and loss > factor * uniform):
        return
    if not math.isfinite(loss) and skips_steps:
        return
    checkpointer.close()  # an earlier save still being written completes
    latest = checkpointer.latest_step()
    what = ("is not finite" if not math.isfinite(loss) else
            f"is {loss:.4g} nats a token, above {factor:g} x the {uniform:.3g} of a uniform "
            f"guess over the {vocab_size} tokens")
    kept = (f"the checkpoints before it are kept (the latest: step {latest}, in "
            f"{checkpointer.directory}): resume from there" if latest is not None else
            "no checkpoint was written before it: start over (--config.resume=false)")
    raise DivergedError(f"the training loss {what} at step {step}: the run diverged and is "
                        f"stopped unsaved; {kept} with a lower optim.lr or optim.clip "
                        f"(--config.train.divergence_factor=0 trains on past a finite loss)", step)
