"""Pure step functions: one training step and one evaluation step, jitted by the loop.

A batch is a dict of arrays [B, S]: ``inputs`` and ``targets`` (int32), ``weights``
(float32, 0 = target not counted) and ``resets`` (bool, zero the RNN state before that
input). The carry in the state continues from the previous batch of the same rows.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lmscale.training.loss import cross_entropy_sums, mean_loss
from lmscale.training.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, dropout: bool
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns ``train_step(state, batch) -> (state, metrics)``; pure, to be jitted."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.rng, state.step) if dropout else None

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
            model = nnx.merge(graphdef, params)
            logits, carry = model(batch["inputs"], state.carry, batch["resets"], dropout_key=key)
            nats, count = cross_entropy_sums(logits, batch["targets"], batch["weights"])
            return mean_loss(nats, count), (carry, nats, count)

        (loss, (carry, nats, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = {"nats": state.acc["nats"] + nats, "count": state.acc["count"] + count,
               "steps": state.acc["steps"] + 1}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  carry=jax.lax.stop_gradient(carry), acc=acc)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef
                   ) -> Callable[[Any, Any, Batch], tuple[Any, jax.Array, jax.Array]]:
    """Returns ``eval_step(params, carry, batch) -> (carry, nats, count)``; no dropout."""

    def eval_step(params: Any, carry: Any, batch: Batch) -> tuple[Any, jax.Array, jax.Array]:
        model = nnx.merge(graphdef, params)
        logits, carry = model(batch["inputs"], carry, batch["resets"])
        nats, count = cross_entropy_sums(logits, batch["targets"], batch["weights"])
        return carry, nats, count

    return eval_step


def zeros_like_carry(carry: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, carry)
