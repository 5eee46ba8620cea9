"""In-place updates of bfloat16/float16 buffers on XLA:CPU: through their uint16 bits.

XLA:CPU (jaxlib 0.10) runs a bfloat16 dynamic-update-slice in float32 on the whole buffer
(convert, update, convert back), so a per-step write into a saved sequence or a key/value
cache cost a pass over the whole buffer: 7 such writes took 59 % of the 1024-unit bfloat16
mLSTM step. An integer buffer is updated in place; the bitcasts are free. float16 is handled
the same way. Used by the recurrence's saved sequences (``recurrent_loops``, which keeps them
as uint16 buffers) and the transformer's decode cache (``kv_cache``, kept as uint16 too).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def storage(dtype: Any) -> Any:
    """dtype of a buffer holding values in ``dtype``: 2-byte floats as their uint16 bits."""
    return jnp.uint16 if jnp.dtype(dtype).itemsize == 2 else jnp.dtype(dtype)


def encode(value: jax.Array, dtype: Any) -> jax.Array:
    """value in ``dtype``, as a buffer of ``storage(dtype)`` holds it."""
    value = value.astype(dtype)
    return jax.lax.bitcast_convert_type(value, jnp.uint16) if value.dtype.itemsize == 2 else value


def decode(stored: jax.Array, dtype: Any) -> jax.Array:
    """The ``dtype`` values of (a slice of) a buffer of ``storage(dtype)``."""
    return jax.lax.bitcast_convert_type(stored, dtype) if stored.dtype == jnp.uint16 else stored

