"""Compressed input files (``.gz``, ``.bz2``, ``.xz``), read as their decompressed bytes.

A file's kind (csv/jsonl/txt) is the extension before the compression suffix
(``reviews.jsonl.gz`` is JSONL). Shared by ``sources`` and ``csv_rows``, which import it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from typing import IO, Any

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a damaged or mislabeled compressed file raises while it is read.
READ_ERRORS = (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError)


def compression(path: str) -> str | None:
    """The compression suffix of ``path`` (".gz", ".bz2", ".xz"), or None."""
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in OPENERS else None


def inner_path(path: str) -> str:
    """``path`` without its compression suffix (``a.jsonl.gz`` -> ``a.jsonl``)."""
    return os.path.splitext(path)[0] if compression(path) else path


def open_input(path: str, mode: str = "rb", **kwargs: Any) -> IO:
    """``open(path, mode)``, decompressing a compressed file (``mode`` "rb", or "r" with
    ``encoding``/``newline``: text mode "rt")."""
    opener = OPENERS.get(compression(path) or "")
    if opener is None:
        return open(path, mode, **kwargs)
    return opener(path, mode if "b" in mode else mode.replace("r", "rt"), **kwargs)
