"""filter_logits (temperature, banned ids, top-k, top-p) against a float64 NumPy reference
written from the definitions, on many random rows, in both the static (Python numbers) and
the traced (one compiled sampler for all settings) paths, for float32 and 2-byte logits.

Reference: z = logits (as given, rounded to the input dtype) / T; banned -> -inf;
top-k keeps every z >= the k-th largest (ties at the k-th kept); top-p sorts the kept tokens
by z, descending, and keeps a token when the probability mass of the strictly more likely
tokens (renormalized over the kept ones) is < p (ties with the last kept value kept);
output log-softmax over the kept tokens.

Tolerances: the kept set must be identical (the random logits are continuous and the top-p
boundary is avoided by at least 1e-4 of mass, far above float32 cumsum rounding ~V * 2^-24);
kept log-probabilities atol 1e-5 (float32 softmax of values |z| < 20: ~1e-6 seen).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale.generation import filter_logits

V = 37


def np_filter(logits, temperature, top_k, top_p, banned):
    z = np.asarray(logits, np.float64) / max(temperature, 1e-6)
    keep = np.ones(z.shape, bool)
    if banned is not None:
        keep[:, banned] = False
    for b in range(z.shape[0]):
        live = np.where(keep[b])[0]
        if top_k > 0 and top_k < len(live):
            kth = np.sort(z[b, live])[::-1][top_k - 1]
            keep[b] &= z[b] >= kth
        if top_p < 1.0:
            live = np.where(keep[b])[0]
            order = live[np.argsort(-z[b, live], kind="stable")]
            p = np.exp(z[b, order] - z[b, order].max())
            p /= p.sum()
            before = np.cumsum(p) - p
            kept = order[before < top_p]
            cutoff = z[b, kept].min()
            keep[b] &= z[b] >= cutoff
    out = np.full(z.shape, -np.inf)
    for b in range(z.shape[0]):
        zz = z[b, keep[b]]
        out[b, keep[b]] = zz - zz.max() - np.log(np.exp(zz - zz.max()).sum())
    return out, keep


def _margin_ok(logits, temperature, top_k, top_p, banned):
    """True when no row has its top-p boundary within 1e-4 of mass (a rounding coin-flip)."""
    z = np.asarray(logits, np.float64) / temperature
    for b in range(z.shape[0]):
        row = np.delete(z[b], banned) if banned is not None else z[b]
        row = np.sort(row)[::-1]
        if top_k:
            row = row[:top_k]
        p = np.exp(row - row.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        if top_p < 1.0 and np.min(np.abs(before - top_p)) < 1e-4:
            return False
    return True


SETTINGS = [(1.0, 0, 0.9, None), (0.7, 5, 1.0, 0), (1.3, 10, 0.5, (0, 3)), (1.0, 1, 0.3, None),
            (2.0, 0, 0.99, 1), (0.5, 3, 0.95, None), (1.0, V - 1, 0.2, 0)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("traced", [False, True])
def test_filter_logits_matches_numpy_on_random_rows(dtype, traced):
    rng = np.random.default_rng(0)
    fn = jax.jit(lambda x, t, k, p, banned: filter_logits(x, temperature=t, top_k=k, top_p=p,
                                                          banned=banned), static_argnums=4)
    checked = 0
    for t, k, p, banned in SETTINGS:
        for seed in range(6):
            x = jnp.asarray(rng.normal(0, 3, (4, V)), dtype)
            rounded = np.asarray(x.astype(jnp.float32), np.float64)
            if not _margin_ok(rounded, t, k, p, banned):
                continue
            if traced:
                got = np.asarray(fn(x, jnp.float32(t), jnp.int32(k), jnp.float32(p), banned))
            else:
                got = np.asarray(filter_logits(x, temperature=t, top_k=k, top_p=p, banned=banned))
            want, keep = np_filter(rounded, t, k, p, list(np.atleast_1d(banned)) if banned is not None else None)
            np.testing.assert_array_equal(np.isfinite(got), keep,
                                          err_msg=f"kept set T={t} k={k} p={p} banned={banned}")
            np.testing.assert_allclose(got[keep], want[keep], atol=1e-5, rtol=0,
                                       err_msg=f"T={t} k={k} p={p} banned={banned}")
            checked += 1
    assert checked >= 30


def test_ties_at_the_kth_value_are_kept_in_both_paths():
    x = jnp.asarray([[3.0, 1.0, 1.0, 1.0, -2.0]])
    for k in (2, jnp.int32(2)):
        got = np.asarray(filter_logits(x, temperature=1.0, top_k=k, top_p=1.0, banned=None))
        want, keep = np_filter(np.asarray(x), 1.0, 2, 1.0, None)
        np.testing.assert_array_equal(np.isfinite(got), keep)
        np.testing.assert_allclose(got[keep], want[keep], atol=1e-6)


def test_top_p_stops_at_the_token_whose_mass_reaches_p_exactly():
    """Probabilities 1/4, 1/2, 1/4 (exact in float32) and top_p 0.5: the most likely token
    alone holds 0.5, so the nucleus is that token (a token is kept while the mass before it
    is < p, not <= p: that kept both ties of 1/4 too)."""
    half = -np.float32(np.log(2))
    x = jnp.asarray([[half, 0.0, half]], jnp.float32)
    assert np.asarray(jax.nn.softmax(x)).tolist() == [[0.25, 0.5, 0.25]]
    for p in (0.5, jnp.float32(0.5)):
        got = np.asarray(filter_logits(x, temperature=1.0, top_k=0, top_p=p, banned=None))
        assert got.tolist() == [[-np.inf, 0.0, -np.inf]]


def test_a_top_p_that_rounds_to_zero_keeps_the_most_likely_token():
    """top_p is checked to be in (0, 1] but filtered in float32: 1e-50 rounds to 0 there (as a
    subnormal p does where a GPU flushes them), and no token had mass before it < 0, so every
    one went: NaN log-probabilities, and the sampler drew id 0, the padding (the sample was
    the prompt alone). The most likely token is always kept (Hugging Face's
    min_tokens_to_keep=1)."""
    x = jnp.asarray([[1.0, 2.0, 0.5, 2.0]], jnp.float32)
    for p in (1e-50, jnp.float32(1e-50)):
        got = np.asarray(filter_logits(x, temperature=1.0, top_k=0, top_p=p, banned=0))
        np.testing.assert_allclose(got, [[-np.inf, np.log(0.5), -np.inf, np.log(0.5)]])
