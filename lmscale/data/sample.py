"""A bounded sample of a corpus' text, spread over its inputs (for training a tokenizer).

Each input gets a share of the byte budget proportional to its size (a ``tfds:`` input,
whose size is unknown, an equal share). A raw text or JSONL file larger than its share is
read in windows at evenly spaced offsets, so a single 40 GB file is sampled through its
whole length without being read whole: a ``.txt`` window is a line-aligned stretch of
bytes, a JSONL window the whole records that start in its stretch of the file, up to its
part of the share. CSV files (a quoted field may hold newlines, so no offset is known to
start a row), tfds and compressed inputs, which cannot be entered at an offset, give their
first documents up to their share. Nothing but the sample (and the record being read) is
ever in memory.
"""

from __future__ import annotations

import codecs
import functools
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from lmscale.data.compression import compression
from lmscale.data.errors import DataError
from lmscale.data.sources import BOM, file_kind, input_size, iter_pieces

WINDOW_BYTES = 1 << 20  # bytes read per window of a sampled raw text file (at most)
MIN_WINDOWS = 64  # a share below 64 x WINDOW_BYTES still gets this many windows ...
MIN_WINDOW_BYTES = 1 << 14  # ... of at least this size (fewer windows for a smaller share)
SKIP_BYTES = 1 << 16  # a partial line at a window's start is skipped in reads of this size


def _shares(paths: Sequence[str], budget: int) -> list[int]:
    sizes = [input_size(p) for p in paths]
    unknown = sum(1 for p in paths if file_kind(p) == "tfds")
    known_total = sum(sizes)
    per_unknown = budget // len(paths) if unknown else 0
    rest = budget - per_unknown * unknown
    return [per_unknown if file_kind(p) == "tfds" else
            (size if known_total <= rest else rest * size // known_total)
            for p, size in zip(paths, sizes)]


def _window_count(share: int) -> int:
    """How many windows a file sampled for ``share`` bytes is read in: windows of at most
    WINDOW_BYTES, and no fewer than MIN_WINDOWS while each keeps MIN_WINDOW_BYTES (a small
    share is spread over the file too, in windows that still hold whole lines)."""
    return max(1, math.ceil(share / WINDOW_BYTES), min(MIN_WINDOWS, share // MIN_WINDOW_BYTES))


def _windows(path: str, size: int, share: int) -> Iterator[str]:
    """``share`` bytes of ``path`` in windows at evenly spaced offsets, cut at newlines."""
    count = _window_count(share)
    left = share  # what a window's cut edges leave unread goes to the windows after it
    with open(path, "rb") as f:
        for i in range(count):
            offset = i * size // count
            stretch = (i + 1) * size // count - offset  # no window reads into the next one's
            width = max(1, min(left // (count - i), stretch))
            f.seek(offset)
            data = f.read(width)
            if offset == 0:
                data = data.removeprefix(BOM)
            if offset > 0 and (nl := data.find(b"\n")) >= 0:
                data = data[nl + 1:]  # start at a line start
            if offset + width < size and (nl := data.rfind(b"\n")) >= 0:
                data = data[:nl + 1]  # end at a line end
            left -= len(data)
            text = data.decode("utf-8", errors="ignore")  # drops characters cut at the edges
            if text:
                yield text


def _skip_to_line_start(f: BinaryIO, offset: int) -> int:
    """Moves ``f`` to the first line start at or after ``offset`` (> 0) and returns it (the
    file's size if none): a line starts at ``offset`` if the byte before it is a newline."""
    f.seek(offset - 1)
    while chunk := f.read(SKIP_BYTES):
        if (nl := chunk.find(b"\n")) >= 0:
            f.seek(f.tell() - len(chunk) + nl + 1)
            return f.tell()
    return f.tell()


def _jsonl_windows(path: str, size: int, share: int, field: str, options: dict) -> Iterator[str]:
    """About ``share`` bytes of the texts of ``path``'s JSONL records, from windows at evenly
    spaced offsets: window i reads the records that start in its stretch
    ``[i * size // count, (i + 1) * size // count)`` of the file, in order, while their texts
    fit in its part of what is left of the share (the first one cut to fit if it alone is
    larger), so no record is read twice and a stretch with less text leaves its part to the
    next windows."""
    count = _window_count(share)
    left = share
    with open(path, "rb") as f:
        for i in range(count):
            start, stop = i * size // count, (i + 1) * size // count
            pos = _skip_to_line_start(f, start) if start > 0 else 0
            budget, first = left // (count - i), True
            while pos < stop and budget > 0:
                raw = f.readline()
                if not raw:  # the end of the file (shorter than when its size was read)
                    break
                at, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue
                text = _record_text(raw, path, at, field, options)
                if text is None:
                    continue
                data = text.encode("utf-8")
                if len(data) > budget and not first:
                    break
                data, first = data[:budget], False
                budget -= len(data)
                left -= len(data)
                if text := data.decode("utf-8", errors="ignore"):  # drops a character cut at the end
                    yield text


def is_encodable(text: str) -> bool:
    """Whether ``text`` has UTF-8 bytes (no lone surrogate, as a JSON "\\ud83d" alone gives)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_record_has(path: str, field: str) -> bool:
    st = os.stat(path)  # a file replaced under the same path is read again
    return _first_record_has_cached(path, field, (st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _first_record_has_cached(path: str, field: str, stamp: tuple[int, int]) -> bool:
    """Whether the first record of the JSONL file ``path`` has ``field`` (if not, the reader
    refuses the file: a mistyped --text_field, said with the keys there)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw.lstrip().removeprefix(codecs.BOM_UTF8))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
                return isinstance(obj, dict) and field in obj
    return False


def _record_text(raw: bytes, path: str, at: int, field: str, options: dict) -> str | None:
    """The text of the JSONL record ``raw`` (None: null or without the field, as the reader
    skips those past a record with it; a file whose first record lacks it is refused in the
    reader's first pass). A record the
    reader refuses is the reader's error, read from the file's start (its line number)."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict) and field in obj and (obj[field] is None or isinstance(obj[field], str)):
        if obj[field] is None or is_encodable(obj[field]):
            return obj[field]  # (a lone surrogate: the reader's error below, naming its line)
    if isinstance(obj, dict) and field not in obj and _first_record_has(path, field):
        return None  # skipped by the reader, as past a record with the field
    for _ in iter_pieces([path], notes=False, **options):  # raises at the first record it refuses
        pass
    raise DataError(f"{path}: the record at byte {at:,} has no string field {field!r}")


def _head(path: str, share: int, options: dict) -> Iterator[str]:
    """Whole documents of ``path`` from its start while they fit in ``share`` bytes (the first
    one cut to fit if it alone is larger)."""
    left = share
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for data, _ in iter_pieces([path], notes=False, **options):
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
        kind = file_kind(path)
        if kind in ("txt", "jsonl") and input_size(path) > share and not compression(path):
            if kind == "txt":
                yield from _windows(path, input_size(path), share)
            else:
                yield from _jsonl_windows(path, input_size(path), share, text_field or "text", options)
        else:
            yield from _head(path, share, options)
