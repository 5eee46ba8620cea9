"""Bits per character of a model over a whole split, with the RNN state carried across batches."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lmscale.data.stream import StreamBatcher
from lmscale.training import mesh as mesh_lib
from lmscale.training.loss import bits_per_char


def evaluate(eval_step: Callable, params: Any, initial_carry: Any, batcher: StreamBatcher,
             mesh: Mesh, max_steps: int = 0) -> dict[str, float]:
    """Runs ``eval_step`` over the split's stream (all of it, or ``max_steps`` batches).

    ``eval_step(params, carry, batch) -> (carry, nats, count)`` is the jitted step;
    ``initial_carry`` zeros sharded like the batch rows. Returns loss (nats per
    character), bpc and the number of characters scored.
    """
    steps = batcher.steps_per_epoch if max_steps <= 0 else min(max_steps, batcher.steps_per_epoch)
    rows = mesh_lib.local_rows(mesh, batcher.batch_size)
    sharding = mesh_lib.batch_sharded(mesh)
    carry = initial_carry
    nats_total = jnp.zeros((), jnp.float32)
    count_total = jnp.zeros((), jnp.float32)
    for k in range(steps):
        batch = batch_arrays(batcher, k, rows, sharding)
        carry, nats, count = eval_step(params, carry, batch)
        nats_total, count_total = nats_total + nats, count_total + count
    nats_total, count_total = float(nats_total), float(count_total)
    loss = nats_total / max(count_total, 1.0)
    return {"loss": loss, "bpc": bits_per_char(loss), "chars": int(count_total)}


def batch_arrays(batcher: StreamBatcher, step: int, rows: tuple[int, int],
                 sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of ``batcher.batch(step)`` as global arrays sharded by rows."""
    b = batcher.batch(step, rows=rows)
    local = {"inputs": b.inputs.astype(np.int32), "targets": b.targets.astype(np.int32),
             "weights": b.weights.astype(np.float32), "resets": b.resets.astype(bool)}
    return mesh_lib.tree_put_global(local, sharding, batcher.batch_size)
