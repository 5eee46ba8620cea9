"""Text preprocessing that a pretrained model expects before its tokenizer.

OpenAI's released mLSTM saw every text through ``preprocess`` in its utils.py: HTML
entities unescaped, newlines replaced by spaces, surrounding whitespace stripped, then
framed as "\\n " + text + " " and UTF-8 encoded. Its features for a text are the final cell
state after the closing space, so featurizing an imported OpenAI model reproduces the
original's numbers only with the same framing.

A converted workdir names its preprocessing in ``config.json`` under
``derived["preprocess"]`` ("openai" or "none"); ``preprocessor_for(lm.derived)`` returns
the function to apply to each text before ``lm.tokenizer.encode``.

Not reproduced: sentiment-discovery's ``process_str`` (HTML-tag removal, unidecode,
whitespace collapsing, the same framing); its imported models get "none".
"""

from __future__ import annotations

import html
from typing import Any, Callable, Mapping

from lmscale.pretrained.errors import ConvertError

Preprocessor = Callable[[str | bytes], str | bytes]


def openai_preprocess(text: str | bytes) -> bytes:
    """OpenAI's framing: unescape HTML, newlines -> spaces, strip, "\\n " + text + " ", UTF-8.

    Bytes are decoded as UTF-8 with surrogate escapes, so invalid bytes pass through unchanged.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="surrogateescape")
    text = html.unescape(text).replace("\n", " ").strip()
    return ("\n " + text + " ").encode("utf-8", errors="surrogateescape")


def no_preprocess(text: str | bytes) -> str | bytes:
    """The text as it is."""
    return text


PREPROCESSORS: dict[str, Preprocessor] = {"none": no_preprocess, "openai": openai_preprocess}
# What each preprocessing puts around the text: (before, after), as UTF-8 bytes.
FRAMING: dict[str, tuple[bytes, bytes]] = {"none": (b"", b""), "openai": (b"\n ", b" ")}


def get_preprocessor(name: str) -> Preprocessor:
    """The preprocessing function called ``name`` ("none" or "openai")."""
    if name not in PREPROCESSORS:
        raise ConvertError(f"unknown text preprocessing {name!r}; expected one of {sorted(PREPROCESSORS)}")
    return PREPROCESSORS[name]


def preprocessor_for(derived: Mapping[str, Any]) -> Preprocessor:
    """The preprocessing a run's ``derived`` values name (no preprocessing if none is named)."""
    return get_preprocessor(str(derived.get("preprocess", "none")))


def framing_for(derived: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The (before, after) bytes the run's preprocessing frames each text with."""
    name = str(derived.get("preprocess", "none"))
    get_preprocessor(name)
    return FRAMING[name]


def prompt_for(derived: Mapping[str, Any], prompt: str) -> str | bytes:
    """A generation prompt as the run's model reads it: preprocessed, without the closing
    framing (the continuation comes there), unless the prompt itself ends in whitespace after
    some text. A prompt that preprocessing empties (whitespace only, e.g. the CLI's "\\n")
    is the opening framing alone: the start of a text (OpenAI's: "\\n ", never "\\n  ")."""
    text = preprocessor_for(derived)(prompt)
    before, after = framing_for(derived)
    if after:
        encoded = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        empty = encoded == before + after  # nothing left between the framing
        if (empty or not prompt[-1:].isspace()) and encoded.endswith(after):
            return encoded[:-len(after)]
    return text
