"""Discriminative fine-tuning (ULMFiT): each LM layer learns at its own rate, lower ones slower.

With ``finetune.layer_lr_decay`` = d, the LM's parameters are grouped by depth from the top:
group 0 is the last layer with what sits above it (the decoder or output head, a final norm),
group g the layer g below the last, and the embeddings (token and position) the bottom group,
one below the first layer. Group g learns at the LM's rate / d^g (ULMFiT: d = 2.6); d = 1 puts
every layer at the LM's rate. The head has its own rate (``finetune.head_lr``).

Depth is read from the parameter paths every lmscale LM uses: ``layers[i]`` (recurrent layers,
a list), ``blocks`` (a transformer's layers stacked along a leading axis: one factor per
row), ``embedding`` / ``position_embedding``; every other LM parameter is at the top.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lmscale.config import ConfigError
from lmscale.models.param_paths import path_names
from lmscale.models.transformer import STACKED_LAYERS

EMBEDDINGS = ("embedding", "position_embedding")


def group_of(path: tuple, num_layers: int, row: int | None = None) -> int | None:
    """The depth group of an LM parameter (0 = the top, ``num_layers`` = the embeddings; module
    docstring); for a stacked leaf (one layer a row), that of its row ``row``, None without."""
    keys = list(path_names(path))
    if STACKED_LAYERS in keys:
        return None if row is None else num_layers - 1 - row
    if "layers" in keys[:-1]:
        return num_layers - 1 - int(keys[keys.index("layers") + 1])
    if any(k in EMBEDDINGS for k in keys):
        return num_layers
    return 0


def layer_factor(decay: float, num_layers: int) -> Callable[[tuple, Any], Any]:
    """``factor(path, leaf)``: the leaf's rate factor, 1 / decay^group (module docstring); an
    array of one factor per layer, broadcast along the leaf, for a stacked leaf."""
    def factor(path: tuple, leaf: Any) -> Any:
        group = group_of(path, num_layers)
        if group is None:  # [L, ...]: row l is layer l (0 the lowest)
            depth = num_layers - 1 - jnp.arange(leaf.shape[0], dtype=jnp.float32)
            return (decay ** -depth).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return decay ** -float(group)
    return factor


def factors_by_name(params: Any, decay: float, num_layers: int) -> dict[str, Any]:
    """{path string: factor} of every leaf (what a user or a test reads; plain floats, or
    a list per layer for a stacked leaf)."""
    factor = layer_factor(decay, num_layers)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        f = factor(path, leaf)
        out[jax.tree_util.keystr(path)] = (float(f) if jnp.ndim(f) == 0 else
                                           [float(x) for x in jnp.ravel(f)])
    return out


def checked(decay: float, num_layers: int) -> Callable[[tuple, Any], Any] | None:
    """``layer_factor`` for ``finetune.layer_lr_decay`` (None at 1: every layer at the LM's
    rate); refuses a non-positive decay."""
    if not 0 < decay < float("inf"):  # NaN too
        raise ConfigError(f"finetune.layer_lr_decay must be a finite number > 0 (1 = every LM "
                          f"layer at the LM's rate, ULMFiT 2.6), got {decay}")
    return None if decay == 1.0 else layer_factor(decay, num_layers)


def peak_rates(lr: float, decay: float, num_layers: int) -> list[float]:
    """The LM's peak rate of each group, from the top layer down to the embeddings (what
    config.json's derived values record)."""
    return [lr / decay ** g for g in range(num_layers + 1)]


def unfreeze_starts(unfreeze_every: int, freeze_steps: int, num_layers: int) -> list[int] | None:
    """Gradual unfreezing (ULMFiT; ``finetune.unfreeze_every``): the step each depth group starts
    training, top first: freeze_steps, then one more group every ``unfreeze_every`` steps
    down to the embeddings; None when off (0: the whole LM at ``freeze_steps``)."""
    if unfreeze_every < 0:
        raise ConfigError(f"finetune.unfreeze_every must be >= 0 (0 = the whole LM unfreezes "
                          f"at once), got {unfreeze_every}")
    if not unfreeze_every:
        return None
    return [freeze_steps + g * unfreeze_every for g in range(num_layers + 1)]


def optimizer_groups(starts: list[int] | None, decay: float, num_layers: int) -> Any:
    """``make_finetune_optimizer``'s ``groups`` for gradual unfreezing: (group of a path, each
    group's start, each group's rate factor); None when off."""
    if starts is None:
        return None
    return (functools.partial(group_of, num_layers=num_layers), starts,
            peak_rates(1.0, decay, num_layers))


def unfrozen_groups(step: int, starts: list[int] | None, freeze_steps: int,
                    num_layers: int) -> int:
    """How many LM depth groups train at ``step`` (0-based), top first: all or none without
    gradual unfreezing."""
    if starts is None:
        return num_layers + 1 if step >= freeze_steps else 0
    return sum(step >= s for s in starts)


def trains_top(groups: int, num_layers: int) -> Callable[[tuple], Any] | None:
    """``trains(path)``: whether an LM parameter is among the top ``groups`` groups — a bool,
    or for a stacked leaf a bool per row (numpy [num_layers]); None when every group trains."""
    if groups >= num_layers + 1:
        return None

    def trains(path: tuple) -> Any:
        group = group_of(path, num_layers)
        if group is None:  # row l is layer l: group num_layers - 1 - l
            rows = np.arange(num_layers) >= num_layers - groups
            return bool(rows[0]) if rows.all() or not rows.any() else rows
        return group < groups
    return trains


def _group_name(g: int, num_layers: int) -> str:
    return "embeddings" if g == num_layers else f"layer {num_layers - 1 - g}"


def ungrouped_note(lm_params: Any, num_layers: int, decay: float,
                   unfreeze_every: int) -> str | None:
    """A warning when layer-wise rates or unfreezing are asked for and no LM parameter lies
    below the top group (a model family of one's own whose parameters are not named
    ``layers[i]`` / ``embedding``: every parameter at the top's rate, unfrozen with it)."""
    if decay == 1.0 and not unfreeze_every:
        return None
    leaves = jax.tree_util.tree_flatten_with_path(lm_params)[0]
    if any(group_of(path, num_layers) != 0 for path, _ in leaves):
        return None
    return ("warning: finetune.layer_lr_decay / unfreeze_every group the LM's parameters by "
            "their names (layers[i], embedding), and none of this LM's has them: all train as "
            "its top layer (lmscale/models/registry.py: the conventions)")


def rates_note(lr: float, decay: float, num_layers: int) -> str | None:
    """A start-up line with each group's peak rate (``layer_lr_decay`` != 1)."""
    if decay == 1.0:
        return None
    rates = peak_rates(lr, decay, num_layers)
    return ("discriminative rates: " + ", ".join(
        f"{_group_name(g, num_layers)} {r:.3g}" for g, r in enumerate(rates)) +
        (" (lower layers faster than the top: layer_lr_decay < 1)" if decay < 1 else ""))


def unfreezing_note(starts: list[int] | None, steps: int, decay_steps: int | None = None,
                    warmup_steps: int = 0) -> str | None:
    """A start-up line with the plan (steps count applied updates: float16's skipped steps
    apply none), the groups it never reaches within ``steps``, and those whose schedule
    (from their start to ``decay_steps``) ends within its warmup."""
    if starts is None:
        return None
    layers = len(starts) - 1
    names = [f"{_group_name(g, layers)} from step {s}" for g, s in enumerate(starts)]
    late = [_group_name(g, layers) for g, s in enumerate(starts) if s >= steps]
    horizon = steps if decay_steps is None else decay_steps
    past = [_group_name(g, layers) for g, s in enumerate(starts) if horizon <= s < steps]
    short = [_group_name(g, layers) for g, s in enumerate(starts)
             if s < min(steps, horizon) and warmup_steps and horizon - s <= warmup_steps]
    return ("gradual unfreezing: " + ", ".join(names) +
            (f"; {', '.join(late)} start(s) at or after train.steps={steps} and stay frozen"
             if late else "") +
            (f"; {', '.join(past)} start(s) at or after the decay horizon (step {horizon}): at "
             "the rate the schedule ends at" if past else "") +
            (f"; {', '.join(short)} start(s) within optim.warmup_steps={warmup_steps} of the "
             f"decay horizon (step {horizon}): the warmup runs past it" if short else ""))
