"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input (missing file/column/field, empty corpus, bad dataset, bad sizes).

    Messages are one line and name the file/column/field and numbers involved, so a CLI
    can print ``error: <message>`` without a traceback.
    """
