"""Weight-normalized matrices: w = g * v / ||v|| per output unit (Salimans & Kingma, 2016).

For an (in, out) matrix (x @ W convention) the norm is taken over the ``in`` axis, so each
output unit j has its own scale g[j]: w[:, j] = g[j] * v[:, j] / ||v[:, j]||. This is
PyTorch's ``weight_norm(linear, dim=0)`` on the transposed (out, in) weight.

Written by hand rather than with ``nnx.WeightNorm`` (which on flax 0.12.8 does not train its
scale and overwrites the wrapped kernel on each call). ``g`` and ``v`` are ordinary
``nnx.Param`` s, so both get gradients and both are saved in checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.dtypes import at_least_float32

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]

# Floor of ||v||^2, as TensorFlow's l2_normalize (OpenAI's released mLSTM): x * rsqrt(max(sum
# x^2, 1e-12)). A no-op for any column of norm >= 1e-6 (max returns its argument unchanged, so
# values and gradients are bit-identical); an all-zero column gives a zero column of w, not NaN.
NORM_SQ_FLOOR = 1e-12


def unit_scale(g: jax.Array, v: jax.Array) -> jax.Array:
    """g [out], v [in, out] -> s [out] = g / ||v||_in, so that w = v * s.

    Computed in at least float32 (float64 stays float64, for gradient checks). ||v||^2 is
    floored at ``NORM_SQ_FLOOR`` as TensorFlow's l2_normalize does (a zero column: s = 1e6 g,
    w = 0, finite).
    """
    dtype = at_least_float32(v.dtype)
    v = v.astype(dtype)
    return g.astype(dtype) * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0), NORM_SQ_FLOOR))


def weight_norm(g: jax.Array, v: jax.Array) -> jax.Array:
    """g [out], v [in, out] -> w [in, out] = g * v / ||v||_in (dtype as ``unit_scale``)."""
    return v.astype(at_least_float32(v.dtype)) * unit_scale(g, v)


class WeightNormMatrix(nnx.Module):
    """An (in, out) matrix reparametrized as g * v / ||v||; params ``v`` (in, out), ``g`` (out,).

    At init g = ||v||, so the effective matrix equals the initial v.
    """

    def __init__(self, in_features: int, out_features: int, *, init: Initializer,
                 rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        v = init(rngs.params(), (in_features, out_features), param_dtype)
        self.v = nnx.Param(v)
        self.g = nnx.Param(jnp.linalg.norm(v.astype(jnp.float32), axis=0).astype(param_dtype))

    def __call__(self) -> jax.Array:
        """The effective (in, out) matrix, float32."""
        return weight_norm(self.g[...], self.v[...])

    def factors(self) -> tuple[jax.Array, jax.Array | None]:
        """(v [in, out], s [out]) with the matrix = v * s: a product x @ w can be taken as
        (x @ v) * s, so a large matrix is never normalized and written out (the recurrences,
        ``recurrent_vjp``)."""
        return self.v[...], unit_scale(self.g[...], self.v[...])


class Matrix(nnx.Module):
    """A plain (in, out) matrix with param ``kernel``; same call interface as WeightNormMatrix."""

    def __init__(self, in_features: int, out_features: int, *, init: Initializer,
                 rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype))

    def __call__(self) -> jax.Array:
        """The (in, out) matrix."""
        return self.kernel[...]

    def factors(self) -> tuple[jax.Array, jax.Array | None]:
        """(kernel, None): no scale (as ``WeightNormMatrix.factors``)."""
        return self.kernel[...], None


def make_matrix(in_features: int, out_features: int, *, weight_norm: bool, init: Initializer,
                rngs: nnx.Rngs) -> WeightNormMatrix | Matrix:
    """A WeightNormMatrix if ``weight_norm`` else a Matrix."""
    cls = WeightNormMatrix if weight_norm else Matrix
    return cls(in_features, out_features, init=init, rngs=rngs)
