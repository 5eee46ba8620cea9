"""The fine-tuning step, jitted over the run's mesh (prediction: ``predict.Predictor``).

The same machinery as LM training (lmscale.training.steps): the loss and its gradients run per
device under ``jax.shard_map`` on the device's rows, the parameters marked device-varying so
each device's gradient stays local, then gradients and metric sums are reduced by the one
all-reduce of the step (``steps.allreduce``); the optimizer update with float16 loss-scale
skipping is ``steps.apply_update``. Loss weights come normalized over the global batch (see
data.py), so the summed loss is the batch mean whatever the device count.

A batch: tokens int32 [B, W], lengths int32 [B], labels int32 [B] or float32 [B, K],
row_weights float32 [B], lm_weights float32 [B, W].

Loss = classification loss + ``aux_weight`` x next-token LM loss on the texts, whose targets
are the real tokens only (``lm_weights``; sentiment-discovery's mask counted the padding).
With ``grad_tokens`` (``finetune.grad_tokens``), a batch wider than that is read in pieces
and back-propagated through each text's last ``grad_tokens`` tokens only (truncated.py).

With ``dropout`` each row gets a key (``row_dropout_keys``, so 1 and N devices draw alike):
the head's dropout and, for a classifier built with them (``finetune.lm_dropout``), the LM's
own, its per-pass masks (embedding dropout, weight drop) from the step's key.

While the LM is frozen (``train_lm`` False) its parameters are under ``stop_gradient``: no
backward pass through it, its gradients are zeros and only the head's are all-reduced. With
``trains`` (gradual unfreezing: a predicate on a parameter's path), the same holds for each
parameter it leaves out; for a stacked leaf it may give a bool per row (the rows it leaves
out get zero gradients; a transformer's leading frozen blocks run forward only, scanned apart:
``TransformerLM.frozen_layers``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from lmscale.finetuning import truncated
from lmscale.training.loss import cross_entropy_sums
from lmscale.training.mesh import DATA_AXIS
from lmscale.training.optimizer import part
from lmscale.training.state import TrainState
from lmscale.training.steps import allreduce, apply_update, row_dropout_keys, step_dropout_key

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "lengths", "labels", "row_weights", "lm_weights")
SUMS = ("loss", "aux_loss", "correct", "rows")  # per-step metric sums, in the all-reduce


def classification_loss(logits: jax.Array, labels: jax.Array, row_weights: jax.Array,
                        multilabel: bool, class_weights: jax.Array | None = None,
                        pos_weights: jax.Array | None = None) -> jax.Array:
    """Weighted sum over rows of the softmax cross entropy (labels [B]) or of the mean over
    classes of the sigmoid cross entropy (labels [B, K], times ``class_weights`` [K]), its
    positive term -y log(sigmoid(z)) times ``pos_weights`` [K] (PyTorch's ``pos_weight``)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        if labels.shape != logits.shape:  # [B] against [B, 1] would broadcast to [B, B]
            raise ValueError(f"multi-label labels {labels.shape} must have the logits' shape "
                             f"{logits.shape}")
        y = labels.astype(jnp.float32)
        if pos_weights is None:
            per = optax.sigmoid_binary_cross_entropy(logits, y)
        else:
            per = -(pos_weights * y * jax.nn.log_sigmoid(logits)
                    + (1.0 - y) * jax.nn.log_sigmoid(-logits))
        if class_weights is not None:
            per = per * class_weights
        per_row = jnp.mean(per, axis=-1)
    else:
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
    return jnp.sum(per_row * row_weights)


def aux_lm_loss(lm_logits: jax.Array, tokens: jax.Array, lm_weights: jax.Array) -> jax.Array:
    """Weighted next-token NLL: position t predicts tokens[:, t + 1] with weight lm_weights[:, t]
    (logits [B, W, V], tokens [B, W], weights [B, W]; the last column has no target)."""
    nats, _ = cross_entropy_sums(lm_logits[:, :-1], tokens[:, 1:], lm_weights[:, :-1])
    return nats


def correct_count(logits: jax.Array, labels: jax.Array, row_weights: jax.Array,
                  multilabel: bool) -> tuple[jax.Array, jax.Array]:
    """(right answers, real rows): argmax == label, or the fraction of labels right at p > 0.5."""
    real = (row_weights > 0).astype(jnp.float32)
    if multilabel:
        right = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32), axis=-1)
    else:
        right = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(right * real), jnp.sum(real)


def make_finetune_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, *,
                       multilabel: bool, class_weights: np.ndarray | None, aux_weight: float,
                       pos_weights: np.ndarray | None = None,
                       train_lm: bool, dropout: bool, grad_reduce_dtype: Any = jnp.float32,
                       grad_tokens: int = 0, trains: Callable[[tuple], bool] | None = None
                       ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns ``step(state, batch) -> (state, metrics)``; pure, to be jitted over ``mesh``.

    ``state.acc`` accumulates the SUMS and "steps" between train log records.
    ``grad_reduce_dtype``: the gradients' dtype in the all-reduce (``parallel.grad_reduce_dtype``).
    """
    cw = None if class_weights is None or not multilabel else jnp.asarray(class_weights, jnp.float32)
    pw = None if pos_weights is None else jnp.asarray(pos_weights, jnp.float32)
    # A parameter trains wholly (True), not at all (False), or in some rows (a stacked leaf's
    # bool per row: a transformer's blocks joining one by one).
    training = lambda path: part(path) == "head" or (train_lm and (trains is None or trains(path)))
    frozen = lambda path: training(path) is False
    frozen_any = not train_lm or trains is not None

    def hold(path: tuple, x: jax.Array) -> jax.Array:
        rows = training(path)
        if rows is True:
            return x
        if rows is False:
            return jax.lax.stop_gradient(x)
        return jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), x, jax.lax.stop_gradient(x))

    def local(params: Any, batch: Batch, key: jax.Array, scale: jax.Array) -> tuple[Any, jax.Array]:
        rows = batch["tokens"].shape[0]
        keys = row_dropout_keys(key, jax.lax.axis_index(DATA_AXIS) * rows, rows) if dropout else None
        step_key = step_dropout_key(key) if dropout else None  # the same on every device
        local_params = jax.lax.pcast(params, DATA_AXIS, to="varying")
        carry = jax.lax.pcast(nnx.merge(graphdef, params).lm.initial_carry(rows), DATA_AXIS,
                              to="varying")
        lm_in = {"tokens": batch["tokens"], "lm_weights": batch["lm_weights"], "resets": None}
        in_pieces = truncated.splits(batch["tokens"].shape[1], grad_tokens)
        if in_pieces:  # the text before its last piece: read here, outside the gradient
            aligned = truncated.aligned_batch(batch["tokens"], batch["lengths"],
                                              batch["lm_weights"], grad_tokens)
            lm_in = truncated.last_piece(aligned, grad_tokens)
            # The auxiliary loss: the mean over the last pieces' targets of the global batch.
            total = jax.lax.psum(jnp.sum(lm_in["lm_weights"]), DATA_AXIS)
            lm_in["lm_weights"] = jnp.where(total > 0, lm_in["lm_weights"] / total, 0.0)
            prefix = truncated.read_prefix(nnx.merge(graphdef, local_params), aligned,
                                           grad_tokens, carry, keys, step_key)

        def loss_fn(p: Any) -> tuple[jax.Array, jax.Array]:
            frozen_rows = 0
            if frozen_any:
                masks = [m for m in (training(path) for path, _ in
                                     jax.tree_util.tree_flatten_with_path(p)[0])
                         if not isinstance(m, bool)]
                frozen_rows = int(np.argmax(masks[0])) if masks else 0  # leading False rows
                p = jax.tree_util.tree_map_with_path(hold, p)
            model = nnx.merge(graphdef, p)
            if frozen_rows:  # its lowest blocks run apart, forward only (models/transformer.py)
                model.lm.frozen_layers = frozen_rows
            if in_pieces:
                features = truncated.window_features(model, lm_in, batch["lengths"], prefix,
                                                     keys, step_key)
                logits, lm_carry = model.head(features, keys), prefix[0]
            else:
                logits = model(batch["tokens"], batch["lengths"], keys, carry, step_key)
                lm_carry = carry
            loss = classification_loss(logits, batch["labels"], batch["row_weights"], multilabel, cw,
                                       pw)
            aux = jnp.zeros((), jnp.float32)
            if aux_weight > 0:  # in pieces: the last piece's targets only
                aux = aux_lm_loss(model.lm_logits(lm_in["tokens"], lm_carry, lm_in["resets"]),
                                  lm_in["tokens"], lm_in["lm_weights"])
            right, real = correct_count(logits, batch["labels"], batch["row_weights"], multilabel)
            return (loss + aux_weight * aux) * scale, jnp.stack([loss, aux, right, real])

        grads, sums = jax.grad(loss_fn, has_aux=True)(local_params)
        if not frozen_any:
            return allreduce(grads, sums, grad_reduce_dtype)
        # Frozen parameters' gradients are zeros on every device; reduce the others only.
        flat, treedef = jax.tree_util.tree_flatten_with_path(grads)
        trained = [g for path, g in flat if not frozen(path)]
        trained, sums = allreduce(trained, sums, grad_reduce_dtype)
        it = iter(trained)
        zeros = [jnp.zeros_like(x) for x in jax.tree.leaves(params)]  # replicated, not varying
        return jax.tree_util.tree_unflatten(
            treedef, [z if frozen(path) else next(it) for (path, _), z in zip(flat, zeros)]), sums

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                            out_specs=(P(), P()))

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.rng, state.step)
        ls = state.loss_scale
        scaled, sums = sharded(state.params, batch, key, ls.scale)
        grads = jax.tree.map(lambda g: g / ls.scale, scaled)
        params, opt_state, finite = apply_update(tx, state, grads)
        acc = {k: state.acc[k] + sums[i] for i, k in enumerate(SUMS)}
        acc["steps"] = state.acc["steps"] + 1
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  acc=acc, loss_scale=ls.update(finite))
        return new_state, {"grad_norm": optax.tree.norm(grads), "finite": finite}

    return step


def zero_acc() -> dict[str, jax.Array]:
    """The running sums of a fine-tuning state (float32 SUMS and int32 steps)."""
    return {**{k: jnp.zeros((), jnp.float32) for k in SUMS}, "steps": jnp.zeros((), jnp.int32)}
