"""Pure step functions: one training step and one evaluation step, jitted by the loop.

A batch is a dict of arrays [B, S] (B global, split over the mesh's ``data`` axis):
``inputs`` and ``targets`` (int32), ``weights`` (float32, 0 = target not counted) and
``resets`` (bool, a new segment starts at that input: a recurrent model zeroes its state, a
transformer stops attending across it). The carry in the state (``()`` for a model that
carries nothing) continues from the previous batch of the same rows. Besides the loss, the
steps sum the UTF-8 bytes the counted targets stand for (``byte_lengths`` of the
tokenizer), so that bits per character compare across tokenizers.

Regularized models (``regularized_call``, see ``lmscale.models.registry``) get the row keys
and a step key, and their auxiliary penalty (AR/TAR) is added to the training loss only;
the logged loss is the cross entropy alone.

Data parallelism: the forward/backward pass runs per device under ``jax.shard_map`` on
the device's rows, and the gradients of all parameters, with the loss sums, are averaged
by exactly one all-reduce of one flat float32 vector (NCCL on GPUs; with
``parallel.grad_reduce_dtype`` bfloat16, the gradients' and a tiny float32 one: ``allreduce``).
The optimizer update then runs replicated. Trap avoided: inside shard_map the gradient of a
*replicated* parameter comes back already summed over devices (the transpose of its implicit
broadcast), so a further psum/pmean would count it N times; the parameters are first
marked device-varying (``lax.pcast``) so that each device's gradient stays local, and the
single explicit psum is the only reduction.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec as P

from lmscale.training.loss import byte_count, lm_loss_sums, mean_loss
from lmscale.training.mesh import DATA_AXIS
from lmscale.training.optimizer import schedule_count
from lmscale.training.precision import all_finite, select_tree
from lmscale.training.state import TrainState

Batch = dict[str, jax.Array]


def row_dropout_keys(key: jax.Array, first_row: jax.Array, rows: int) -> jax.Array:
    """One dropout key per batch row, from the row's global index: [rows, 2] uint32.

    Masks then depend on the row, not on how rows are split over devices, so 1 and N
    devices train identically with dropout.
    """
    ids = first_row + jnp.arange(rows)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def step_dropout_key(key: jax.Array) -> jax.Array:
    """The key of the masks drawn once per forward pass (embedding dropout, weight drop), from
    the step's key: the same on every device (rows' keys are fold_in(key, row), row < 2^31)."""
    return jax.random.fold_in(key, 0xFFFFFFFF)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, dropout: bool,
                    byte_lengths: np.ndarray | None = None, lr_length_base: int = 0,
                    grad_accum_steps: int = 1, grad_reduce_dtype: Any = jnp.float32
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns ``train_step(state, batch) -> (state, metrics)``; pure, to be jitted over ``mesh``.

    ``byte_lengths`` [V]: UTF-8 bytes per token id (None: one per token; a word vocabulary's
    ``<unk>`` a fraction).
    ``lr_length_base`` > 0 (variable BPTT): the step's learning rate is scaled by the batch's
    length / ``lr_length_base`` (a constant of each compiled length; ``tx`` must take it, see
    ``optimizer.make_optimizer(step_factor=True)``).
    ``grad_accum_steps`` k > 1: the batch [B, k*S] is k consecutive truncated-BPTT segments
    of S tokens per row; their gradients are taken one segment at a time (activations of one
    segment in memory; the carry continues from segment to segment, its gradient cut at each
    boundary as between steps), summed in float32, and all-reduced once for the one update.
    ``grad_reduce_dtype``: the dtype the gradients travel in through the all-reduce
    (bfloat16 halves its bytes; the loss sums stay float32).
    """
    k_accum = int(grad_accum_steps)

    def local_grads(params: Any, carry: Any, batch: Batch, key: jax.Array, scale: jax.Array
                    ) -> tuple[Any, jax.Array, jax.Array, jax.Array, Any]:
        """Per device: gradients of this device's summed loss, all-reduced once."""
        rows, targets_per_row = batch["targets"].shape
        global_targets = rows * targets_per_row * jax.lax.axis_size(DATA_AXIS)
        local_params = jax.lax.pcast(params, DATA_AXIS, to="varying")
        if k_accum > 1:
            grads, new_carry, nats, count, num_bytes = _accumulate(
                local_params, carry, batch, key, scale, global_targets)
        else:
            grads, (new_carry, nats, count) = segment_grads(
                local_params, carry, batch, key, scale, global_targets)
            num_bytes = _bytes(batch, count, byte_lengths)
        grads, sums = allreduce(grads, jnp.stack([nats, count, num_bytes]), grad_reduce_dtype)
        return grads, sums[0], sums[1], sums[2], new_carry

    def _accumulate(local_params: Any, carry: Any, batch: Batch, key: jax.Array,
                    scale: jax.Array, global_targets: int
                    ) -> tuple[Any, Any, jax.Array, jax.Array, jax.Array]:
        """The k segments' gradients in turn (a scan), summed in float32."""
        rows, width = batch["targets"].shape
        segments = {name: jnp.swapaxes(x.reshape(rows, k_accum, width // k_accum), 0, 1)
                    for name, x in batch.items()}  # [k, rows, S]
        varying = lambda x: jax.lax.pcast(x, DATA_AXIS, to="varying")  # as the loop's outputs
        zeros = varying(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), local_params))
        zero = varying(jnp.zeros((), jnp.float32))

        def body(acc: tuple, segment_and_index: tuple) -> tuple[tuple, None]:
            grads_sum, seg_carry, nats_sum, count_sum, bytes_sum = acc
            segment, j = segment_and_index
            grads, (seg_carry, nats, count) = segment_grads(
                local_params, seg_carry, segment, jax.random.fold_in(key, j), scale,
                global_targets, penalty_weight=1.0 / k_accum, count_weights=batch["weights"])
            grads_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_sum, grads)
            return (grads_sum, jax.lax.stop_gradient(seg_carry), nats_sum + nats,
                    count_sum + count, bytes_sum + _bytes(segment, count, byte_lengths)), None

        (grads, new_carry, nats, count, num_bytes), _ = jax.lax.scan(
            body, (zeros, carry, zero, zero, zero), (segments, jnp.arange(k_accum)))
        return grads, new_carry, nats, count, num_bytes

    def segment_grads(local_params: Any, carry: Any, batch: Batch, key: jax.Array,
                      scale: jax.Array, global_targets: int, penalty_weight: float = 1.0,
                      count_weights: jax.Array | None = None
                      ) -> tuple[Any, tuple[Any, jax.Array, jax.Array]]:
        """Gradients of one segment's summed loss (scaled; see loss_fn), local to the device.

        ``count_weights``: the weights of the whole step's batch (all segments), whose global
        sum is the count the final correction divides by (default: this batch's)."""
        rows = batch["targets"].shape[0]
        row_keys = step_key = None
        if dropout:
            row_keys = row_dropout_keys(key, jax.lax.axis_index(DATA_AXIS) * rows, rows)
            step_key = step_dropout_key(key)

        def loss_fn(p: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
            model = nnx.merge(graphdef, p)
            nats, count, new_carry, penalty = lm_loss_sums(
                model, batch["inputs"], carry, batch["resets"], batch["targets"], batch["weights"],
                dropout_key=row_keys, step_key=step_key)
            # Normalized by the static number of target slots (corrected after the reduction),
            # times the loss scale S (1 unless float16).
            loss = nats * (scale / global_targets)
            if penalty is not None:
                # The mean penalty over the global batch's rows, pre-multiplied by
                # count/global_targets so that the correction below (global_targets/count)
                # leaves it unscaled: d(mean NLL + mean penalty). Costs one scalar psum.
                weights = batch["weights"] if count_weights is None else count_weights
                global_count = jnp.maximum(
                    jax.lax.psum(jnp.sum(weights.astype(jnp.float32)), DATA_AXIS), 1.0)
                global_rows = rows * jax.lax.axis_size(DATA_AXIS)
                loss = loss + (penalty_weight * jnp.sum(penalty) / global_rows) * (
                    jax.lax.stop_gradient(global_count) * scale / global_targets)
            return loss, (new_carry, nats, count)

        return jax.grad(loss_fn, has_aux=True)(local_params)

    sharded_grads = jax.shard_map(
        local_grads, mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(), P()),
        out_specs=(P(), P(), P(), P(), P(DATA_AXIS)))

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.rng, state.step)
        ls = state.loss_scale
        scaled, nats, count, num_bytes, carry = sharded_grads(state.params, state.carry, batch, key,
                                                              ls.scale)
        global_targets = batch["targets"].shape[0] * batch["targets"].shape[1]
        correction = global_targets / jnp.maximum(count, 1.0)  # -> mean over counted targets
        grads = jax.tree.map(lambda g: g * (correction / ls.scale), scaled)
        lr_factor = batch["targets"].shape[1] / lr_length_base if lr_length_base else None
        params, opt_state, finite = apply_update(tx, state, grads, lr_factor)
        acc = {"nats": state.acc["nats"] + nats, "count": state.acc["count"] + count,
               "bytes": state.acc["bytes"] + num_bytes, "steps": state.acc["steps"] + 1}
        # A row whose state overflowed (float16) would carry NaN into every later batch of
        # its text (each step then skipped): its state starts afresh instead.
        carry = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0), carry)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  carry=jax.lax.stop_gradient(carry), acc=acc,
                                  loss_scale=ls.update(finite))
        # The learning rate of this step's update: the schedule at the optimizer's own count,
        # which does not advance on skipped (float16 overflow) steps.
        metrics = {"loss": mean_loss(nats, count), "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(schedule_count(state.opt_state, state.step)) * (lr_factor or 1.0),
                   "finite": finite}
        return new_state, metrics

    return train_step


def allreduce(grads: Any, sums: jax.Array, dtype: Any = jnp.float32) -> tuple[Any, jax.Array]:
    """Inside shard_map: the step's one all-reduce, of the gradients (any pytree) and a float32
    vector of sums [n] together as one flat float32 vector. Returns (summed grads, summed sums).

    ``dtype`` bfloat16: the gradients travel (and are summed, as the backend does it) in
    bfloat16, half the bytes; the sums then go in a second, tiny float32 all-reduce (token
    counts past 2^8 are not exact in bfloat16). The result is float32 either way."""
    flat, unravel = ravel_pytree(grads)
    n = sums.shape[0]
    if jnp.dtype(dtype) != jnp.float32:
        total = jax.lax.psum(flat.astype(dtype), DATA_AXIS).astype(jnp.float32)
        return unravel(total), jax.lax.psum(sums.astype(jnp.float32), DATA_AXIS)
    total = jax.lax.psum(jnp.concatenate([flat.astype(jnp.float32), sums.astype(jnp.float32)]),
                         DATA_AXIS)
    return unravel(total[:-n]), total[-n:]


def apply_update(tx: optax.GradientTransformation, state: TrainState, grads: Any,
                 lr_factor: float | None = None) -> tuple[Any, Any, jax.Array]:
    """The optimizer update of true (unscaled) ``grads``; with dynamic loss scaling the update is
    skipped when any gradient is not finite. Returns (params, opt_state, finite).
    ``lr_factor``: this step's learning-rate factor, passed to ``tx`` (None: none)."""
    ls = state.loss_scale
    finite = all_finite(grads) if ls.dynamic else jnp.asarray(True)
    extra = {} if lr_factor is None else {"lr_factor": lr_factor}
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    if ls.dynamic:  # skip the update when the float16 gradients overflowed
        params = select_tree(finite, params, state.params)
        opt_state = select_tree(finite, opt_state, state.opt_state)
    return params, opt_state, finite


def make_eval_step(graphdef: nnx.GraphDef, byte_lengths: np.ndarray | None = None
                   ) -> Callable[[Any, Any, Batch], tuple[Any, jax.Array]]:
    """Returns ``eval_step(params, carry, batch) -> (carry, sums)``; no dropout.

    ``sums`` float32 [3]: nats, counted targets and their bytes of this batch (each exact
    per batch; the caller accumulates them on the host in float64).
    """

    def eval_step(params: Any, carry: Any, batch: Batch) -> tuple[Any, jax.Array]:
        model = nnx.merge(graphdef, params)
        nats, count, carry, _ = lm_loss_sums(model, batch["inputs"], carry, batch["resets"],
                                             batch["targets"], batch["weights"])
        return carry, jnp.stack([nats, count, _bytes(batch, count, byte_lengths)])

    return eval_step


def _bytes(batch: Batch, count: jax.Array, byte_lengths: np.ndarray | None) -> jax.Array:
    """Bytes of text behind the batch's counted targets (= count without a table)."""
    if byte_lengths is None:
        return count
    return byte_count(batch["targets"], batch["weights"], byte_lengths)
