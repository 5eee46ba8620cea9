r"""Fine-tune a trained language model into a text classifier.

    python -m lmscale.finetune --config=configs/finetune_sst.py --workdir=runs/sst_ft \
        --config.init_from=runs/sst_lm [--config.train.steps=600 ...]

Re-running the same command resumes from the latest checkpoint. Writes WORKDIR/results.json
(val and test metrics of the best checkpoint), best.json, thresholds.json (multi-label),
val_predictions.csv, metrics.jsonl, tb/, checkpoints/, best/, and the LM's tokenizer.
"""

from __future__ import annotations

if __name__ == "__main__":  # a signal before the handlers below take over: one line
    from lmscale.early_signals import stop_quietly_while_starting
    stop_quietly_while_starting()

import sys

from absl import app, flags
from ml_collections import config_flags

from lmscale.cli import parse_flags, run_cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/finetune_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the classifier.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import os
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.finetune", dict(os.environ))
    from lmscale.training.host_memory import restart_with_huge_pages
    restart_with_huge_pages(_CONFIG.value.parallel.cpu_huge_pages, entry=__name__ == "__main__")
    from lmscale.training.host_devices import split_host
    from lmscale.training.stop import cli_signals
    with cli_signals():  # a signal outside the steps: one line (stop.py)
        run_cli(lambda: split_host(_CONFIG.value))  # before any device is touched
        from lmscale.finetuning.loop import finetune
        given = config_flags.get_override_values(flags.FLAGS["config"])  # --config.* as parsed
        run_cli(lambda: finetune(_CONFIG.value, _WORKDIR.value, given=given))
    sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
