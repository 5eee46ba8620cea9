"""Test helpers: randomize a module's params, read a layer's weights as NumPy arrays, walk a
jaxpr's equations, and split compiled HLO text into its computations."""

from __future__ import annotations

import re
from typing import Any, Iterator

import jax
import jax.extend
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


def jaxpr_equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of a jaxpr, recursing into sub-jaxprs (scan bodies, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from jaxpr_equations(sub)


def computations(hlo: str) -> dict[str, str]:
    """The computations of compiled HLO text, by name."""
    return {c.strip().split(" ")[0].lstrip("%"): c for c in hlo.split("\n\n") if c.strip()}


def loop_computations(hlo: str) -> list[str]:
    """The compiled loop bodies and every computation they call (their fusions), as text."""
    comps = computations(hlo)
    todo = set(re.findall(r"body=%([\w.\-]+)", hlo))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        todo |= set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", comps[name]))
    return [comps[n] for n in seen]
