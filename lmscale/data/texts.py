"""Texts handed to the library by a caller (notebook API, classifiers, featurize)."""

from __future__ import annotations

import sys
from typing import Any, Sequence

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
            hint = (" (NaN: a missing value, e.g. an empty cell pandas read; drop those rows)"
                    if isinstance(text, float) and text != text else
                    " (decode it: text.decode('utf-8'))" if isinstance(text, bytes) else "")
            raise DataError(f"text {i} is a {type(text).__name__}, not a str{hint}")
    return out


def last_tokens(ids: Sequence[Any], limit: int | None, source: str = "",
                say: bool = True) -> list[Any]:
    """Each token sequence cut to its last ``limit`` tokens (a model with a length limit reads
    a text's end), said in one note when any is cut (``source`` names the texts in it; ``say``
    False: unsaid); all of them as they are for ``limit`` None."""
    if limit is None:
        return list(ids)
    cut = [len(x) for x in ids if len(x) > limit]
    if cut and say:
        print(f"note: {source + ': ' if source else ''}{len(cut)} of {len(ids)} texts are longer "
              f"than the model's max_len={limit} tokens (the longest {max(cut)}): their last "
              f"{limit} tokens are read", file=sys.stderr, flush=True)
    return [x[-limit:] for x in ids]
