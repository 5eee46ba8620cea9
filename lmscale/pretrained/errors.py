"""The one exception type of weight conversion, and the error for weights given where a
converted run is expected."""

from __future__ import annotations

import os

from lmscale.data.errors import DataError


class ConvertError(DataError):
    """Bad pretrained-weight input or an impossible conversion.

    One line naming the file (or key) and what was expected. A DataError, so the CLIs'
    ``run_cli`` prints it as ``error: ...`` and exits 1 without a traceback.
    """


def unconverted_hint(path: str, then: str = "--workdir=WORKDIR") -> str | None:
    """For a tool given ``path`` as its workdir: a one-line error when ``path`` is not a run
    but weights still to import (OpenAI's folder of 0.npy ... 14.npy, a .pt checkpoint),
    naming the ``lmscale.convert`` command that imports them; None otherwise (a run, or
    something else: ``load_trained`` says what is wrong). ``then``: how the tool is given the
    imported workdir (``--config.train.start_from=WORKDIR`` for a new LM run)."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return None
        if os.path.exists(os.path.join(path, "0.npy")) or \
                os.path.exists(os.path.join(path, "model", "0.npy")):
            return (f"{path} holds OpenAI's released weights (0.npy ... 14.npy), not a training "
                    f"run: import them first with python -m lmscale.convert --from=openai "
                    f"--src={path} --to=WORKDIR, then pass {then}")
    elif os.path.isfile(path) and path.endswith((".pt", ".pth", ".clf")):
        return (f"{path} is a PyTorch checkpoint, not a training run: import a sentiment-discovery "
                f"language model first with python -m lmscale.convert --from=sentiment-discovery "
                f"--src={path} --to=WORKDIR, then pass {then}")
    return None
