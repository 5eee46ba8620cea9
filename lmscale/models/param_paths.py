"""A parameter's path in a pytree of parameters, as plain names: what the code that groups,
freezes, decays or copies parameters by name compares against."""

from __future__ import annotations


def path_names(path: tuple) -> tuple[str, ...]:
    """The names of a ``jax.tree_util`` key path: a dict key, an attribute name, a list index
    (as a string), e.g. ("lm", "layers", "0", "wh", "value")."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
