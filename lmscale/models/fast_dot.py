"""Matmuls written in the forms XLA:CPU runs fast: ``dense`` (training: x @ w with its own
backward) and ``dot_columns`` (decoding: w^T @ x^T for a few columns).

Measured on this project's CPU (AVX-512 + AMX, jaxlib 0.10; ``benchmarks/README.md``, twelfth
pass):
- A 2-byte (bfloat16, float16) dot runs fast only with a float32 result
  (``preferred_element_type``): [2048, 128] x [128, 512] at 693 GFLOP/s, against 193 with a
  bfloat16 result and 153 in float32. Autodiff of such a dot multiplies the float32
  cotangent by a 2-byte operand, which XLA runs in float32; ``dense``'s backward casts the
  cotangent to the compute dtype (as a 2-byte-result dot's would be) and runs both
  gradient products with float32 results. Gradients come back in the operands' own dtypes,
  so float32 master weights get float32 sums, never rounded to bfloat16.
- An operand XLA sees transposed (a transpose folded into the dot) takes a slower path: in
  a 2-byte dtype the dot is run in float32 on float32 copies of its operands, and in
  float32 too autodiff's transposed products cost more (the transformer quickstart's
  float32 step took 1.22x as long with them). ``dense`` contracts w^T on its last dimension
  and makes a transposed activation a fresh array (a padding row), choosing the narrower
  of x and the cotangent to transpose.
- Decoding, twelve [3072, 768] weights times 8 columns: bfloat16 -> bfloat16 8.8 GB/s of
  weights read, bfloat16 -> float32 29.7, float32 18.3. With one column XLA uses its generic
  emitter at any result dtype (11.0 GB/s); two columns run fast (31.8), so ``dot_columns``
  pads one column to two, and makes a transposed operand a fresh array the same way.
The pads and fresh copies are made on CPU only: GPU GEMMs take transposed operands as they are.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lmscale.models.dtypes import at_least_float32


def _two_byte(dtype: Any) -> bool:
    return jnp.dtype(dtype).itemsize == 2


def dense(x: jax.Array, w: jax.Array, dtype: Any, w_transposed: bool = False) -> jax.Array:
    """x [..., in] @ w [in, out] (or w given as w^T [out, in], ``w_transposed``: a tied output
    matrix) of the operands cast to ``dtype``, result float32 [..., out] (``dtype`` when
    wider), with the backward of the module doc: the cotangent cast to ``dtype``, gradients
    in x's and w's own dtypes.

    Each product is written in a form XLA:CPU keeps on its fast path (module doc: jnp.dot(g,
    w.T) in bfloat16 ran in float32, 1.11 vs 0.45 ms at [2048, 384] x [384, 128]; x.T @ g
    1.93 vs 0.72 ms at [128, 2048] x [2048, 384]). Batched products are left out: for some
    operand orders and shapes XLA sends a 2-byte dot with a float32 result to a thunk that
    rejects it at run time ("Unsupported element type for DotThunk::Execute: BF16 x BF16 =
    F32": attention's "bqhd,bhqk->bkhd" at 2 x 16 x 4 x 8, not at 3 x 7 x 5 x 3); every 2-D
    form ran (480 shapes checked)."""
    y = _dense(jnp.dtype(dtype), w_transposed, x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], -1)


def _product(x: jax.Array, w: jax.Array, w_transposed: bool, accumulate: Any) -> jax.Array:
    """x [rows, in] @ w [in, out], or x @ w_t^T for w_t [out, in] (contracting last dims)."""
    contract = (((1,), (1 if w_transposed else 0,)), ((), ()))
    return jax.lax.dot_general(x, w, contract, preferred_element_type=accumulate)


def on_cpu() -> bool:
    """True on XLA:CPU, whose fast forms this module (and the transformer's choice of
    ``models/attention.py``) writes for; GPU backends take transposed operands in their GEMMs."""
    return jax.default_backend() == "cpu"


def _t_product(a: jax.Array, b: jax.Array, accumulate: Any) -> jax.Array:
    """a^T @ b for a [rows, m], b [rows, n] -> [m, n]. On CPU a^T is made a fresh row-major
    array first (a padding row, dropped from the result; see ``dense``)."""
    if not on_cpu():
        return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                                   preferred_element_type=accumulate)
    a_t = jnp.pad(a.T, ((0, 1), (0, 0)))  # [m + 1, rows]
    return jnp.dot(a_t, b, preferred_element_type=accumulate)[:-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dense(dtype: Any, w_transposed: bool, x: jax.Array, w: jax.Array) -> jax.Array:
    return _product(x.astype(dtype), w.astype(dtype), w_transposed, at_least_float32(dtype))


def _dense_fwd(dtype: Any, w_transposed: bool, x: jax.Array, w: jax.Array
               ) -> tuple[jax.Array, Any]:
    x_c, w_c = x.astype(dtype), w.astype(dtype)
    y = _product(x_c, w_c, w_transposed, at_least_float32(dtype))
    # Zero-size stand-ins carry the operands' dtypes to the backward.
    return y, (x_c, w_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _dense_bwd(dtype: Any, w_transposed: bool, res: Any, ct: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    x_c, w_c, x_like, w_like = res
    g = ct.astype(dtype)  # [rows, out]
    f32 = at_least_float32(dtype)
    if w_transposed:  # w_c = w^T [out, in]
        dx = jnp.dot(g, w_c, preferred_element_type=f32)  # [rows, in]
    else:  # w_c [in, out]
        dx = _product(g, w_c, True, f32)  # g @ w^T [rows, in]
    # dW = x^T g, summed in float32; the narrower of x and g is the one transposed (the
    # transposing copy is the costly part: 338 -> 276 ms for the transformer quickstart's
    # bfloat16 step, where fc2's [2048, 512] input was transposed instead of its [2048, 128]
    # cotangent).
    if g.shape[1] < x_c.shape[1]:
        dw_t = _t_product(g, x_c, f32)  # [out, in]
        dw = dw_t if w_transposed else dw_t.T
    else:
        dw = _t_product(x_c, g, f32)  # [in, out]
        dw = dw.T if w_transposed else dw
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dot_columns(w: jax.Array, x: jax.Array, accumulate: Any = jnp.float32,
                transposed: bool = False) -> jax.Array:
    """w [O, K] @ x [K, N] -> [O, N] in ``accumulate`` (float32 by default; the sum is taken in
    at least float32 either way), for a few columns N (a decoder's samples, a device's batch).
    Operands in the same dtype. With a 2-byte dtype, x gets a zero column for the product
    (the result's first N columns are returned) when N = 1, or when ``transposed`` (x is a
    transpose, which XLA may lay out column-major: its 2-byte path rejects that operand and
    the dot ran in float32 on float32 copies of the weights, 8 columns 4.2x slower); the pad
    makes a fresh row-major array. On CPU only (``on_cpu``)."""
    if not _two_byte(w.dtype) or (x.shape[-1] != 1 and not transposed) or not on_cpu():
        return jnp.dot(w, x, preferred_element_type=accumulate)
    y = jnp.dot(w, jnp.pad(x, ((0, 0), (0, 1))), preferred_element_type=accumulate)
    return y[:, :x.shape[-1]]
