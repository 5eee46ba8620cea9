"""Paths of a training run that the tools accept, resolved without JAX (the command-line
tools read them before they split a CPU host into devices)."""

from __future__ import annotations

import os


def best_folder(path: str) -> tuple[str, bool]:
    """(workdir, True) for a run's ``WORKDIR/best`` (the weights kept as validated best:
    ``--config.init_from=RUN/best`` fine-tunes from them), else (path, False)."""
    parent = os.path.dirname(os.path.normpath(path))
    if (os.path.basename(os.path.normpath(path)) == "best"
            and not os.path.isfile(os.path.join(path, "config.json"))
            and os.path.isfile(os.path.join(parent, "config.json"))):
        return parent, True
    return path, False
