"""The one exception type of the data layer, the hint a JSONL record that is not one line
gets, and what a decoded JSON value is called in messages."""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """Bad data input (missing file/column/field, empty corpus, bad dataset, bad sizes).

    Messages are one line and name the file/column/field and numbers involved, so a CLI
    can print ``error: <message>`` without a traceback.
    """


def cr_lines_hint(line: str | bytes, error: ValueError) -> str:
    """A hint to add to a JSONL error ("; its records end with a carriage return alone ...")
    where ``line`` failed to parse as one record ("Extra data") because the file's records
    end with carriage returns alone (classic Mac line ends: the whole file is one line, its
    records JSON whitespace apart); else ""."""
    cr = "\r" if isinstance(line, str) else b"\r"
    if getattr(error, "msg", "") != "Extra data" or cr not in line.rstrip():
        return ""
    return ("; its records end with a carriage return alone (\\r), not a newline: convert the "
            "file, e.g. tr '\\r' '\\n' < IN > OUT")


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, for messages: "an array", "a string", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {list: "an array", str: "a string", dict: "an object", int: "a number",
             float: "a number"}
    return kinds.get(type(value), type(value).__name__)
