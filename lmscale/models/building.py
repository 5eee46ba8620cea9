"""Building a module's parameters in one program, or as shapes only.

Built eagerly, a module's initialization runs each random draw, zero-fill and cast as a
program of its own: 27 compiles for an mLSTM, 37 for the transformer, 2-3 s of every
start-up on a CPU, each under the compilation cache's floor. ``built_in_one_program`` traces
a builder once instead: under ``jax.jit`` (the arrays, computed by one program) or under
``jax.eval_shape`` (``jax.ShapeDtypeStruct`` leaves, nothing allocated: the ``like`` a
checkpoint restore reads into, or a plan of an 8192-d model). The builder's static result
(an ``nnx.GraphDef``, sizes) is not an array, so it is kept from the trace.

Given ``shardings``, the program writes its arrays straight into them (``out_shardings``),
as flax's and MaxText's examples build a train state: each device computes its own copy, so
the state is never gathered on one device and copied to the others (on several hosts, each
computes its devices' part), and no copy program is compiled.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.registry import build_model

Static = TypeVar("Static")


def built_in_one_program(build: Callable[..., tuple[Static, Any]], *args: Any,
                         abstract: bool = False, shardings: Callable[[Any], Any] | None = None,
                         check: Callable[[Any], None] | None = None) -> tuple[Static, Any]:
    """``build(*args) -> (static, arrays)``: (static, arrays computed by one jitted program),
    or with ``abstract`` (static, the arrays' ``jax.ShapeDtypeStruct``s). ``args``: arrays the
    program takes as inputs (not constants baked into it).

    ``shardings``: a function from the arrays' shapes to their shardings (a matching tree);
    the program then computes the arrays placed so (ignored with ``abstract``). ``check``:
    called with the arrays' shapes before anything is computed, and again with the compiled
    program's temporaries per device (``check(shapes, temp)``; not with ``abstract``); it may
    raise."""
    statics: list[Static] = []

    @functools.wraps(build)  # the program is named after the builder (JAX_LOG_COMPILES, profiles)
    def arrays(*args: Any) -> Any:
        static, tree = build(*args)
        statics.append(static)
        return tree

    shapes = jax.eval_shape(arrays, *args) if abstract or shardings or check else None
    program = None if abstract else (jax.jit(arrays) if shardings is None else
                                     jax.jit(arrays, out_shardings=shardings(shapes)))
    if check is not None:
        check(shapes)  # the state alone first: no compile for a state that cannot fit
        if program is not None:
            # The program's own temporaries (random bits, casts) come on top of its outputs
            # (measured: an 8192-d mLSTM's 7.6 GiB state peaked at 16.5 GiB while computed).
            program = program.lower(*args).compile()
            mem = program.memory_analysis()
            check(shapes, max(0, mem.temp_size_in_bytes))
    if abstract:
        tree = shapes
    else:
        tree = program(*args)
    return statics[0], tree


def model_params(model_config: Any, vocab_size: int, *, seed: int = 0, dtype: Any = jnp.float32,
                 abstract: bool = False) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, ``nnx.Param`` state) of ``build_model(model_config, vocab_size)`` with its
    matmuls in ``dtype``: initialized from ``seed`` by one program, or shapes only."""
    def init_model_params() -> tuple[nnx.GraphDef, Any]:
        model = build_model(model_config, vocab_size, rngs=nnx.Rngs(seed), dtype=dtype)
        return nnx.split(model, nnx.Param)

    return built_in_one_program(init_model_params, abstract=abstract)
