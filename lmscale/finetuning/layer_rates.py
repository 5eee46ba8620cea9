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

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lmscale.config import ConfigError
from lmscale.models.transformer import STACKED_LAYERS

EMBEDDINGS = ("embedding", "position_embedding")


def _keys(path: tuple) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]


def layer_factor(decay: float, num_layers: int) -> Callable[[tuple, Any], Any]:
    """``factor(path, leaf)``: the leaf's rate factor, 1 / decay^group (module docstring); an
    array of one factor per layer, broadcast along the leaf, for a stacked leaf."""
    def factor(path: tuple, leaf: Any) -> Any:
        keys = _keys(path)
        if STACKED_LAYERS in keys:  # [L, ...]: row l is layer l (0 the lowest)
            depth = num_layers - 1 - jnp.arange(leaf.shape[0], dtype=jnp.float32)
            return (decay ** -depth).reshape((-1,) + (1,) * (leaf.ndim - 1))
        if "layers" in keys[:-1]:
            group = num_layers - 1 - int(keys[keys.index("layers") + 1])
        elif any(k in EMBEDDINGS for k in keys):
            group = num_layers
        else:
            group = 0
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
    if not decay > 0:  # NaN too
        raise ConfigError(f"finetune.layer_lr_decay must be > 0 (1 = every LM layer at the LM's "
                          f"rate, ULMFiT 2.6), got {decay}")
    return None if decay == 1.0 else layer_factor(decay, num_layers)


def peak_rates(lr: float, decay: float, num_layers: int) -> list[float]:
    """The LM's peak rate of each group, from the top layer down to the embeddings (what
    config.json's derived values record)."""
    return [lr / decay ** g for g in range(num_layers + 1)]
