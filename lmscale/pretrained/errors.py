"""The one exception type of weight conversion."""

from __future__ import annotations

from lmscale.data.errors import DataError


class ConvertError(DataError):
    """Bad pretrained-weight input or an impossible conversion.

    One line naming the file (or key) and what was expected. A DataError, so the CLIs'
    ``run_cli`` prints it as ``error: ...`` and exits 1 without a traceback.
    """
