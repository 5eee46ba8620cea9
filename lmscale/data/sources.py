"""Finding input files and streaming documents (as bytes) out of them.

Formats by extension: ``.csv``/``.tsv`` (one column per row), ``.jsonl``/``.json``
(one field per JSON line), anything else is raw bytes (whole file or line by line).
A ``.gz``/``.bz2``/``.xz`` file is read decompressed, its format the extension before
(``reviews.jsonl.gz``). ``tfds:NAME/SPLIT`` streams a TensorFlow Datasets text feature
(``text_field``), one document per example. A folder's hidden files and folders (names
starting with ".") are skipped; a path that exists is taken as it is, not split at its
commas or globbed.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

from lmscale.data.compression import READ_ERRORS, decompressed_size, format_extension, open_input
from lmscale.data.csv_rows import csv_rows, not_utf8
from lmscale.data.dataset import dataset_problem
from lmscale.data.errors import DataError, cr_lines_hint, json_kind
from lmscale.data.input_checks import (check_file, leftover_refusal, prepare_leftover,
                                       run_folder, run_refusal, unreadable)
from lmscale.data.tfds import is_tfds, iter_examples, iter_text

TXT_MODES = ("file", "line")
CHUNK_BYTES = 1 << 24  # whole .txt files are read in pieces of this size
WORD_LIMITS = 64  # ``segments``: text without a space is cut inside a "word" past 64 x limit
_CSV_EXTS = {".csv": ",", ".tsv": "\t"}
_JSONL_EXTS = (".jsonl", ".json")
NAME_CHARS, PATH_CHARS = 255, 4096  # Linux's longest file name and path (macOS: 255, 1024)


def _exists(item: str) -> bool:
    return os.path.exists(os.path.expanduser(item))


def split_inputs(patterns: str | Sequence[str]) -> list[str]:
    """The items of comma-separated/listed paths: commas inside an existing path are kept
    (``dir, v2``, also among other items: ``a.txt,dir, v2``); the rest is split at them.
    Linear in the items: a run of pieces is looked up only while its folder exists and its
    name is short enough (a list of 2,000 files took 55 s)."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    out: list[str] = []
    for p in patterns:
        parts, i = os.fspath(p).split(","), 0
        while i < len(parts):  # the longest run of pieces that is an existing path, else one
            j, run = i + 1, parts[i]
            for k in range(i + 1, len(parts)):  # longer runs while one still may be a path
                if "/" in parts[k] and not _exists(f"{run},{parts[k].split('/')[0]}".strip()):
                    break  # its folder is missing: so is every longer run's
                run += "," + parts[k]
                if len(run) - run.rfind("/") - 1 > NAME_CHARS or len(run) > PATH_CHARS:
                    break  # no file has so long a name
                if _exists(run.strip()):
                    j = k + 1
            item = ",".join(parts[i:j]).strip()
            if item:
                out.append(item)
            i = j
    return out


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to, None where it leads nowhere."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _files_under(folder: str, skipped: list[str], passed: list[str]) -> list[str]:
    """The files under ``folder``, symbolic links to folders followed (each folder once: a
    link back up is no loop), less hidden ones and those in hidden folders (appended to
    ``skipped``) and lmscale's run folders and a killed prepare's leftovers (to ``passed``)."""
    found = []
    seen = {_identity(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        skipped.extend(os.path.join(root, d) for d in sorted(dirs) if d.startswith("."))
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            path = os.path.join(root, d)
            if run_folder(path) or prepare_leftover(path):
                passed.append(path)
            elif (key := _identity(path)) not in seen:
                seen.add(key)
                keep.append(d)
        dirs[:] = keep
        skipped.extend(os.path.join(root, f) for f in sorted(files) if f.startswith("."))
        found.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return found


def _check_shards(item: str, files: list[str]) -> None:
    """Refuses token shards among ``files`` unless they belong to a readable dataset (then
    ``prepare._text_inputs`` refuses them, naming it): a copy without its metadata.json, or
    with one that is empty, torn or of a newer lmscale."""
    problems: dict[str, str | None] = {}
    for f in files:
        if not (f.endswith((".docs.npy", ".bin")) and os.path.basename(f).startswith("shard_")):
            continue
        folder = os.path.dirname(os.path.dirname(f)) or "."
        if not os.path.isfile(os.path.join(folder, "metadata.json")):
            raise DataError(f"{item} holds token shards of a prepared lmscale dataset ({f}) "
                            f"but no readable metadata.json above them: an incomplete copy? Copy "
                            f"the dataset folder whole (metadata.json with its split folders), "
                            f"or prepare it again; shard files are not text to train on")
        if folder not in problems:
            problems[folder] = dataset_problem(folder)
        if problems[folder]:
            raise DataError(f"{folder} looks like a prepared lmscale dataset (token shards: {f}), "
                            f"and it cannot be read: {problems[folder]}; copy the dataset folder "
                            f"again whole, or prepare it again from its text (lmscale.prepare "
                            f"--overwrite); shard files are not text to train on")


def _note(notes: bool, count: int, what: str, paths: list[str]) -> None:
    if count and notes:
        named = ", ".join(os.path.normpath(p) for p in paths[:3])
        print(f"note: skipped {count} {what} in the input folders: {named}"
              f"{', ...' if len(paths) > 3 else ''}", file=sys.stderr, flush=True)


def expand_inputs(patterns: str | Sequence[str], *, notes: bool = True) -> list[str]:
    """Sorted, de-duplicated file paths for comma-separated/listed paths, globs and folders
    (``tfds:NAME/SPLIT`` items are kept as they are); a file reached by several paths
    (symbolic links) is listed once. ``notes``: say what hidden files and folders, run
    folders and prepare leftovers were skipped under a folder (a hidden file named itself is
    read; a run folder or leftover named itself is refused). Files that cannot be read as
    text are refused: ``input_checks.check_file``."""
    items = split_inputs(patterns)
    if not items:
        raise DataError("no input paths given")
    paths: set[str] = set()
    skipped: list[str] = []
    passed: list[str] = []
    for item in items:
        if is_tfds(item):
            paths.add(item)
            continue
        item = os.path.expanduser(item)
        if os.path.exists(item):
            matched = [item]
            if os.path.isdir(item) and run_folder(item):
                raise DataError(run_refusal(item))
            if os.path.isdir(item) and prepare_leftover(item):
                raise DataError(leftover_refusal(item))
        elif os.path.islink(item):
            check_file(item)  # a broken link: says so
            matched = []
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise DataError(f"pattern {item} matched no files")
        else:
            from lmscale.datasets import fetch_hint
            raise DataError(f"no such file or directory: {item}{fetch_hint(item)}")
        files, hidden, left = [], len(skipped), len(passed)
        for m in matched:
            if not os.path.isdir(m):
                files.append(m)
            elif m != item and (run_folder(m) or prepare_leftover(m)):
                passed.append(m)  # matched by a glob: skipped as under a folder
            else:
                files.extend(_files_under(m, skipped, passed))
        _check_shards(item, files)
        if not files:
            but = [w for w, n in (("hidden ones (names starting with '.')", len(skipped) - hidden),
                                  ("lmscale run folders or prepare leftovers", len(passed) - left)) if n]
            raise DataError(f"{item} holds no files" + (f" but {' and '.join(but)}" if but else ""))
        paths.update(os.path.normpath(f) for f in files)
    _note(notes, len(skipped), "hidden file(s)/folder(s) (names starting with '.')", skipped)
    runs = [p for p in passed if run_folder(p)]
    leftovers = [p for p in passed if p not in runs]
    _note(notes, len(runs), "lmscale run folder(s) (workdirs: checkpoints, metrics; not text)", runs)
    _note(notes, len(leftovers), "temporary folder(s) of killed or running prepares (token ids, "
          "not text; preparing that output again removes them)", leftovers)
    out, seen = [], {}
    for path in sorted(paths):
        if not is_tfds(path):
            check_file(path)
            key = _identity(path)
            if key in seen:
                continue  # the same file through a symbolic link: read once
            seen[key] = path
        out.append(path)
    return out


def file_kind(path: str) -> str:
    """``"csv"``, ``"jsonl"`` or ``"txt"`` by file extension, the one before a compression
    suffix (``"tfds"`` for tfds: inputs)."""
    if is_tfds(path):
        return "tfds"
    ext = format_extension(path)
    if ext in _CSV_EXTS:
        return "csv"
    if ext in _JSONL_EXTS:
        return "jsonl"
    return "txt"


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark: not text (CSV and JSONL readers drop it too)
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _iter_txt(path: str, txt_mode: str) -> Iterator[tuple[bytes, bool]]:
    with open_input(path, "rb") as f:
        head = f.read(len(BOM))
        if head.startswith(UTF16_BOMS):
            print(f"note: {path} starts with a UTF-16 byte order mark: it is read as bytes, not "
                  f"as text (convert it to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8)",
                  file=sys.stderr, flush=True)
        if head != BOM:
            f.seek(0)
        if txt_mode == "line":
            for line in f:
                yield line, True
            return
        first = True  # a whole file is one document, read in chunks
        while chunk := f.read(CHUNK_BYTES):
            yield chunk, first
            first = False


def _iter_jsonl(path: str, field: str, notes: bool = True) -> Iterator[tuple[bytes, bool]]:
    """A record without ``field`` is an error until one with it was read (a mistyped
    --text_field); after that it is skipped, as a null text is, and counted in a note (the
    Amazon reviews have records without reviewText: hours into a prepare, they aborted it)."""
    seen, missing, first_missing, nulls = False, 0, 0, 0
    with open_input(path, "rb") as f:
        first = True
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if first and raw.lstrip().removeprefix(BOM).startswith(b"["):
                raise DataError(f"{path}:{lineno}: a JSON array; expected one JSON object per line "
                                f"(JSONL; jq -c '.[]' converts an array to it)")
            first = False
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as e:  # the line and offset (decompressed), UTF-16 said
                raise DataError(not_utf8(path, e)) from None
            except ValueError as e:  # JSONDecodeError; an integer of over 4300 digits
                raise DataError(f"{path}:{lineno}: invalid JSON ({e}){cr_lines_hint(raw, e)}"
                                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {json_kind(obj)}")
            if field not in obj:
                if not seen:
                    raise DataError(f"{path}:{lineno}: no field {field!r}; keys are {sorted(obj)} "
                                    f"(name the text's: --text_field of lmscale.prepare, or "
                                    f"--config.data.text_field)")
                missing, first_missing = missing + 1, first_missing or lineno
                continue
            seen = True
            value = obj[field]
            if value is None:
                nulls += 1
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {field!r} is {json_kind(value)}, "
                                f"not a string")
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate escape ("\\ud83d" alone)
                raise DataError(f"{path}:{lineno}: field {field!r} has {value[e.start:e.end]!r} at "
                                f"character {e.start}, a lone UTF-16 surrogate with no UTF-8 "
                                f"encoding (JSON escapes a character outside the BMP as a pair, "
                                f"e.g. \\ud83d\\ude00; a text cut between the two lost one)") from None
            yield data, True
    if (missing or nulls) and notes:
        counts = [f"{missing} without the field {field!r} (the first at line {first_missing})"
                  if missing else "", f"{nulls} with a null {field!r}" if nulls else ""]
        print(f"note: {path}: records skipped: {'; '.join(c for c in counts if c)}",
              file=sys.stderr, flush=True)


def _iter_csv(path: str, column: str) -> Iterator[tuple[bytes, bool]]:
    delimiter = _CSV_EXTS[format_extension(path)]
    # An empty file has no rows (a corpus may hold some); a row with other fields than the
    # header is an error naming its line.
    for _, row in csv_rows(path, [column], delimiter, empty_ok=True,
                           column_hint="name the text's: --text_column of lmscale.prepare, or "
                                       "--config.data.text_column"):
        if row[column]:
            yield row[column].encode("utf-8"), True


def iter_pieces(paths: Sequence[str], *, text_column: str | None = None,
                text_field: str | None = None, txt_mode: str = "file",
                notes: bool = True) -> Iterator[tuple[bytes, bool]]:
    """Streams ``(data, starts_document)`` pieces of ``paths`` in order (``notes``: say how
    many JSONL records had no text; the SentencePiece sample's reads do not).

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
                yield from _iter_jsonl(path, text_field or "text", notes)
            else:
                yield from _iter_txt(path, txt_mode)
        except FileNotFoundError:
            from lmscale.datasets import fetch_hint
            raise DataError(f"no such file or directory: {path}{fetch_hint(path)}") from None
        except IsADirectoryError:
            raise DataError(f"{path} is a directory, not a file") from None
        except READ_ERRORS as e:
            error = unreadable(path, e)
            if error is None:
                raise
            raise error from None


def _cut(data: bytes, limit: int) -> int:
    """Where to cut a continuing document's text (0: not yet): after its last newline; with
    none and more than ``limit`` bytes, before its last space/tab (a word stays whole); with
    none either and more than ``WORD_LIMITS * limit`` bytes, before its last (maybe
    incomplete) UTF-8 character."""
    nl = data.rfind(b"\n")
    if nl >= 0:
        return nl + 1
    if len(data) <= limit:
        return 0
    space = max(data.rfind(b" "), data.rfind(b"\t"), data.rfind(b"\r"))
    if space > 0:
        return space
    if len(data) <= WORD_LIMITS * limit:  # one word so far: wait for its end
        return 0
    i = len(data) - 1
    while i > 0 and len(data) - i < 4 and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


def segments(pieces: Iterable[tuple[bytes, bool]], recut: bool, limit: int
             ) -> Iterator[tuple[bytes, bool, bool]]:
    """``(data, starts_document, continues)`` of the non-empty text; empty documents vanish.

    With ``recut`` (a subword or word tokenizer, which must see whole characters and should
    see whole lines and words) a document arriving in one piece stays whole, and one read in
    several pieces is cut after newlines (or before spaces) instead of at the piece edges;
    ``continues``: the segment is such a cut, its document goes on in the next (a word
    tokenizer does not close it with ``<eos>``): as each further piece comes, after the last
    newline pending, or, with none, once more than ``limit`` bytes are pending, before a space
    (``_cut``). Without ``recut`` ``continues`` is False.
    """
    pending, pending_begins, new_doc = b"", False, False
    for data, begins in pieces:
        if begins and pending:
            yield pending, pending_begins, False
            pending = b""
        new_doc = new_doc or begins
        if not data:
            continue
        if not recut:
            yield data, new_doc, False
            new_doc = False
            continue
        if pending:  # the document goes on: emit what it has up to a safe cut
            cut = _cut(pending, limit)
            if cut:
                yield pending[:cut], pending_begins, True
                pending_begins, pending = False, pending[cut:]
            pending += data
        else:
            pending, pending_begins, new_doc = data, new_doc, False
    if pending:
        yield pending, pending_begins, False


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
    """Bytes of text in an input file (0 for a tfds: input, whose size is not known in
    advance; a compressed file's decompressed size, recorded or estimated:
    ``compression.decompressed_size``)."""
    if is_tfds(path):
        return 0
    try:
        return decompressed_size(path)
    except OSError:
        check_file(path)  # a file gone since it was listed, or a broken link: says which
        raise
