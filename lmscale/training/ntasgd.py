"""NT-ASGD (Merity et al., AWD-LSTM): SGD that switches to averaging the weights.

The trigger is salesforce/awd-lstm-lm main.py's code rule (not the paper's typo): after a
validation pass with loss ``v``, with ``history`` the losses of the earlier passes (before
the switch), switch when ``len(history) > n and v > min(history[:-n])`` — validation is
worse than the best of those more than ``n`` evaluations ago. From the switch on, every
update is followed by a running average of the weights, torch ASGD's with t0=0, lambd=0
(what awd-lstm-lm switches to): after the k-th update since the switch ``ax = p`` for k <= 2,
else ``ax += (p - ax) / (k - 1)`` — torch updates its weight mu = 1/max(1, k - t0) after each
step, so the average is of the iterates 2..k, not 1..k. The averaged weights are what
validation, eval/export and generation use; training continues on the raw ones.

Where the pieces live, so that a resumed run decides exactly as an uninterrupted one:

* the average, whether it is on and the switch step: ``AverageState`` in the optimizer
  state (last link of the optax chain), in every checkpoint;
* the validation history: the checkpoint's JSON record (``meta["ntasgd"]``), in float64 as
  the losses in metrics.jsonl; the loop decides on the host after each validation pass
  (``NTASGDMonitor``) and flips ``AverageState.active`` between steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


class AverageState(NamedTuple):
    active: jax.Array  # bool scalar: averaging is on (the switch happened)
    start: jax.Array  # int32 scalar: the step of the switch (-1 before)
    count: jax.Array  # int32 scalar: updates averaged so far
    avg: Any  # the averaged parameters (same tree as the parameters)


def should_switch(history: Sequence[float], val_loss: float, nonmono: int) -> bool:
    """awd-lstm-lm's trigger: ``len(history) > nonmono and val_loss > min(history[:-nonmono])``.

    ``history``: validation losses of the earlier passes, oldest first (not ``val_loss``).
    """
    if len(history) <= nonmono:
        return False
    older = history[:len(history) - nonmono] if nonmono else history
    return val_loss > min(older)


def average_after_switch(from_start: bool = False) -> optax.GradientTransformation:
    """The last link of the chain: updates pass unchanged; once ``active``, the parameters
    after each update (params + updates) are averaged into ``avg``. ``from_start``: active
    from the first update (``optim.name="asgd"``: awd-lstm-lm finetune.py's
    ``ASGD(t0=0, lambd=0)`` created before its first step)."""

    def init(params: Any) -> AverageState:
        return AverageState(active=jnp.full((), from_start, bool),
                            start=jnp.full((), 0 if from_start else -1, jnp.int32),
                            count=jnp.zeros((), jnp.int32), avg=jax.tree.map(jnp.array, params))

    def update(updates: Any, state: AverageState, params: Any = None) -> tuple[Any, AverageState]:
        if params is None:
            raise ValueError("average_after_switch needs the parameters (tx.update(g, s, params))")
        count = state.count + state.active.astype(jnp.int32)
        new = optax.apply_updates(params, updates)

        def mix(a: jax.Array, p: jax.Array) -> jax.Array:
            k = jnp.maximum(count - 1, 1).astype(a.dtype)  # torch's mu, one update behind
            running = jnp.where(count <= 2, p, a + (p - a) / k)
            return jnp.where(state.active, running, a)

        return updates, state._replace(count=count, avg=jax.tree.map(mix, state.avg, new))

    return optax.GradientTransformation(init, update)


def _is_average(x: Any) -> bool:
    return isinstance(x, AverageState)


def find_average(opt_state: Any) -> AverageState | None:
    """The ``AverageState`` inside an optimizer state (None if the optimizer does not average)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_average) if _is_average(s)]
    return found[0] if found else None


def switch_on(opt_state: Any, step: int, sharding: jax.sharding.Sharding | None = None) -> Any:
    """``opt_state`` with averaging switched on at ``step`` (scalars placed with ``sharding``)."""
    # Host values: a device array put on a sharding over several processes' devices made an
    # array orbax could not save ("input arrays must have one shard each": a 2-process run
    # failed at the first checkpoint after the switch).
    put = (lambda x: jax.device_put(x, sharding)) if sharding is not None else jnp.asarray

    def on(s: Any) -> Any:
        if not _is_average(s):
            return s
        return s._replace(active=put(np.ones((), bool)), start=put(np.full((), step, np.int32)))

    return jax.tree.map(on, opt_state, is_leaf=_is_average)


def eval_params(params: Any, opt_state: Any) -> Any:
    """The weights to validate / export: the average once it holds an update, else ``params``
    (host check). Right at the switch (on, nothing averaged yet: a checkpoint at the switching
    validation's step) ``avg`` still holds the initial weights, so ``params`` it is."""
    avg = find_average(opt_state)
    if avg is not None and int(jax.device_get(avg.count)) > 0:
        return avg.avg
    return params


class NTASGDMonitor:
    """The loop's host-side half: the validation history and the switch decision.

    ``record()`` is what the checkpoint's meta stores (``meta["ntasgd"]``); a resumed run
    starts from the restored checkpoint's record, so it decides exactly as the original.
    """

    def __init__(self, nonmono: int, record: dict[str, Any] | None = None,
                 stops: bool = False) -> None:
        """``stops``: ASGD from the first step (``optim.name="asgd"``, awd's finetune.py):
        averaging is on from step 0 and the same rule ends the run (``stop_step``)."""
        self.nonmono, self.stops = int(nonmono), bool(stops)
        record = record or {}
        self.history: list[float] = [float(v) for v in record.get("val_history", [])]
        self.switch_step: int | None = record.get("switch_step", 0 if stops else None)
        self.stop_step: int | None = record.get("stop_step")

    def after_validation(self, val_loss: float, step: int) -> bool:
        """Records a pass (before the switch); True when averaging must start now (``stops``:
        when the run must end now: finetune.py's ``len(h) > n and v > min(h[:-n])`` on the
        averaged weights' losses, its history starting empty)."""
        decided = self.stop_step if self.stops else self.switch_step
        if decided is not None:  # asgd: stopped already; ntasgd: switched (no more history)
            return self.stops
        fires = should_switch(self.history, val_loss, self.nonmono)
        self.history.append(float(val_loss))
        if fires and self.stops:
            self.stop_step = int(step)
        elif fires:
            self.switch_step = int(step)
        return fires

    def record(self) -> dict[str, Any]:
        record = {"val_history": list(self.history), "switch_step": self.switch_step,
                  "nonmono": self.nonmono}
        if self.stops:
            record["stop_step"] = self.stop_step
        return record
