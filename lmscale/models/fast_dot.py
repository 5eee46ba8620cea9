"""Matmuls in a 2-byte compute dtype (bfloat16, float16) on the paths XLA:CPU runs fast.

Measured on this project's CPU (AVX-512 + AMX, jaxlib 0.10; ``benchmarks/README.md``, twelfth
pass): a 2-byte dot runs fast only with a float32 result (``preferred_element_type``).
- Training shapes, [2048, 128] x [128, 512]: bfloat16 -> bfloat16 193 GFLOP/s, bfloat16 ->
  float32 693, float32 153. Autodiff of a float32-result dot multiplies the float32 cotangent
  by a bfloat16 operand, which XLA runs in float32; of a bfloat16-result dot, on the slow
  path. ``dense`` has its own backward: the cotangent is cast to the compute dtype (as a
  bfloat16-result dot's would be) and both gradient products run with float32 results.
  Gradients come back in the operands' own dtypes, so float32 master weights get float32
  sums, never rounded to bfloat16.
- Decoding, twelve [3072, 768] weights times 8 columns: bfloat16 -> bfloat16 8.8 GB/s of
  weights read, bfloat16 -> float32 29.7, float32 18.3. With one column XLA uses its generic
  emitter at any result dtype (11.0 GB/s); two columns run fast (31.8), so ``dot_columns``
  pads one column to two.
float32 (and float64) products are plain ``jnp`` ones.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def _two_byte(dtype: Any) -> bool:
    return jnp.dtype(dtype).itemsize == 2


def dense(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    """x [..., in] @ w [in, out] of the operands cast to ``dtype``, result float32 [..., out]
    (``dtype`` when wider). In a 2-byte dtype, with the backward of the module doc: gradients
    in x's and w's own dtypes, from float32-result products of the cotangent cast to
    ``dtype``.

    Two-dimensional products only: XLA:CPU runs some batched 2-byte dots with a float32
    result on a thunk that rejects them at run time ("Unsupported element type for
    DotThunk::Execute: BF16 x BF16 = F32"), depending on the operand order and the shapes
    (attention's "bqhd,bhqk->bkhd" at 2 x 16 x 4 x 8 but not at 3 x 7 x 5 x 3); every 2-D form
    (either operand or the result transposed) ran, 480 shapes checked."""
    rows = x.reshape(-1, x.shape[-1])
    if _two_byte(dtype):
        y = _dense_2byte(jnp.dtype(dtype), rows, w)
    else:
        acc = jnp.promote_types(dtype, jnp.float32)
        y = jnp.dot(rows.astype(dtype), w.astype(dtype), preferred_element_type=acc)
    return y.reshape(*x.shape[:-1], w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense_2byte(dtype: Any, x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _dense_fwd(dtype: Any, x: jax.Array, w: jax.Array) -> tuple[jax.Array, Any]:
    x_c, w_c = x.astype(dtype), w.astype(dtype)
    y = jnp.dot(x_c, w_c, preferred_element_type=jnp.float32)
    # Zero-size stand-ins carry the operands' dtypes to the backward.
    return y, (x_c, w_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _dense_bwd(dtype: Any, res: Any, ct: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_c, w_c, x_like, w_like = res
    g = ct.astype(dtype)  # [rows, out]
    dx = jnp.dot(g, w_c.T, preferred_element_type=jnp.float32)  # [rows, in]
    dw = jnp.dot(x_c.T, g, preferred_element_type=jnp.float32)  # [in, out], summed in float32
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_dense_2byte.defvjp(_dense_fwd, _dense_bwd)


def dot_columns(w: jax.Array, x: jax.Array, accumulate: Any = jnp.float32) -> jax.Array:
    """w [O, K] @ x [K, N] -> [O, N] in ``accumulate`` (float32 by default; the sum is taken in
    at least float32 either way), for a few columns N (a decoder's samples, a device's batch).
    Operands in the same dtype; with a 2-byte dtype and N = 1, x is padded with a zero column
    for the product and the result's first column returned."""
    if not _two_byte(w.dtype) or x.shape[-1] != 1:
        return jnp.dot(w, x, preferred_element_type=accumulate)
    y = jnp.dot(w, jnp.pad(x, ((0, 0), (0, 1))), preferred_element_type=accumulate)
    return y[:, :1]
