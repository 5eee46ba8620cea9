"""The transformer's parts: one block (attention and feed-forward, pre- or post-norm), its
float32 LayerNorm, fairseq's sinusoidal positions and the dropout the LM draws per site
(``lmscale.models.transformer`` stacks the blocks into the language model).

    post-norm ("post"):  x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(FF(x)))
    pre-norm ("pre"):    x = x + Drop(Attn(LN(x)));  x = x + Drop(FF(LN(x)))
    FF(x) = FC2(Drop_ff(GeLU_tanh(FC1(x))))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models import attention as attn
from lmscale.models import fast_dot, kv_cache
from lmscale.models.weight_norm import make_matrix

GPT2_STD = 0.02  # nanoGPT's, after the GPT-2 paper (its residual projections: / sqrt(2 layers))
LN_EPS = 1e-5
# Dropout sites within a block (key = fold_in(key, 1 + 4 * layer + site); embeddings: site 0).
ATTN_PROBS, ATTN_OUT, FF_ACT, FF_OUT = range(4)
SITES_PER_BLOCK = 4

Drop = Callable[[int, jax.Array], jax.Array]
_xavier = jax.nn.initializers.xavier_uniform()


def normal_init(std: float):
    """A normal initializer of standard deviation ``std``."""
    return jax.nn.initializers.normal(stddev=std)


def _dense(x: jax.Array, w: jax.Array, b: jax.Array | None, dtype: Any) -> jax.Array:
    """x [..., in] @ w [in, out] in ``dtype`` (+ b), returned float32 (``fast_dot.dense``)."""
    y = fast_dot.dense(x, w, dtype)
    return y if b is None else y + b


def sinusoidal(positions: jax.Array, dim: int) -> jax.Array:
    """fairseq's sinusoidal embeddings: int [...] -> float32 [..., dim] = [sin | cos], with
    frequencies exp(-i * ln(10000) / (dim/2 - 1)), i < dim/2; an odd dim gets a zero column."""
    half = dim // 2
    freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = positions.astype(jnp.float32)[..., None] * freq
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros(emb.shape[:-1] + (1,), emb.dtype)], axis=-1)
    return emb


def _per_row(key: jax.Array) -> bool:
    """True for one key per row: raw uint32 [B, 2] or typed keys [B]."""
    return key.ndim == (1 if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else 2)


def dropout(key: jax.Array, site: jax.Array | int, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout on x [B, ...] with key ``fold_in(key, site)``: one key, or per-row keys
    (each row's mask drawn from its own key, independent of the rest of the batch)."""
    keep = jnp.float32(1.0 - rate)  # JAX_ENABLE_X64: a Python float drew float64 uniforms
    if _per_row(key):
        mask = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, site), keep,
                                                       x.shape[1:]))(key)
    else:
        mask = jax.random.bernoulli(jax.random.fold_in(key, site), keep, x.shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis in float32 (eps 1e-5); params ``scale`` (ones), ``bias``."""

    def __init__(self, dim: int):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * self.scale[...] + self.bias[...]


class Block(nnx.Module):
    """One transformer block. Params: ``qkv`` (d, 3d), ``out`` (d, d), ``fc1`` (d, d_ff),
    ``fc2`` (d_ff, d) (WeightNormMatrix g/v or Matrix kernel) with zero biases ``*_bias``;
    ``ln_attn``, ``ln_ff`` (LayerNorm)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, *, norm: str, weight_norm: bool,
                 rngs: nnx.Rngs, init: str = "fairseq", layers: int = 1):
        self.heads, self.norm = heads, norm
        gpt2 = init == "gpt2"  # GPT-2: every matrix N(0, 0.02^2), out and fc2 / sqrt(2 L)
        scaled = normal_init(GPT2_STD / math.sqrt(2 * layers)) if gpt2 else _xavier
        mat = lambda i, o, init=normal_init(GPT2_STD) if gpt2 else _xavier: make_matrix(
            i, o, weight_norm=weight_norm, init=init, rngs=rngs)
        zeros = lambda n: nnx.Param(jnp.zeros((n,), jnp.float32))
        # fairseq's in_proj (the seed's): one Xavier-uniform over the fused (d, 3d) matrix,
        # bound sqrt(6 / 4d) (newer fairseq: q, k, v each with gain 1/sqrt(2), the same bound)
        self.qkv, self.qkv_bias = mat(d_model, 3 * d_model), zeros(3 * d_model)
        self.out, self.out_bias = mat(d_model, d_model, scaled), zeros(d_model)
        self.fc1, self.fc1_bias = mat(d_model, d_ff), zeros(d_ff)
        self.fc2, self.fc2_bias = mat(d_ff, d_model, scaled), zeros(d_model)
        self.ln_attn, self.ln_ff = LayerNorm(d_model), LayerNorm(d_model)

    def matrices(self) -> dict[str, jax.Array]:
        """{"qkv", "out", "fc1", "fc2"}: the (in, out) matrices, weight norm applied."""
        return {"qkv": self.qkv(), "out": self.out(), "fc1": self.fc1(), "fc2": self.fc2()}

    def __call__(self, x: jax.Array, attend: Callable, drop: Drop, dtype: Any,
                 matrices_t: dict[str, jax.Array] | None = None) -> tuple[jax.Array, Any]:
        """x float32 [B, T, d] -> (x float32 [B, T, d], aux of ``attend``).

        ``attend(q, k, v)`` ([B, T, H, D] in ``dtype``) -> (out [B, T, H, D], aux);
        ``drop(site, x)`` applies the dropout of that site (identity when deterministic);
        ``matrices_t``: this block's ``matrices()`` transposed ([out, in]), computed
        beforehand (a decoder's, once per sequence), multiplied as ``kv_cache.dense_t`` does.
        """
        if matrices_t is None:
            w, dense = self.matrices(), _dense
        else:
            w, dense = matrices_t, kv_cache.dense_t
        pre = self.norm == "pre"
        b, t, d = x.shape
        h = self.ln_attn(x) if pre else x
        qkv = dense(h, w["qkv"], self.qkv_bias[...], dtype).astype(dtype)
        q, k, v = attn.split_heads(qkv.reshape(b, t, 3, self.heads, d // self.heads))
        o, aux = attend(q, k, v)
        h = dense(o.reshape(b, t, d), w["out"], self.out_bias[...], dtype)
        x = x + drop(ATTN_OUT, h)
        if not pre:
            x = self.ln_attn(x)
        h = self.ln_ff(x) if pre else x
        h = jax.nn.gelu(dense(h, w["fc1"], self.fc1_bias[...], dtype), approximate=True)
        h = dense(drop(FF_ACT, h), w["fc2"], self.fc2_bias[...], dtype)
        x = x + drop(FF_OUT, h)
        if not pre:
            x = self.ln_ff(x)
        return x, aux
