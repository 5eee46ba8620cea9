"""The transformer decoder's per-token pieces: its key/value cache and the products of few rows.

The cache is laid out as the decoder's attention products read it, k [B, H, D, M] and v
[B, H, M, D]: with the training attention's [B, M, H, D], XLA:CPU copied each layer's
whole cache, transposed, every token (12 layers x 8 samples: ~17 of 50 ms a token). A
2-byte cache is kept as its uint16 bits (``lmscale.models.inplace``): written through
bitcasts of a bfloat16 buffer, XLA copied the whole cache before each write (~11 ms).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models import inplace
from lmscale.models.attention import masked_softmax
from lmscale.models.fast_dot import dot_columns


def dense_t(x: jax.Array, w_t: jax.Array, b: jax.Array | None, dtype: Any) -> jax.Array:
    """x [..., in] @ w (given transposed, w_t [out, in]) in ``dtype`` (+ b), returned float32
    [..., out]; multiplied as w_t @ x^T: the form for a few rows (decoding). XLA:CPU's
    matmul repacks its right operand on every call, so x @ w of a handful of rows was a pass
    over w per call; as the left operand w_t is streamed as stored (12 layers' feed-forward
    at 8 rows: 25 -> 16 ms a token). The barriers keep XLA from rewriting the product back
    into x @ w. The dot's result is float32, XLA:CPU's fast path for a 2-byte ``dtype``
    (``fast_dot``)."""
    barrier = jax.lax.optimization_barrier
    x_t = barrier(x.reshape(-1, x.shape[-1]).astype(dtype).T)  # [in, rows]
    y = barrier(dot_columns(w_t.astype(dtype), x_t, transposed=True)).T
    y = y.reshape(*x.shape[:-1], w_t.shape[0])
    return y if b is None else y + b


def empty(layers: int, batch: int, heads: int, head_dim: int, max_length: int, dtype: Any
          ) -> dict[str, tuple[jax.Array, ...]]:
    """{"k": [B, H, D, max_length], "v": [B, H, max_length, D]}, one zero array per layer (a
    tuple), of ``inplace.storage(dtype)``."""
    store = inplace.storage(dtype)
    zeros = lambda shape: tuple(jnp.zeros(shape, store) for _ in range(layers))
    return {"k": zeros((batch, heads, head_dim, max_length)),
            "v": zeros((batch, heads, max_length, head_dim))}


def attend(k_cache: jax.Array, v_cache: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
           pos: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One layer's step: this token's k, v [B, 1, H, D] written at ``pos`` (in place), then
    its q [B, 1, H, D] attends to positions <= pos. Returns (out [B, 1, H, D], k_cache,
    v_cache); the numerics of ``attention.explicit`` (logits and softmax in float32)."""
    zero = jnp.zeros_like(pos)
    k_cache = jax.lax.dynamic_update_slice(
        k_cache, inplace.encode(jnp.transpose(k, (0, 2, 3, 1)), dtype), (zero, zero, zero, pos))
    v_cache = jax.lax.dynamic_update_slice(
        v_cache, inplace.encode(jnp.transpose(v, (0, 2, 1, 3)), dtype), (zero, zero, pos, zero))
    kc, vc = inplace.decode(k_cache, dtype), inplace.decode(v_cache, dtype)
    q = q[:, 0]  # [B, H, D]
    logits = jnp.einsum("bhd,bhdm->bhm", q, kc.astype(q.dtype), preferred_element_type=jnp.float32)
    probs = masked_softmax(logits, jnp.arange(kc.shape[-1]) <= pos, q.shape[-1])  # [B, H, M]
    out = jnp.einsum("bhm,bhmd->bhd", probs.astype(vc.dtype), vc)
    return out[:, None], k_cache, v_cache
