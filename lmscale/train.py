"""Train (or resume) a language model.

    python -m lmscale.train --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.train.steps=2000 --config.model.hidden=512 ...]

Re-running the same command with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from lmscale.cli import parse_flags, run_cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (returns a locked ConfigDict).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.training.loop import train
    result = run_cli(lambda: train(_CONFIG.value, _WORKDIR.value))
    if "val" in result:
        print(f"step {result['step']}: val bpc {result['val']['bpc']:.4f}")
    sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
