"""Compressed input files (``.gz``, ``.bz2``, ``.xz``), read as their decompressed bytes.

A file's kind (csv/jsonl/txt) is the extension before the compression suffix
(``reviews.jsonl.gz`` is JSONL). Shared by ``sources`` and ``csv_rows``, which import it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from typing import IO, Any

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a damaged or mislabeled compressed file raises while it is read.
READ_ERRORS = (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError)


def compression(path: str) -> str | None:
    """The compression suffix of ``path`` (".gz", ".bz2", ".xz"), or None."""
    ext = os.path.splitext(path)[1].lower()
    return ext if ext in OPENERS else None


def format_extension(path: str) -> str:
    """The lower-case extension that says a file's format, the one before a compression
    suffix (``a.jsonl.gz`` -> ".jsonl"; ``a.CSV`` -> ".csv")."""
    inner = os.path.splitext(path)[0] if compression(path) else path
    return os.path.splitext(inner)[1].lower()


def open_input(path: str, mode: str = "rb", **kwargs: Any) -> IO:
    """``open(path, mode)``, decompressing a compressed file (``mode`` "rb", or "r" with
    ``encoding``/``newline``: text mode "rt")."""
    opener = OPENERS.get(compression(path) or "")
    if opener is None:
        return open(path, mode, **kwargs)
    return opener(path, mode if "b" in mode else mode.replace("r", "rt"), **kwargs)


DEFLATE_RATIO = 1032  # deflate's largest ratio of text to compressed bytes
TEXT_RATIO = 3  # bytes of text per compressed byte, where the file does not say (bz2, xz)


def decompressed_size(path: str) -> int:
    """The bytes a compressed file holds once decompressed, for progress and for sharing a
    sample budget between inputs: a .gz file's own record of it (its last 4 bytes, modulo
    4 GiB: taken where it is not below the file's size), counted where the text cannot reach
    4 GiB, else ``TEXT_RATIO`` x its size (an estimate: bz2 and xz do not keep it cheaply).
    An uncompressed file's size."""
    size = os.path.getsize(path)
    kind = compression(path)
    if kind is None:
        return size
    if kind == ".gz" and size >= 18:  # the smallest gzip member: 10 header + 8 trailer bytes
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            recorded = struct.unpack("<I", f.read(4))[0]  # modulo 2^32
        if recorded >= size:  # below 4 GiB (a wrapped count is smaller than the file, mostly)
            return recorded
        # A text shorter than the file: a small or incompressible one, or a file of several
        # members (cat a.gz b.gz; bgzip's empty last one), whose record is its last member's
        # only (8 bytes, or 0: the file was left out of the SentencePiece sample). Counted
        # where the text cannot reach 4 GiB (deflate expands at most DEFLATE_RATIO x).
        if size * DEFLATE_RATIO < 2 ** 32:
            with gzip.open(path, "rb") as f:
                return sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
    return TEXT_RATIO * size
