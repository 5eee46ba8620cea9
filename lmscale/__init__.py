"""lmscale: fast large-scale language models in JAX and transfer to text classification."""

from __future__ import annotations

from typing import Any

from lmscale.data.errors import DataError


def load_lm(workdir: str, step: int | None = None) -> Any:
    """Loads a trained LM for notebooks: ``.score``, ``.featurize``, ``.generate`` (see lmscale.api)."""
    from lmscale.api import load_lm as _load
    return _load(workdir, step)


__all__ = ["DataError", "load_lm"]
