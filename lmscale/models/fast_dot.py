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
  pads one column to two. An operand that is a transpose must be made a fresh array too.
float32 (and float64) products are plain ``jnp`` ones.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def _two_byte(dtype: Any) -> bool:
    return jnp.dtype(dtype).itemsize == 2


def dense(x: jax.Array, w: jax.Array, dtype: Any, w_transposed: bool = False) -> jax.Array:
    """x [..., in] @ w [in, out] (or w given as w^T [out, in], ``w_transposed``: a tied output
    matrix) of the operands cast to ``dtype``, result float32 [..., out] (``dtype`` when
    wider). In a 2-byte dtype, with the backward of the module doc: gradients in x's and w's
    own dtypes, from float32-result products of the cotangent cast to ``dtype``.

    Each product is written in a form XLA:CPU keeps in the 2-byte dtype. A form it does not
    take on its fast path it runs in float32 on float32 copies of the operands: a transposed
    operand folded into the dot (jnp.dot(g, w.T): 1.11 vs 0.45 ms at [2048, 384] x [384, 128];
    x.T @ g: 1.93 vs 0.72 ms at [128, 2048] x [2048, 384]), so w^T is contracted on its last
    dimension and a transposed activation is made a fresh array by a padding row. Batched
    products are left out: for some operand orders and shapes XLA sends a 2-byte dot with a
    float32 result to a thunk that rejects it at run time ("Unsupported element type for
    DotThunk::Execute: BF16 x BF16 = F32": attention's "bqhd,bhqk->bkhd" at 2 x 16 x 4 x 8,
    not at 3 x 7 x 5 x 3); every 2-D form ran (480 shapes checked)."""
    rows = x.reshape(-1, x.shape[-1])
    if _two_byte(dtype):
        y = _dense_2byte(jnp.dtype(dtype), w_transposed, rows, w)
    else:
        y = _product(rows.astype(dtype), w.astype(dtype), w_transposed,
                     jnp.promote_types(dtype, jnp.float32))
    return y.reshape(*x.shape[:-1], -1)


def _product(x: jax.Array, w: jax.Array, w_transposed: bool, accumulate: Any) -> jax.Array:
    """x [rows, in] @ w [in, out], or x @ w_t^T for w_t [out, in] (contracting last dims)."""
    contract = (((1,), (1 if w_transposed else 0,)), ((), ()))
    return jax.lax.dot_general(x, w, contract, preferred_element_type=accumulate)


def _fresh_t(a: jax.Array) -> jax.Array:
    """a^T [n + 1, m] for a [m, n], a padding row last: a fresh row-major array (see ``dense``)."""
    return jnp.pad(a.T, ((0, 1), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dense_2byte(dtype: Any, w_transposed: bool, x: jax.Array, w: jax.Array) -> jax.Array:
    return _product(x.astype(dtype), w.astype(dtype), w_transposed, jnp.float32)


def _dense_fwd(dtype: Any, w_transposed: bool, x: jax.Array, w: jax.Array
               ) -> tuple[jax.Array, Any]:
    x_c, w_c = x.astype(dtype), w.astype(dtype)
    y = _product(x_c, w_c, w_transposed, jnp.float32)
    # Zero-size stand-ins carry the operands' dtypes to the backward.
    return y, (x_c, w_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _dense_bwd(dtype: Any, w_transposed: bool, res: Any, ct: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    x_c, w_c, x_like, w_like = res
    g = ct.astype(dtype)  # [rows, out]
    f32 = jnp.float32
    if w_transposed:  # w_c = w^T [out, in]
        dx = jnp.dot(g, w_c, preferred_element_type=f32)  # [rows, in]
    else:  # w_c [in, out]
        dx = _product(g, w_c, True, f32)  # g @ w^T [rows, in]
    # dW = x^T g, summed in float32; the narrower of x and g is the one transposed (the
    # transposing copy is the costly part: 338 -> 276 ms for the transformer quickstart's
    # bfloat16 step, where fc2's [2048, 512] input was transposed instead of its [2048, 128]
    # cotangent).
    if g.shape[1] < x_c.shape[1]:
        dw_t = jnp.dot(_fresh_t(g), x_c, preferred_element_type=f32)[:-1]  # [out, in]
        dw = dw_t if w_transposed else dw_t.T
    else:
        dw = jnp.dot(_fresh_t(x_c), g, preferred_element_type=f32)[:-1]  # [in, out]
        dw = dw.T if w_transposed else dw
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_dense_2byte.defvjp(_dense_fwd, _dense_bwd)


def dot_columns(w: jax.Array, x: jax.Array, accumulate: Any = jnp.float32,
                transposed: bool = False) -> jax.Array:
    """w [O, K] @ x [K, N] -> [O, N] in ``accumulate`` (float32 by default; the sum is taken in
    at least float32 either way), for a few columns N (a decoder's samples, a device's batch).
    Operands in the same dtype. With a 2-byte dtype, x gets a zero column for the product
    (the result's first N columns are returned) when N = 1, or when ``transposed`` (x is a
    transpose, which XLA may lay out column-major: its 2-byte path rejects that operand and
    the dot ran in float32 on float32 copies of the weights, 8 columns 4.2x slower); the pad
    makes a fresh row-major array."""
    if not _two_byte(w.dtype) or (x.shape[-1] != 1 and not transposed):
        return jnp.dot(w, x, preferred_element_type=accumulate)
    y = jnp.dot(w, jnp.pad(x, ((0, 0), (0, 1))), preferred_element_type=accumulate)
    return y[:, :x.shape[-1]]
