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
import sys
from typing import Iterator, Sequence

from lmscale.data.compression import open_input
from lmscale.data.errors import DataError


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
            reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
            fields = reader.fieldnames
            if fields is None:
                if empty_ok:
                    return
                raise DataError(f"{path} is empty: expected a header row naming the columns "
                                f"{list(columns)}, then one row per text")
            for col in columns:
                if col not in fields:
                    raise DataError(f"{path}: no column {col!r}; columns are {list(fields)}"
                                    + (f" ({column_hint})" if column_hint else ""))
            for row in reader:
                if None in row or None in row.values():
                    n = len(fields) + len(row.get(None) or ()) - list(row.values()).count(None)
                    hint = ("a tab-separated file has no quoting: a text may hold no tab or "
                            "newline" if delimiter == "\t" else "a comma inside a text must be "
                            "quoted")
                    raise DataError(
                        f"{path}:{reader.line_num}: {n} fields, and the header has {len(fields)} "
                        f"({hint})")
                if delimiter == "\t":
                    row = {k: _unquoted(v) for k, v in row.items()}
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}: bad CSV ({e})") from None


def _unquoted(field: str) -> str:
    """A tab-separated field as written with CSV quoting (quoted whole, inner quotes doubled)
    read back as the text it quotes; any other field as it is (a text starting with a quote)."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        inner = field[1:-1]
        # A CSV writer quotes a field of one line for the quotes it holds (doubled inside): a
        # text quoted whole without them ("Hello") is a quotation, kept as it is.
        if '""' in inner and '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return field
