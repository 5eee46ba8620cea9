"""lmscale.models.attention: ``attention`` (its own backward) and ``split_heads`` against a
float64 NumPy reference written from the equations, in float32 and 2-byte dtypes; the
products' compiled forms; many shapes in bfloat16 and float16 (XLA:CPU rejects some 2-byte
batched forms at run time, see the module doc)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.models.attention import attention, explicit, split_heads
from tests.models.helpers import jaxpr_equations


def np_attention_and_grads(q, k, v, mask, g):
    """float64: out = softmax(q k^T / sqrt(D), masked) v per (batch, head), and the gradients
    of sum(out * g) by q, k, v. q [B, Tq, H, D], k/v [B, Tk, H, D], mask [B|1, 1, Tq, Tk]."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, g))
    B, Tq, H, D = q.shape
    out, dq, dk, dv = (np.zeros_like(a) for a in (q, q, k, v))
    mask = np.broadcast_to(mask, (B, 1, Tq, k.shape[1]))
    for b in range(B):
        for h in range(H):
            s = q[b, :, h] @ k[b, :, h].T / math.sqrt(D)
            s = np.where(mask[b, 0], s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[b, :, h] = p @ v[b, :, h]
            dp = g[b, :, h] @ v[b, :, h].T  # d/dp of sum(g * (p v))
            ds = p * (dp - (p * dp).sum(axis=1, keepdims=True)) / math.sqrt(D)  # softmax Jacobian
            dv[b, :, h] = p.T @ g[b, :, h]
            dq[b, :, h] = ds @ k[b, :, h]
            dk[b, :, h] = ds.T @ q[b, :, h]
    return out, dq, dk, dv


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(4)]


def _value_and_grads(q, k, v, g, mask):
    def loss(q, k, v):
        out = attention(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _segment_mask(T):
    """Causal within segments: rows 0 and 1 of the batch restart at steps 3 and 5."""
    seg = np.zeros((2, T), int)
    seg[0, 3:] = 1
    seg[1, 5:] = 1
    causal = np.tril(np.ones((T, T), bool))
    return jnp.asarray(causal[None, None] & (seg[:, None, :, None] == seg[:, None, None, :]))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_and_gradients_equal_numpy_float32(masked):
    T = 9
    q, k, v, g = _inputs((2, T, 3, 8), jnp.float32)
    mask = _segment_mask(T) if masked else None
    out, grads = _value_and_grads(q, k, v, g, mask)
    np_mask = np.asarray(mask) if masked else np.tril(np.ones((T, T), bool))[None, None]
    ref = np_attention_and_grads(q, k, v, np_mask, g)
    for got, want in zip((out, *grads), ref):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_attention_and_gradients_equal_numpy_two_byte(dtype):
    """Inputs and products in the 2-byte dtype, logits and softmax in float32: within a few
    roundings (2^-8 bfloat16, 2^-11 float16) of the float64 result on the same inputs."""
    q, k, v, g = _inputs((2, 16, 2, 16), dtype, seed=1)
    out, grads = _value_and_grads(q, k, v, g, None)
    ref = np_attention_and_grads(q, k, v, np.tril(np.ones((16, 16), bool))[None, None], g)
    eps = float(jnp.finfo(dtype).eps)
    for got, want in zip((out, *grads), ref):
        assert got.dtype == dtype
        err = np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))
        assert err < 8 * eps, err


def test_attention_equals_explicit_and_xla():
    """Forward: ours, the explicit (autodiff) one and jax.nn.dot_product_attention agree."""
    q, k, v, _ = _inputs((2, 7, 2, 4), jnp.float32, seed=2)
    mask = jnp.tril(jnp.ones((7, 7), bool))[None, None]
    ours = attention(q, k, v)
    np.testing.assert_allclose(ours, explicit(q, k, v, mask), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours, jax.nn.dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-6, atol=1e-6)


def test_split_heads_and_its_backward():
    qkv = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 3, 2, 4)), jnp.float32)
    q, k, v = split_heads(qkv)
    for i, part in enumerate((q, k, v)):
        np.testing.assert_array_equal(part, qkv[:, :, i])
    weights = [jnp.full(q.shape, w, jnp.float32) for w in (1.0, 2.0, 3.0)]
    grad = jax.grad(lambda x: sum(jnp.sum(p * w) for p, w in zip(split_heads(x), weights)))(qkv)
    np.testing.assert_array_equal(grad, jnp.stack(weights, axis=2))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(split_heads(x)[1])))(qkv)
    assert "pad" not in str(jaxpr)  # the backward stacks; autodiff of slices pads and sums


def _products(fn, dtype):
    """(dimension numbers, operand dtypes, result dtype) of each dot_general in the jaxpr of
    fn's gradient at a [4, 32, 2, 16] input."""
    q = jnp.ones((4, 32, 2, 16), dtype)
    g = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), dtype)
    grad = jax.grad(lambda q, k, v: jnp.sum((fn(q, k, v) * g).astype(jnp.float32)),
                    argnums=(0, 1, 2))
    return [(e.params["dimension_numbers"], tuple(str(x.aval.dtype) for x in e.invars),
             str(e.outvars[0].aval.dtype))
            for e in jaxpr_equations(jax.make_jaxpr(grad)(q, q, q).jaxpr)
            if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_products_are_canonical(dtype):
    """The forward's 2 and the backward's 4 products: each batched [B, H, M, K] x [B, H, K,
    N] (the form XLA:CPU runs for 2-byte operands at every shape), operands in the compute
    dtype, result float32. Autodiff of ``jax.nn.dot_product_attention`` writes others, which
    this test fails on."""
    canonical = (((3,), (2,)), ((0, 1), (0, 1)))
    name = jnp.dtype(dtype).name
    ours = _products(attention, dtype)
    assert len(ours) == 6, ours
    assert all(p == (canonical, (name, name), "float32") for p in ours), ours
    xla = _products(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), dtype)
    assert any(dims != canonical for dims, _, _ in xla), xla


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_two_byte_gradients_run_at_many_shapes(dtype):
    """Compiled and run in the 2-byte dtype (no run-time rejection of a product) at shapes
    around those that broke other forms, and close to the float32 gradient."""
    for b, t, h, d in [(2, 16, 4, 8), (3, 7, 5, 3), (1, 1, 1, 1), (4, 33, 2, 32), (2, 128, 4, 32)]:
        q, k, v, g = _inputs((b, t, h, d), jnp.float32, seed=t)
        _, want = _value_and_grads(q, k, v, g, None)
        _, got = _value_and_grads(*(x.astype(dtype) for x in (q, k, v, g)), None)
        for a, w in zip(got, want):
            scale = float(jnp.max(jnp.abs(w))) + 1e-6
            assert float(jnp.max(jnp.abs(a.astype(jnp.float32) - w))) < 0.05 * scale, (b, t, h, d)
