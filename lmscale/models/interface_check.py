"""A check that a kind of one's own builds a module with the interface the tools rely on
(``registry``'s docstring), run once per kind and size when such a module is built.

Without it a plugin that lacked a method failed deep inside the first tool's trace (a
TypeError about None), and one whose logits were not V wide trained on a wrong loss until
the run "diverged", advising a lower learning rate. The check traces the module abstractly
(``jax.eval_shape``: no FLOPs, no memory) on 2 rows of 3 tokens and compares what comes back
with the interface; built-in kinds are covered by their own tests and are not traced again.
A module that cannot be traced so (one that requires another length, say) is not refused:
the tools' own calls then name its error.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_CALLABLE = ("initial_carry", "__call__", "features", "init_decode", "decode_step")
_ATTRIBUTES = ("feature_states", "feature_width", "num_layers", "max_len")
_ROWS, _TOKENS = 2, 3  # the traced batch
_CHECKED: set[tuple[str, int, str]] = set()  # (kind, vocabulary, architecture) checked


class ModelInterfaceError(ValueError):
    """A kind's module lacks part of the model interface (the CLI says it in one line)."""


def check_module(kind: str, architecture: str, model: nnx.Module, vocab_size: int) -> None:
    """Raises ModelInterfaceError naming ``kind`` and what its module gets wrong: a missing
    method or attribute, logits not float [B, T, V], a new carry whose structure, shapes or
    dtypes (a float's width aside) differ from ``initial_carry``'s (a leaf without the batch
    as its leading axis too), features not [L, B, T, F] under each ``feature_states`` name,
    or a decode step whose logits are not [B, V]."""
    key = (kind, vocab_size, architecture)  # the fields that shape it (``registry.architecture``)
    if key in _CHECKED:
        return
    where = f"model.kind {kind!r} (its module {type(model).__name__})"
    missing = [n for n in _CALLABLE if not callable(getattr(model, n, None))]
    missing += [n for n in _ATTRIBUTES if not hasattr(model, n)]
    if missing:
        raise ModelInterfaceError(f"{where} lacks {', '.join(missing)}: the interface every "
                                  f"tool reads is in lmscale/models/registry.py's docstring")
    graphdef, state = nnx.split(model)

    def traced(fn: Any) -> Any:
        return jax.eval_shape(lambda s: fn(nnx.merge(graphdef, s)), state)

    try:
        _check_traced(where, model, vocab_size, traced)
    except ModelInterfaceError:
        raise
    except Exception:  # noqa: BLE001 - a module that cannot read 2 x 3 tokens (a length it
        return  # requires, say) is left to the tools' own calls, which name their error
    _CHECKED.add(key)


def _check_traced(where: str, model: nnx.Module, vocab_size: int, traced: Any) -> None:
    """The shapes ``traced(fn of the module)`` gives, against the interface."""
    rows, tokens = _ROWS, jnp.zeros((_ROWS, _TOKENS), jnp.int32)

    carry = traced(lambda m: m.initial_carry(rows))
    for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
        if not leaf.shape or leaf.shape[0] != rows:
            raise ModelInterfaceError(
                f"{where}: initial_carry({rows}) gives "
                f"{'a leaf ' + jax.tree_util.keystr(path) if path else 'an array'} of "
                f"shape {leaf.shape}; every leaf has the batch as its leading axis")
    zero = lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), carry)  # noqa: E731
    logits, new = traced(lambda m: m(tokens, zero()))
    _expect_logits(where, "__call__", logits, (rows, _TOKENS, vocab_size))
    _expect_same_carry(where, "__call__", carry, new)
    features = traced(lambda m: m.features(tokens, zero()))
    names = tuple(model.feature_states)
    want = (int(model.num_layers), rows, _TOKENS, int(model.feature_width))
    for name in names:
        got = features.get(name) if isinstance(features, dict) else None
        if got is None or tuple(got.shape) != want:
            raise ModelInterfaceError(
                f"{where}: features()[{name!r}] is {None if got is None else tuple(got.shape)}; "
                f"expected [layers, B, T, feature_width] = {list(want)}")
    if not isinstance(features, dict) or "carry" not in features:
        raise ModelInterfaceError(f"{where}: features() returns no 'carry' (the new carry)")
    _expect_same_carry(where, "features", carry, features["carry"])
    step_logits, _ = traced(lambda m: m.decode_step(tokens[:, 0], m.init_decode(rows, _TOKENS)))
    _expect_logits(where, "decode_step", step_logits, (rows, vocab_size))


def _expect_logits(where: str, call: str, logits: Any, shape: tuple[int, ...]) -> None:
    if (not hasattr(logits, "shape") or tuple(logits.shape) != shape
            or not jnp.issubdtype(logits.dtype, jnp.floating)):
        got = (f"{getattr(logits, 'dtype', '')} {tuple(logits.shape)}" if hasattr(logits, "shape")
               else type(logits).__name__)
        raise ModelInterfaceError(f"{where}: {call} returned logits {got}; expected a float "
                                  f"array of shape {shape} (the vocabulary last)")


def _expect_same_carry(where: str, call: str, carry: Any, new: Any) -> None:
    """The new carry must be the initial one's like: the next batch reads it in its place.
    A float leaf of another width (a bfloat16 carry from float32 zeros) is not refused: the
    tools read it so (the step is traced once more) and such a plugin trained and resumed."""
    def described(tree: Any) -> Any:
        return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)

    def kinds(tree: Any) -> Any:
        return jax.tree.map(lambda x: (tuple(x.shape), "float" if jnp.issubdtype(
            x.dtype, jnp.floating) else str(x.dtype)), tree)
    if (jax.tree.structure(carry) != jax.tree.structure(new)
            or kinds(carry) != kinds(new)):
        raise ModelInterfaceError(
            f"{where}: {call} returned a new carry {described(new)} unlike initial_carry's "
            f"{described(carry)} (the next batch reads it in its place: the same structure, "
            f"shapes and kinds of dtype: float, int, bool)")
