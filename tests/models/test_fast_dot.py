"""fast_dot: 2-byte matmuls with float32 results, their backward, and one-column decoding
products, against NumPy (float64) written from the equations."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.models import fast_dot
from tests.models.helpers import computations, jaxpr_equations


def _rounded(a: np.ndarray, dtype) -> np.ndarray:
    """a rounded to ``dtype`` and back to float64: the operand the product actually sees."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(dtype).astype(jnp.float32), np.float64)


def _problem(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows // 8, 8, 24)).astype(np.float32)  # [..., in]: leading dims kept
    w = rng.normal(size=(24, 40)).astype(np.float32)
    probe = rng.normal(size=(rows // 8, 8, 40)).astype(np.float32)
    return x, w, probe


@pytest.mark.parametrize("cpu_forms", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dense_and_its_gradients_match_numpy(dtype, cpu_forms, monkeypatch):
    """y = x W, dx = g W^T, dW = x^T g with g = dL/dy of L = sum(y * probe); in a 2-byte dtype
    the operands and g are the dtype's roundings and every sum is float32 (rtol 1e-5). Both
    the CPU forms and the plain ones other backends get."""
    monkeypatch.setattr(fast_dot, "on_cpu", lambda: cpu_forms)
    x, w, probe = _problem(64)
    loss = lambda x, w: jnp.sum(fast_dot.dense(x, w, dtype) * probe)
    y = fast_dot.dense(jnp.asarray(x), jnp.asarray(w), dtype)
    dx, dw = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(w))
    assert y.dtype == jnp.float32 and y.shape == (8, 8, 40)
    assert dx.dtype == jnp.float32 and dw.dtype == jnp.float32  # the operands' own dtypes
    xr, wr, gr = _rounded(x, dtype), _rounded(w, dtype), _rounded(probe, dtype)
    tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(64 * 24))
    np.testing.assert_allclose(y, xr @ wr, **tol)
    np.testing.assert_allclose(dx, gr @ wr.T, **tol)
    np.testing.assert_allclose(dw, np.einsum("abi,abo->io", xr, gr), **tol)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dense_backward_runs_2byte_products_with_float32_results(dtype):
    """Every product of the gradient takes two 2-byte operands and gives float32 (XLA:CPU's
    fast path): no float32 x 2-byte product (run in float32) and no 2-byte result (slow)."""
    x, w, probe = _problem(16)
    loss = lambda x, w: jnp.sum(fast_dot.dense(x, w, dtype) * probe)
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(w))
    dots = [e for e in jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) == 3  # forward, dx, dW
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.dtype(dtype)] * 2, e
        assert e.outvars[0].aval.dtype == jnp.float32, e


def test_dense_weight_gradient_is_not_rounded_to_bfloat16():
    """Over 4096 rows the float32-summed dW of float32 master weights is much closer to the
    exact gradient of the rounded operands than autodiff of a bfloat16 matmul (whose dW is a
    bfloat16 result, rounded to 8 bits)."""
    x, w, probe = _problem(4096, seed=1)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    exact = np.einsum("abi,abo->io", _rounded(x, jnp.bfloat16), _rounded(probe, jnp.bfloat16))
    new = jax.grad(lambda w: jnp.sum(fast_dot.dense(xj, w, jnp.bfloat16) * probe))(wj)
    old = jax.grad(lambda w: jnp.sum(
        jnp.matmul(xj.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).astype(jnp.float32)
        * probe))(wj)
    err = lambda g: float(np.max(np.abs(np.asarray(g, np.float64) - exact) / np.max(np.abs(exact))))
    assert err(new) < 1e-5
    assert err(new) < err(old) / 20, (err(new), err(old))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("columns", [1, 2, 5])
def test_dot_columns_matches_numpy(dtype, columns):
    """w [O, K] @ x [K, N] in float32, one column included (padded to two in 2-byte dtypes)."""
    rng = np.random.default_rng(columns)
    w = rng.normal(size=(48, 96)).astype(np.float32)
    x = rng.normal(size=(96, columns)).astype(np.float32)
    y = jax.jit(fast_dot.dot_columns)(jnp.asarray(w, dtype), jnp.asarray(x, dtype))
    assert y.shape == (48, columns) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, _rounded(w, dtype) @ _rounded(x, dtype), rtol=1e-5, atol=1e-4)


def _compiled_dots(fn, *args) -> list[tuple[str, str, str, int]]:
    """(lhs dtype, rhs dtype, result dtype, rank) of every dot in the compiled program."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    out = []
    for comp in computations(hlo).values():
        for m in re.finditer(r"= (\w+)\[([\d,]*)\]\{[\d,]*\} dot\(%([\w.\-]+), %([\w.\-]+)\)", comp):
            types = [re.search(r"%" + re.escape(op) + r" = (\w+)\[", comp).group(1)
                     for op in m.group(3, 4)]
            out.append((types[0], types[1], m.group(1), len(m.group(2).split(","))))
    return out


@pytest.mark.parametrize("w_transposed", [False, True])
@pytest.mark.parametrize("shape", [(40, 24, 96), (40, 96, 24)])  # (rows, in, out)
def test_dense_gradient_compiles_to_bfloat16_products(shape, w_transposed):
    """XLA:CPU keeps all three products of ``dense`` and its gradient in bfloat16 with
    float32 results (a transposed operand folded into a dot made XLA run it in float32 on
    float32 copies, 2.5-3x slower), whichever of x and g is the narrower."""
    rows, n_in, n_out = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(rows, n_in)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(n_out, n_in) if w_transposed else (n_in, n_out)),
                    jnp.float32)
    loss = lambda x, w: jnp.sum(jnp.sin(fast_dot.dense(x, w, jnp.bfloat16, w_transposed)))
    dots = _compiled_dots(jax.grad(loss, argnums=(0, 1)), x, w)
    assert len(dots) == 3
    assert all(d[:3] == ("bf16", "bf16", "f32") for d in dots), dots


@pytest.mark.parametrize("kind", ["mlstm", "lstm", "lstm_tied", "qrnn", "transformer",
                                  "transformer_tied"])
def test_bfloat16_models_train_with_bfloat16_products(kind):
    """In the compiled gradient of a bfloat16 model's loss, every two-dimensional product
    (the recurrences', the projections', the output head's, tied or not) takes two bfloat16
    operands and gives float32, as XLA:CPU runs fast. Only the transformer's attention's
    batched products (``models/attention.py``, tested in ``test_attention``) have others."""
    from flax import nnx

    from lmscale.config import default_config
    from lmscale.models import build_model

    config = default_config().model
    with config.unlocked():
        config.update(kind=kind.split("_")[0], hidden=32, embed=16, layers=2, d_model=32,
                      heads=2, d_ff=64, max_len=16, tie_embeddings=kind.endswith("tied"))
    model = build_model(config, 11, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    graphdef, params = nnx.split(model)
    tokens = jnp.zeros((2, 16), jnp.int32)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens, None)[0])
    dots = _compiled_dots(jax.grad(loss), params)
    flat = [d for d in dots if d[3] == 2]
    assert len(flat) >= 6
    assert all(d[:3] == ("bf16", "bf16", "f32") for d in flat), flat
    if not kind.startswith("transformer"):
        assert len(flat) == len(dots)


@pytest.mark.parametrize("rows", [1, 8])
def test_decoding_products_compile_to_bfloat16(rows):
    """The transformer decoder's few-row products (``kv_cache.dense_t``: w^T @ x^T) stay
    bfloat16 with float32 results inside a decoding loop. x^T as the operand made XLA run
    them in float32 on float32 copies of the weights (8 samples 4.2x slower)."""
    from lmscale.models.kv_cache import dense_t
    rng = np.random.default_rng(rows)
    w_t = jnp.asarray(rng.normal(size=(256, 64)), jnp.bfloat16)
    x0 = jnp.asarray(rng.normal(size=(rows, 64)), jnp.float32)

    def run(w_t, x0):
        step = lambda _, x: x + 1e-3 * dense_t(x, w_t, None, jnp.bfloat16)[:, :64]
        return jax.lax.fori_loop(0, 4, step, x0)

    dots = _compiled_dots(run, w_t, x0)
    assert dots and all(d[:3] == ("bf16", "bf16", "f32") for d in dots), dots
    y = dense_t(x0, w_t, None, jnp.bfloat16)
    expect = _rounded(np.asarray(x0), jnp.bfloat16) @ np.asarray(w_t, np.float64).T
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-4)
