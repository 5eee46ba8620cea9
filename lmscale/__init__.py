"""lmscale: fast large-scale language models in JAX and transfer to text classification."""

from __future__ import annotations

from typing import Any

from lmscale.data.errors import DataError


def load_lm(workdir: str, step: int | None = None) -> Any:
    """Loads a trained LM for notebooks: ``.score``, ``.featurize``, ``.generate`` (see lmscale.api)."""
    from lmscale.api import load_lm as _load
    return _load(workdir, step)


def load_classifier(path: str) -> Any:
    """A fine-tuned run or transfer output for notebooks: ``.predict(texts)`` -> (probs, labels)."""
    from lmscale.finetuning.classifier import load_classifier as _load
    return _load(path)


__all__ = ["DataError", "load_classifier", "load_lm"]
