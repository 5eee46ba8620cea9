"""Texts handed to the library by a caller (notebook API, classifiers, featurize)."""

from __future__ import annotations

from typing import Any

from lmscale.data.errors import DataError


def text_list(texts: Any) -> list[str]:
    """``texts`` as a list of str, read once (a generator, a NumPy array or a pandas Series
    too). A lone str (or bytes) is refused: iterated, it is one text per character."""
    if isinstance(texts, (str, bytes)):
        raise DataError(f"texts must be a list of strings, got one {type(texts).__name__} "
                        f"({texts[:40]!r}); pass [text] for a single text")
    try:
        out = list(texts)
    except TypeError:
        raise DataError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise DataError(f"text {i} is a {type(text).__name__}, not a str")
    return out
