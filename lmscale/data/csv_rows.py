"""Rows of a .csv/.tsv file, checked as every reader here needs them: corpora
(``data.sources``), labeled texts (``transfer.labeled``) and texts to classify
(``finetuning.predict``); a compressed file (``.csv.gz``) is read decompressed.

Errors are ``DataError``s naming the file, and the line where one row is at fault: an empty
file (no header row), a column missing from the header (listing the columns there), a row
with more fields than the header (an unquoted comma inside a text, which ``csv.DictReader``
would otherwise keep under the key None and read a truncated text from) or with fewer,
invalid UTF-8, and malformed CSV.

A .csv file follows the CSV quoting rules (a field in double quotes may hold commas, quotes
doubled and newlines). A tab-separated file (``delimiter="\\t"``) is read line by line, as
TSV files usually are (GLUE's, for one): each line is one row, its fields are split at every
tab, and a double quote is a character of the text like any other, except that a field
written with CSV quoting (Python's csv and pandas quote a field holding a quote: the whole
field in quotes, its own quotes doubled) is read back as the text it quotes; a field quoted
whole with no doubled quote inside ("Hello") is a quotation and kept as it is.
"""

from __future__ import annotations

import csv
import re
import sys
from typing import IO, Iterator, Sequence

from lmscale.data.compression import READ_ERRORS, compression, open_input
from lmscale.data.errors import DataError
from lmscale.data.input_checks import unreadable


def csv_rows(path: str, columns: Sequence[str], delimiter: str = ",", *,
             empty_ok: bool = False, column_hint: str = "") -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of each data row of ``path``, ``row`` mapping the header's names to the
    fields; ``line`` is the row's last line in the file (the header is line 1). The header
    must name every one of ``columns`` (``column_hint``: appended to that error, the setting
    that names them). ``empty_ok``: an empty file has no rows instead of being an error."""
    csv.field_size_limit(sys.maxsize)
    try:
        with open_input(path, "r", encoding="utf-8-sig", newline="") as f:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            lines = _Lines(f)
            reader = csv.DictReader(lines, delimiter=delimiter, quoting=quoting)
            fields = reader.fieldnames
            lines.read.clear()
            if fields is None:
                if empty_ok:
                    return
                raise DataError(f"{path} is empty: expected a header row naming the columns "
                                f"{list(columns)}, then one row per text")
            for col in columns:
                if col not in fields:
                    raise DataError(f"{path}: no column {col!r}; columns are {list(fields)}"
                                    + (f" ({column_hint})" if column_hint else ""))
                if fields.count(col) > 1:  # csv.DictReader keeps the last one's fields, silently
                    raise DataError(f"{path}: the header names the column {col!r} "
                                    f"{fields.count(col)} times (columns: {list(fields)}); "
                                    f"rename all but one, so that it is clear which one to read")
            for row in reader:
                if delimiter != "\t" and lines.ended:  # an open quote swallowed the rest
                    _check_closed(path, lines.read, reader.line_num, delimiter)
                if None in row or None in row.values():
                    n = len(fields) + len(row.get(None) or ()) - list(row.values()).count(None)
                    hint = ("a tab-separated file has no quoting: a text may hold no tab or "
                            "newline" if delimiter == "\t" else "a comma inside a text must be "
                            "quoted")
                    opened = [v for v in row.values() if isinstance(v, str)
                              and v.startswith('"') and not v.endswith('"')]
                    if n < len(fields) and delimiter == "\t" and opened:
                        # pandas' to_csv(sep="\t") quotes a text holding a newline: one row a
                        # line cuts it there ("a row needs every column" blamed a missing tab)
                        hint = ("a quoted text going on past this line? a tab-separated file "
                                "is read one row a line: a text may hold no newline (write "
                                "the file as .csv, which quotes it)")
                    elif n < len(fields):  # a short row: no comma to blame
                        sep = "tab" if delimiter == "\t" else "comma"
                        hint = (f"a row needs every column, an empty one as a {sep} with "
                                f"nothing after it")
                    raise DataError(
                        f"{path}:{reader.line_num}: {n} fields, and the header has {len(fields)} "
                        f"({hint})")
                if delimiter == "\t":
                    row = {k: _unquoted(v, len(fields) == 1) for k, v in row.items()}
                lines.read.clear()
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise DataError(not_utf8(path, e)) from None
    except csv.Error as e:
        raise DataError(f"{path}: bad CSV ({e})") from None
    except READ_ERRORS as e:  # a damaged .gz (EOFError, BadGzipFile), a file not readable
        error = unreadable(path, e)
        if error is None:
            raise
        raise error from None


def _unquoted(field: str, alone: bool = False) -> str:
    """A tab-separated field as written with CSV quoting (quoted whole, inner quotes doubled)
    read back as the text it quotes; any other field as it is (a text starting with a quote).
    ``alone``: the row's only field, which a CSV writer writes as "" when it is empty (an
    empty line would be no row)."""
    if alone and field == '""':
        return ""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        inner = field[1:-1]
        # A CSV writer quotes a field of one line for the quotes it holds (doubled inside): a
        # text quoted whole without them ("Hello") is a quotation, kept as it is.
        if '""' in inner and '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field


class _Lines:
    """The lines of ``f`` for a csv reader, keeping those of the row being read (``read``,
    cleared by the caller after each row) and whether the file has ended (``ended``)."""

    def __init__(self, f: IO[str]) -> None:
        self.f, self.read, self.ended = f, [], False

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = self.f.readline()
        if not line:
            self.ended = True
            raise StopIteration
        self.read.append(line)
        return line


def _check_closed(path: str, lines: list[str], last_line: int, delimiter: str) -> None:
    """Refuses the file's last row if a quoted field in it is never closed: csv's reader
    (not strict) returns such a field with the rest of the file in it, silently."""
    text = "".join(lines)
    special = re.compile(f'[{re.escape(delimiter)}\r\n"]')
    i, at_start, opened = 0, True, None
    while True:
        if opened is not None:  # inside a quoted field: "" is a quote, " closes it
            j = text.find('"', i)
            if j < 0:
                break
            if text.startswith('"', j + 1):
                i = j + 2
                continue
            opened, at_start, i = None, False, j + 1
            continue
        m = special.search(text, i)
        if m is None:
            return
        if m.group() == '"' and at_start and m.start() == i:
            opened, i = i, i + 1
            continue
        at_start, i = m.group() != '"', m.end()
    line, seen = last_line - len(lines) + 1, 0
    for piece in lines:  # the line holding the opening quote
        if seen + len(piece) > opened:
            break
        seen, line = seen + len(piece), line + 1
    raise DataError(f"{path}:{line}: a quoted field opens on this line and is never closed (the "
                    f"rest of the file, {last_line - line + 1} line(s), would be one text): close "
                    f"it, or double a quote inside a quoted text (\"\")")


def not_utf8(path: str, error: UnicodeDecodeError) -> str:
    """The error for invalid UTF-8 in ``path``: its line and byte offset (the decoder's own
    position is one in its read buffer, not in the file) and how to convert it."""
    where = ""
    try:
        with open_input(path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    where = (f":{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                             f"{offset + e.start:,} of the {'decompressed ' if compression(path) else ''}file)")
                    break
                offset += len(raw)
    except OSError:
        pass
    where = where or f": not valid UTF-8 ({error.reason})"
    try:
        with open_input(path, "rb") as f:
            start = f.read(2)
    except OSError:
        start = b""
    if start in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode Text", PowerShell's > ...
        return (f"{path}{where}: it is UTF-16 (it starts with the byte order mark "
                f"0x{start[0]:02x} 0x{start[1]:02x}): convert it to UTF-8, e.g. iconv -f utf-16 "
                f"-t utf-8")
    return (f"{path}{where}: convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 (latin1 is a "
            f"guess: name its real encoding)")
