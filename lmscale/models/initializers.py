"""Parameter initializers matching PyTorch / sentiment-discovery."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def symmetric_uniform(bound: float):
    """Initializer drawing uniform(-bound, bound), like ``tensor.uniform_(-bound, bound)``."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def recurrent_uniform(hidden: int):
    """PyTorch's RNN init: uniform(-1/sqrt(H), 1/sqrt(H)) for every recurrent-layer matrix."""
    return symmetric_uniform(1.0 / float(hidden) ** 0.5)
