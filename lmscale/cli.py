"""Shared command-line behaviour: known input errors become one line on stderr and exit 1."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def run_cli(fn: Callable[[], T]) -> T:
    """Calls ``fn``; a user error (bad data, config or workdir) prints ``error: ...`` and exits 1."""
    from lmscale.config import ConfigError
    from lmscale.data.errors import DataError
    from lmscale.training.checkpoints import CheckpointMismatchError
    try:
        return fn()
    except (ConfigError, DataError, CheckpointMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
