"""Finding input files and streaming documents (as bytes) out of them.

Formats by extension: ``.csv``/``.tsv`` (one column per row), ``.jsonl``/``.json``
(one field per JSON line), anything else is raw bytes (whole file or line by line).
``tfds:NAME/SPLIT`` streams a TensorFlow Datasets text feature (``text_field``), one
document per example.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence

from lmscale.data.csv_rows import csv_rows
from lmscale.data.errors import DataError
from lmscale.data.tfds import is_tfds, iter_examples, iter_text

TXT_MODES = ("file", "line")
CHUNK_BYTES = 1 << 24  # whole .txt files are read in pieces of this size
_CSV_EXTS = {".csv": ",", ".tsv": "\t"}
_JSONL_EXTS = (".jsonl", ".json")


def _split_patterns(patterns: str | Sequence[str]) -> list[str]:
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out: list[str] = []
    for p in patterns:
        out.extend(s.strip() for s in os.fspath(p).split(",") if s.strip())
    return out


def _files_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files)
    return found


def expand_inputs(patterns: str | Sequence[str]) -> list[str]:
    """Sorted, de-duplicated file paths for comma-separated/listed paths, globs and folders
    (``tfds:NAME/SPLIT`` items are kept as they are)."""
    items = _split_patterns(patterns)
    if not items:
        raise DataError("no input paths given")
    paths: set[str] = set()
    for item in items:
        if is_tfds(item):
            paths.add(item)
            continue
        item = os.path.expanduser(item)
        if glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise DataError(f"pattern {item} matched no files")
        elif os.path.exists(item):
            matched = [item]
        else:
            from lmscale.datasets import fetch_hint
            raise DataError(f"no such file or directory: {item}{fetch_hint(item)}")
        files = []
        for m in matched:
            files.extend(_files_under(m) if os.path.isdir(m) else [m])
        if not files:
            raise DataError(f"{item} holds no files")
        paths.update(os.path.normpath(f) for f in files)
    return sorted(paths)


def file_kind(path: str) -> str:
    """``"csv"``, ``"jsonl"`` or ``"txt"`` by file extension (``"tfds"`` for tfds: inputs)."""
    if is_tfds(path):
        return "tfds"
    ext = os.path.splitext(path)[1].lower()
    if ext in _CSV_EXTS:
        return "csv"
    if ext in _JSONL_EXTS:
        return "jsonl"
    return "txt"


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark: not text (CSV and JSONL readers drop it too)


def _iter_txt(path: str, txt_mode: str) -> Iterator[tuple[bytes, bool]]:
    with open(path, "rb") as f:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
        if txt_mode == "line":
            for line in f:
                yield line, True
            return
        first = True  # a whole file is one document, read in chunks
        while chunk := f.read(CHUNK_BYTES):
            yield chunk, first
            first = False


def _iter_jsonl(path: str, field: str) -> Iterator[tuple[bytes, bool]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if field not in obj:
                raise DataError(f"{path}:{lineno}: no field {field!r}; keys are {sorted(obj)} "
                                f"(name the text's: --text_field, or data.text_field)")
            value = obj[field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {field!r} is a {type(value).__name__}, not a string")
            yield value.encode("utf-8"), True


def _iter_csv(path: str, column: str) -> Iterator[tuple[bytes, bool]]:
    delimiter = _CSV_EXTS[os.path.splitext(path)[1].lower()]
    # An empty file has no rows (a corpus may hold some); a row with other fields than the
    # header is an error naming its line.
    for _, row in csv_rows(path, [column], delimiter, empty_ok=True,
                           column_hint="name the text's: --text_column, or data.text_column"):
        if row[column]:
            yield row[column].encode("utf-8"), True


def iter_pieces(paths: Sequence[str], *, text_column: str | None = None,
                text_field: str | None = None, txt_mode: str = "file") -> Iterator[tuple[bytes, bool]]:
    """Streams ``(data, starts_document)`` pieces of ``paths`` in order.

    A document is a piece with ``starts_document`` True followed by the pieces with False;
    only whole ``.txt`` files (``txt_mode="file"``) come in more than one piece, so a huge
    file is never held in memory whole.
    """
    if txt_mode not in TXT_MODES:
        raise DataError(f"txt_mode must be one of {list(TXT_MODES)}, got {txt_mode!r}")
    if isinstance(paths, str):
        paths = [paths]
    for path in paths:
        if is_tfds(path):
            yield from ((text, True) for text in iter_text(iter_examples(path), text_field or "text", path))
            continue
        kind = file_kind(path)
        try:
            if kind == "csv":
                yield from _iter_csv(path, text_column or "text")
            elif kind == "jsonl":
                yield from _iter_jsonl(path, text_field or "text")
            else:
                yield from _iter_txt(path, txt_mode)
        except FileNotFoundError:
            from lmscale.datasets import fetch_hint
            raise DataError(f"no such file or directory: {path}{fetch_hint(path)}") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a directory, not a file") from None


def iter_documents(paths: Sequence[str], *, text_column: str | None = None,
                   text_field: str | None = None, txt_mode: str = "file") -> Iterator[bytes]:
    """Streams the documents of ``paths`` in order, as bytes, one row/line/file at a time."""
    if isinstance(paths, str):
        paths = [paths]
    options = dict(text_column=text_column, text_field=text_field, txt_mode=txt_mode)
    for path in paths:
        if file_kind(path) == "txt" and txt_mode == "file":
            whole = b"".join(data for data, _ in iter_pieces([path], **options))
            if whole:
                yield whole
        else:
            for data, _ in iter_pieces([path], **options):
                yield data


def input_size(path: str) -> int:
    """Bytes of an input file (0 for a tfds: input, whose size is not known in advance)."""
    return 0 if is_tfds(path) else os.path.getsize(path)
