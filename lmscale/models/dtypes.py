"""The dtype the models accumulate in and keep their state in."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def at_least_float32(dtype: Any) -> Any:
    """float32 for a 2- or 4-byte float dtype, float64 for float64: matmul accumulation, the
    recurrences' carry and gate math, weight norm. A float64 model stays float64 throughout
    (the gradient checks)."""
    return jnp.promote_types(dtype, jnp.float32)
