"""Test helpers: randomize a module's params and read a layer's weights as NumPy arrays."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from tests.models.numpy_reference import np_weight_norm


def randomize_params(module: nnx.Module, seed: int, scale: float = 0.5) -> None:
    """Every Param uniform(-scale, scale); weight-norm scales g uniform(0.5, 1.5) (so g != ||v||)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)

    def draw(path, x):
        if getattr(path[-1], "key", None) == "g":
            return np.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
        return np.asarray(rng.uniform(-scale, scale, x.shape), x.dtype)

    nnx.update(module, jax.tree_util.tree_map_with_path(draw, state))


def effective(matrix: nnx.Module) -> np.ndarray:
    """The effective float64 matrix of a WeightNormMatrix (from g, v in NumPy) or a Matrix."""
    if hasattr(matrix, "v"):
        return np_weight_norm(np.asarray(matrix.g[...]), np.asarray(matrix.v[...]))
    return np.asarray(matrix.kernel[...], np.float64)


def layer_weights(layer: nnx.Module) -> dict[str, np.ndarray]:
    """{w_x, w_h, b (, w_mx, w_mh)} of an MLSTMLayer / LSTMLayer as float64 arrays."""
    w = {"w_x": effective(layer.w_x), "w_h": effective(layer.w_h),
         "b": np.asarray(layer.bias[...], np.float64)}
    if hasattr(layer, "w_mx"):
        w["w_mx"], w["w_mh"] = effective(layer.w_mx), effective(layer.w_mh)
    return w
