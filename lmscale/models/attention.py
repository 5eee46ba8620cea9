"""Softmax attention for training: ``explicit`` (any mask, dropout on the probabilities) and
``attention`` (masked or causal, with its own backward in the matmul forms XLA:CPU runs fast).

Both take q [B, Tq, H, D], k/v [B, Tk, H, D] in the compute dtype, take the logits and the
softmax in float32, and return [B, Tq, H, D] in the compute dtype.

Why ``attention`` has its own backward (measured on this project's CPU, AVX-512 + AMX,
jaxlib 0.10; ``benchmarks/README.md``, thirteenth pass). In the bfloat16 transformer
quickstart's profile, autodiff of ``jax.nn.dot_product_attention`` ran its products on
float32 copies with the softmax backward fused in (7.3 ms a layer for one [16, 4, 128, 128]
x [.., 128, 32] product). Here each product is batched in canonical form, [B, H, M, K] x
[B, H, K, N], its operands in the compute dtype and its result float32, and each
transposed operand is an explicit transpose: 2-byte products with a float32 result in other
operand orders are, for some shapes, sent to a thunk that rejects them at run time
("Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32"); in canonical form
768 shapes ran, in bfloat16 and in float16. XLA may still fold a transpose into a product
or fuse the casts and softmax around one; the step measured the same with pads that stop
that in bfloat16, and slower in float32 (383 vs 335 ms), so there are none. The backward
keeps the float32 probabilities (as autodiff of the softmax does) and recomputes nothing.
Interleaved in the real step, 2 devices: the quickstart 260 -> 193 ms in bfloat16 (with
``split_heads``), 326 -> 281 ms in float32; at 512 tokens a sequence 717 -> 485 and
756 -> 571 ms.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from lmscale.models.dtypes import at_least_float32

_NEG = jnp.finfo(jnp.float32).min


def masked_softmax(logits: jax.Array, mask: jax.Array, head_dim: int) -> jax.Array:
    """softmax(logits / sqrt(head_dim)) over the last axis where ``mask`` (bool, broadcast),
    in float32; a fully masked row gets uniform weights."""
    logits = logits.astype(jnp.float32) * (1.0 / math.sqrt(head_dim))
    return jax.nn.softmax(jnp.where(mask, logits, _NEG), axis=-1)


def explicit(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
             drop_probs: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Autodiff attention for any ``mask`` (bool, broadcastable to [B, H, Tq, Tk]);
    ``drop_probs`` (training) is applied to the probabilities."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = masked_softmax(logits, mask, q.shape[-1])
    if drop_probs is not None:
        probs = drop_probs(probs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
              ) -> jax.Array:
    """Attention with the backward of the module doc. ``mask``: bool [B or 1, 1, Tq, Tk]
    (True = attend), or None for causal. Equal to ``explicit`` without dropout, up to the
    order of float32 sums."""
    if mask is None:
        tq, tk = q.shape[1], k.shape[1]
        mask = jnp.tril(jnp.ones((tq, tk), bool), tk - tq)[None, None]
    return _attention(q, k, v, mask)


def _bmm(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [B, H, M, K] @ b [B, H, K, N] -> float32 [B, H, M, N]: the canonical batched form."""
    return jax.lax.dot_general(a, b, (((3,), (2,)), ((0, 1), (0, 1))),
                               preferred_element_type=at_least_float32(a.dtype))


def _forward(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
             ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """(out [B, Tq, H, D], residuals: q [B, H, Tq, D], k, v as given, float32 probabilities)."""
    qh = jnp.transpose(q, (0, 2, 1, 3))  # [B, H, Tq, D]
    k_t = jnp.transpose(k, (0, 2, 3, 1))  # [B, H, D, Tk]
    vh = jnp.transpose(v, (0, 2, 1, 3))  # [B, H, Tk, D]
    probs = masked_softmax(_bmm(qh, k_t), mask, q.shape[-1])  # float32 [B, H, Tq, Tk]
    out = _bmm(probs.astype(v.dtype), vh)  # [B, H, Tq, D]
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype), (qh, k, v, probs)


@jax.custom_vjp
def _attention(q, k, v, mask):
    return _forward(q, k, v, mask)[0]


def _attention_bwd(res: tuple[jax.Array, ...], ct: jax.Array) -> tuple[jax.Array | None, ...]:
    """dq, dk, dv from ct [B, Tq, H, D]: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP))
    / sqrt(D), dQ = dS K, dK = dS^T Q; the products' operands in the compute dtype."""
    qh, k, v, probs = res
    dtype = qh.dtype
    scale = 1.0 / math.sqrt(qh.shape[-1])
    do = jnp.transpose(ct.astype(dtype), (0, 2, 1, 3))  # [B, H, Tq, D]
    dv = _bmm(jnp.transpose(probs.astype(dtype), (0, 1, 3, 2)), do)  # [B, H, Tk, D]
    dp = _bmm(do, jnp.transpose(v, (0, 2, 3, 1)))  # [B, H, Tq, Tk]
    ds = probs * (dp - jnp.sum(probs * dp, axis=-1, keepdims=True)) * scale
    ds_c = ds.astype(dtype)
    dq = _bmm(ds_c, jnp.transpose(k, (0, 2, 1, 3)))  # [B, H, Tq, D]
    dk = _bmm(jnp.transpose(ds_c, (0, 1, 3, 2)), qh)  # [B, H, Tk, D]
    back = lambda x, like: jnp.transpose(x, (0, 2, 1, 3)).astype(like.dtype)
    return back(dq, qh), back(dk, k), back(dv, v), None


_attention.defvjp(_forward, _attention_bwd)


@jax.custom_vjp
def split_heads(qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """qkv [B, T, 3, H, D] -> q, k, v [B, T, H, D]. Its backward stacks the three cotangents
    (autodiff's pads and sums of the three slices ran as one XLA:CPU fusion of ~7 ms a layer
    in the bfloat16 transformer quickstart)."""
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _split_fwd(qkv: jax.Array) -> tuple[tuple[jax.Array, ...], None]:
    return split_heads(qkv), None


def _split_bwd(_: None, cts: tuple[jax.Array, ...]) -> tuple[jax.Array]:
    return (jnp.stack(cts, axis=2),)


split_heads.defvjp(_split_fwd, _split_bwd)
