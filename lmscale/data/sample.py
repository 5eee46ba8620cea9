"""A bounded sample of a corpus' text, spread over its inputs (for training a tokenizer).

Each input gets a share of the byte budget proportional to its size (a ``tfds:`` input,
whose size is unknown, an equal share). A raw text file larger than its share is read in
line-aligned windows at evenly spaced offsets, so a single 40 GB file is sampled through
its whole length without being read whole; CSV/JSONL/tfds and compressed inputs give
their first documents up to their share. Nothing but the sample is ever in memory.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence

from lmscale.data.compression import compression
from lmscale.data.errors import DataError
from lmscale.data.sources import BOM, file_kind, input_size, iter_pieces

WINDOW_BYTES = 1 << 20  # bytes read per window of a sampled raw text file


def _shares(paths: Sequence[str], budget: int) -> list[int]:
    sizes = [input_size(p) for p in paths]
    unknown = sum(1 for p in paths if file_kind(p) == "tfds")
    known_total = sum(sizes)
    per_unknown = budget // len(paths) if unknown else 0
    rest = budget - per_unknown * unknown
    return [per_unknown if file_kind(p) == "tfds" else
            (size if known_total <= rest else rest * size // known_total)
            for p, size in zip(paths, sizes)]


def _windows(path: str, size: int, share: int) -> Iterator[str]:
    """``share`` bytes of ``path`` in windows at evenly spaced offsets, cut at newlines."""
    count = max(1, math.ceil(share / WINDOW_BYTES))
    width = max(1, share // count)
    with open(path, "rb") as f:
        for i in range(count):
            offset = i * size // count
            f.seek(offset)
            data = f.read(width)
            if offset == 0:
                data = data.removeprefix(BOM)
            if offset > 0 and (nl := data.find(b"\n")) >= 0:
                data = data[nl + 1:]  # start at a line start
            if offset + width < size and (nl := data.rfind(b"\n")) >= 0:
                data = data[:nl + 1]  # end at a line end
            text = data.decode("utf-8", errors="ignore")  # drops characters cut at the edges
            if text:
                yield text


def _head(path: str, share: int, options: dict) -> Iterator[str]:
    """Whole documents of ``path`` from its start while they fit in ``share`` bytes (the first
    one cut to fit if it alone is larger)."""
    left = share
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for data, _ in iter_pieces([path], **options):
        if left <= 0 or (len(data) > left and left < share):
            return
        data = data[:left]
        left -= len(data)
        text = decoder.decode(data)
        if text:
            yield text


def sample_texts(paths: Sequence[str], budget: int, *, text_column: str | None = None,
                 text_field: str | None = None, txt_mode: str = "file") -> Iterator[str]:
    """Streams about ``budget`` bytes of text from ``paths`` (all of it if it is smaller)."""
    if budget < 1:
        raise DataError(f"sample budget must be a positive number of bytes, got {budget!r}")
    options = dict(text_column=text_column, text_field=text_field, txt_mode=txt_mode)
    for path, share in zip(paths, _shares(paths, budget)):
        if share <= 0:
            continue
        if file_kind(path) == "txt" and input_size(path) > share and not compression(path):
            yield from _windows(path, input_size(path), share)
        else:
            yield from _head(path, share, options)
