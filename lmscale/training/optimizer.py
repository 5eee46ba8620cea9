"""The optimizer: clip by global norm, Adam, and the learning-rate schedule, as one optax chain;
for fine-tuning, one Adam per part (LM, head) with its own learning rate and an optional freeze.

AWD-LSTM's optimization (``optim.name`` "sgd" / "ntasgd", ``optim.weight_decay``,
``optim.lr_drop_epochs``) adds links to the same chain, in torch's order: clip, then coupled L2
(``g + wd * p``, as torch SGD/Adam ``weight_decay``), then SGD or Adam, the learning rate
(with its step drops), the variable-BPTT factor of the step (``step_factor``), and for
NT-ASGD the running average of the weights (``ntasgd.average_after_switch``). The default
("adam", no decay, no drops) is exactly the chain it always was. Decoupled weight decay
(``optim.weight_decay_style="decoupled"``, AdamW) comes after Adam's scaling instead, so the
step is ``lr * (adam(g) + wd * p)``; ``optim.weight_decay_on="matrices"`` masks it to the
parameters of two or more dimensions (GPT-2's and nanoGPT's rule).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmscale.config_values import AVERAGING_OPTIMIZERS, OPTIMIZERS
from lmscale.models.param_paths import path_names
from lmscale.models.transformer import STACKED_LAYERS
from lmscale.training.ntasgd import average_after_switch
from lmscale.training.schedules import make_schedule, with_drops


def make_optimizer(optim: ml_collections.ConfigDict, decay_steps: int, lr: float | None = None, *,
                   lr_drop_steps: tuple[int, ...] | list[int] = (), step_factor: bool = False
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (transformation, schedule); the schedule is also used to log the learning rate.

    ``lr`` is the peak learning rate after batch-size scaling (``config.derive``'s "lr");
    None uses ``optim.lr`` as is. ``lr_drop_steps``: steps (``derived["lr_drop_steps"]``) after
    which the rate is multiplied by ``optim.lr_drop_factor``. ``step_factor``: the update is
    also scaled by the ``lr_factor`` passed to ``tx.update`` (variable BPTT: length / seq_len).
    """
    schedule = make_schedule(optim.schedule, optim.lr if lr is None else lr,
                             warmup_steps=optim.warmup_steps, decay_steps=decay_steps,
                             ratio=optim.stlr_ratio, cut_frac=optim.stlr_cut_frac)
    if lr_drop_steps:
        schedule = with_drops(schedule, lr_drop_steps, optim.lr_drop_factor)
    name = optim.get("name", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {list(OPTIMIZERS)}, got {name!r}")
    parts = []
    if optim.clip > 0:
        parts.append(optax.clip_by_global_norm(optim.clip))
    parts += scaled_with_decay(optim, schedule, adam=name == "adam")
    if step_factor:
        parts.append(scale_by_step_factor())
    if name in AVERAGING_OPTIMIZERS:
        parts.append(average_after_switch(from_start=name == "asgd"))
    return optax.chain(*parts), schedule


def weight_decay(optim: ml_collections.ConfigDict) -> tuple[list, list]:
    """The weight-decay link as (before, after) the optimizer's scaling: coupled L2 before
    (``g + wd * p``), decoupled (AdamW) after; both empty when ``optim.weight_decay`` is 0.
    ``optim.weight_decay_on="matrices"`` decays only parameters of 2+ dimensions."""
    wd = optim.get("weight_decay", 0.0)
    if wd <= 0:
        return [], []
    mask = matrices if optim.get("weight_decay_on", "all") == "matrices" else None
    link = [optax.add_decayed_weights(wd, mask)]
    return ([], link) if optim.get("weight_decay_style", "coupled") == "decoupled" else (link, [])


def matrices(params: Any) -> Any:
    """``params``' tree of bools: True for a weight matrix (2+ dimensions per layer; the leading
    layer axis of a transformer's stacked ``blocks`` not counted), False for biases, norm
    scales and weight-norm gains."""
    def is_matrix(path: tuple, p: Any) -> bool:
        stacked = STACKED_LAYERS in path_names(path)
        return jnp.ndim(p) - int(stacked) >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def scaled_with_decay(optim: ml_collections.ConfigDict, schedule: optax.Schedule, *,
                      adam: bool, rate: Any = None) -> list[optax.GradientTransformation]:
    """The links from the (clipped) gradient to the step: weight decay where its style puts
    it, Adam's scaling (``adam``; else plain SGD), and the learning rate ``schedule``
    (``rate``: a transformation of the schedule to use instead, with the same state)."""
    before, after = weight_decay(optim)
    scale = [optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)] if adam else []
    return before + scale + after + [rate or optax.scale_by_learning_rate(schedule)]


def scale_by_rate_per_leaf(schedule: optax.Schedule, factor: Callable[[tuple, Any], Any]
                           ) -> optax.GradientTransformation:
    """``optax.scale_by_learning_rate(schedule)`` with each leaf's rate times ``factor(path,
    leaf)`` (a scalar, or an array broadcast along the leaf): the same state
    (``ScaleByScheduleState``), so a checkpoint's optimizer state fits whatever the factors."""
    plain = optax.scale_by_learning_rate(schedule)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        scaled, new_state = plain.update(updates, state, params)
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * jnp.asarray(factor(path, u), u.dtype), scaled), new_state

    return optax.GradientTransformation(plain.init, update)


def scale_by_step_factor() -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by the ``lr_factor`` extra argument of ``update`` (default 1):
    the step's learning-rate factor (variable BPTT scales the rate by length / seq_len)."""

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None, *, lr_factor: Any = None,
               **extra: Any) -> tuple[Any, optax.EmptyState]:
        del params, extra
        if lr_factor is None:
            return updates, state
        return jax.tree.map(lambda u: u * jnp.asarray(lr_factor, u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class HoldState(NamedTuple):
    count: Any  # int32 scalar: updates seen (held or not)
    inner: optax.OptState


def hold_for(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """``inner``, but its first ``steps`` updates are zeros and leave its state untouched (a
    frozen part of the model: parameters bit-identical, Adam moments and schedule not started)."""

    def init(params: Any) -> HoldState:
        return HoldState(count=jnp.zeros((), jnp.int32), inner=inner.init(params))

    def update(updates: Any, state: HoldState, params: Any = None) -> tuple[Any, HoldState]:
        new_updates, new_inner = inner.update(updates, state.inner, params)
        held = state.count < steps
        new_updates = jax.tree.map(lambda u: jnp.where(held, jnp.zeros_like(u), u), new_updates)
        new_inner = jax.tree.map(lambda a, b: jnp.where(held, a, b), state.inner, new_inner)
        return new_updates, HoldState(count=state.count + 1, inner=new_inner)

    return optax.GradientTransformation(init, update)


def part(path: tuple) -> str:
    """A classifier parameter's part, "lm" or "head": the top-level key of its path."""
    return path_names(path[:1])[0]


def make_finetune_optimizer(optim: ml_collections.ConfigDict, decay_steps: int, *, lr: float,
                            head_lr: float, freeze_steps: int, layer_factor: Any = None,
                            groups: Any = None
                            ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """Clip by global norm, then Adam (with ``optim.weight_decay`` as configured) per part (``optax.multi_transform`` over the top-level
    keys "lm" and "head" of the parameters): the head at ``head_lr`` from step 0, the LM at
    ``lr`` held for its first ``freeze_steps`` updates, its schedule running over the rest;
    ``layer_factor(path, leaf)`` (``finetuning.layer_rates``): each LM leaf's rate factor.
    ``groups`` (gradual unfreezing): (group_of(path, row=None) -> int, [start step of each
    group], [rate factor of each group]): the LM is one Adam per depth group ("lm0" the top,
    ...), each held until its start, its schedule running from there at ``lr`` times its factor
    (``layer_factor`` is then unused); a leaf whose group_of is None stacks one layer a row
    (a transformer's blocks): each row joins its layer's group (``multi_transform_by_rows``).
    Returns (transformation, {"lm": schedule, "head": schedule}) (schedules of each part's count;
    the LM's is its top layer's)."""
    def sched(peak: float, steps: int) -> optax.Schedule:
        return make_schedule(optim.schedule, peak, warmup_steps=optim.warmup_steps,
                             decay_steps=max(steps, optim.warmup_steps + 1),
                             ratio=optim.stlr_ratio, cut_frac=optim.stlr_cut_frac)

    schedules = {"lm": sched(lr, decay_steps - freeze_steps), "head": sched(head_lr, decay_steps)}
    adam = lambda s, rate=None: optax.chain(*scaled_with_decay(optim, s, adam=True, rate=rate))
    parts = {"head": adam(schedules["head"])}
    if groups is None:
        lm_rate = None if layer_factor is None else scale_by_rate_per_leaf(schedules["lm"], layer_factor)
        parts["lm"] = hold_for(adam(schedules["lm"], lm_rate), freeze_steps)
        tx = optax.multi_transform(parts, lambda params: jax.tree_util.tree_map_with_path(
            lambda path, _: part(path), params))
    else:
        group_of, starts, factors = groups
        for g, (start, factor) in enumerate(zip(starts, factors)):
            # A group starting at or after the decay horizon: at the rate a schedule of this kind
            # ends at, as the rest of the LM by then (linear, cosine: 0; constant: its peak).
            schedules[f"lm{g}"] = (sched(lr * factor, decay_steps - start) if start < decay_steps
                                   else optax.constant_schedule(
                                       float(sched(lr * factor, 1)(2 ** 30))))
            parts[f"lm{g}"] = hold_for(adam(schedules[f"lm{g}"]), start)
        schedules["lm"] = schedules["lm0"]
        tx = multi_transform_by_rows(
            parts, lambda path, row: "head" if part(path) == "head" else f"lm{group_of(path, row=row)}",
            stacked=lambda path: part(path) == "lm" and group_of(path) is None)
    if optim.clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.clip), tx)
    return tx, schedules


def multi_transform_by_rows(parts: dict[str, optax.GradientTransformation],
                            label: Callable[[tuple, int | None], str],
                            stacked: Callable[[tuple], bool]) -> optax.GradientTransformation:
    """``optax.multi_transform(parts, ...)`` where a leaf that ``stacked(path)`` marks ([L, ...],
    one layer a row) is split into its L rows, each labeled ``label(path, row)`` with a state of
    its own (its own Adam moments and count: a transformer's block joins the training at its
    own step); other leaves are labeled ``label(path, None)``. The rows' updates are stacked
    back. A tree without stacked leaves gets the plain ``multi_transform`` and its state."""
    def rows(tree: Any) -> tuple[list[Any], list[str]] | None:
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        if not any(stacked(path) for path, _ in flat):
            return None
        leaves, labels = [], []
        for path, x in flat:
            split = stacked(path)
            leaves += [x[i] for i in range(x.shape[0])] if split else [x]
            labels += [label(path, i) for i in range(x.shape[0])] if split else [label(path, None)]
        return leaves, labels

    def plain(tree: Any) -> optax.GradientTransformation:
        return optax.multi_transform(parts, lambda t: jax.tree_util.tree_map_with_path(
            lambda path, _: label(path, None), t))

    def init(params: Any) -> Any:
        split = rows(params)
        return plain(params).init(params) if split is None else \
            optax.multi_transform(parts, split[1]).init(split[0])

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        split = rows(updates)
        if split is None:
            return plain(updates).update(updates, state, params)
        leaves, labels = split
        new, state = optax.multi_transform(parts, labels).update(
            leaves, state, None if params is None else rows(params)[0])
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        it = iter(new)
        return treedef.unflatten([jnp.stack([next(it) for _ in range(x.shape[0])])
                                  if stacked(path) else next(it) for path, x in flat]), state

    return optax.GradientTransformation(init, update)


def finetune_applied_lrs(opt_state: Any, schedules: dict[str, optax.Schedule],
                         freeze_steps: int) -> tuple[jax.Array, jax.Array]:
    """(head, LM) learning rates of the last update :func:`make_finetune_optimizer`'s state
    ``opt_state`` applied, read from its own counts: a skipped step (float16 overflow) advances
    none of them, so a rate computed from the step number ran ahead of the one applied. The
    LM's is 0 while it was held (frozen)."""
    is_partition = lambda x: isinstance(x, optax.PartitionState)
    parts = next(s for s in jax.tree.leaves(opt_state, is_leaf=is_partition) if is_partition(s))
    is_hold = lambda x: isinstance(x, HoldState)
    lm = parts.inner_states["lm" if "lm" in parts.inner_states else "lm0"]  # lm0: the top group
    hold = next(s for s in jax.tree.leaves(lm, is_leaf=is_hold) if is_hold(s))
    head_count = schedule_count(parts.inner_states["head"])
    lm_count = schedule_count(hold.inner)
    head = schedules["head"](jnp.maximum(head_count - 1, 0))
    lm = jnp.where(hold.count <= freeze_steps, 0.0, schedules["lm"](jnp.maximum(lm_count - 1, 0)))
    return head, lm


def schedule_count(opt_state: Any, default: jax.Array | None = None) -> jax.Array:
    """The count of the (first) learning-rate schedule in ``opt_state`` (``default`` if it has
    none)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(s)]
    return found[0].count if found else default
