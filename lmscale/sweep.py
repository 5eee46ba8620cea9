r"""Run a grid of training runs (a sweep) and write a report.

    python -m lmscale.sweep --config=configs/lr_rules.py --sweep=configs/sweeps/lr_rules.py \
        --workdir=runs/sweeps/lr_rules [--parallel=2] [--cpu_budget_minutes=20] [--config.x=...]

Each point is an ordinary ``lmscale.train`` run in WORKDIR/NAME. Re-running the same
command skips finished points and resumes the others. A point whose training loss goes
non-finite or above --divergence_factor x its running minimum is stopped and marked "div".
With --transfer_train/--transfer_val[/--transfer_test] every finished model is also
evaluated by sentiment transfer (lmscale.transfer). Writes WORKDIR/report.md, report.html,
final.png and curves.png.
"""

from __future__ import annotations

import math
import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from lmscale.cli import parse_flags, run_cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The base run's config file; every point starts from it.", lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/*.py) whose get_sweep() gives the grid.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder: a run folder per point, sweep.json, the report.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points trained at once, each its own process (and, with "
                                 "several GPUs, its own CUDA_VISIBLE_DEVICES group).", lower_bound=1)
_BUDGET = flags.DEFINE_float("cpu_budget_minutes", None, "Size the sweep for about this many minutes on a "
                             "CPU (the sweep file's get_sweep(cpu_budget_minutes=...) rule).", lower_bound=1)
_DIV = flags.DEFINE_float("divergence_factor", 1.5, "A point diverged when its training loss exceeds this "
                          "times its running minimum (or is not finite).", lower_bound=1.0)
_T_TRAIN = flags.DEFINE_string("transfer_train", None, "Labeled training texts for sentiment transfer.")
_T_VAL = flags.DEFINE_string("transfer_val", None, "Labeled validation texts for transfer.")
_T_TEST = flags.DEFINE_string("transfer_test", None, "Labeled test texts for transfer (optional).")
_T_TEXT = flags.DEFINE_string("text_column", "sentence", "Transfer: column/field holding the text.")
_T_LABEL = flags.DEFINE_string("label_column", "label", "Transfer: column/field holding the 0/1 label.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])
# nan passes lower_bound: a factor of nan turned divergence detection off silently.
flags.register_validator("divergence_factor", lambda v: not math.isnan(v),
                         message="must be a number (inf: never stop a point for its loss)")
flags.register_validator("cpu_budget_minutes", lambda v: v is None or math.isfinite(v),
                         message="must be a finite number")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.sweep", dict(os.environ))  # each task ran the whole sweep
    from lmscale.sweeps import SweepError, run_sweep
    from lmscale.sweeps.runner import SweepInterrupted
    from lmscale.sweeps.transfer import TransferSets

    if bool(_T_TRAIN.value) != bool(_T_VAL.value) or (_T_TEST.value and not _T_TRAIN.value):
        print("error: transfer needs both --transfer_train and --transfer_val", file=sys.stderr)
        sys.exit(1)
    unused = [f"--{f.name}" for f in (_T_TEXT, _T_LABEL) if flags.FLAGS[f.name].present]
    if unused and not _T_TRAIN.value:  # they were ignored
        print(f"error: {' and '.join(unused)} name{'' if len(unused) > 1 else 's'} the "
              f"transfer's columns; give "
              f"--transfer_train and --transfer_val too, or leave them out", file=sys.stderr)
        sys.exit(1)
    transfer = (TransferSets(_T_TRAIN.value, _T_VAL.value, _T_TEST.value, _T_TEXT.value, _T_LABEL.value)
                if _T_TRAIN.value else None)
    overrides = _config_overrides()
    command = "python -m lmscale.sweep " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def go() -> dict:
        try:
            return run_sweep(_CONFIG.value, _config_path(),
                             _SWEEP.value, _WORKDIR.value, config_flags=overrides,
                             parallel=_PARALLEL.value, cpu_budget_minutes=_BUDGET.value,
                             divergence_factor=_DIV.value, transfer=transfer, command=command)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except SweepInterrupted as e:
            print(str(e), file=sys.stderr)
            sys.exit(128 + e.signum)  # stopped, not failed: 143 after SIGTERM, 130 Ctrl-C
        except KeyboardInterrupt:  # between the points' training, e.g. in the transfer
            print("sweep interrupted (Ctrl-C): the finished points are kept; re-run the same "
                  "command to go on", file=sys.stderr)
            sys.exit(130)

    out = run_cli(go)
    failed = [r["point"].name for r in out["results"] if r["status"] not in ("ok", "div")]
    from lmscale.sweeps.report import outcome
    for r in out["results"]:
        print(f"{r['point'].name}: {outcome(r)}")
    if failed:
        print(f"error: {len(failed)} point(s) did not finish: {', '.join(failed)} (see their train.log)",
              file=sys.stderr)
    untransferred = out.get("transfer_failed") or {}
    if untransferred:
        print(f"error: the transfer of {len(untransferred)} point(s) failed: "
              f"{', '.join(untransferred)} (the others are in the report)", file=sys.stderr)
    if failed or untransferred:
        sys.exit(1)


def _config_path() -> str:
    """The --config file path as given (without a ':' override suffix)."""
    return config_flags.get_config_filename(flags.FLAGS["config"])


def _config_overrides() -> list[str]:
    """The sweep command's ``--config.*`` overrides as every point's flags, as absl parsed them:
    given with '=', with a space, or in a --flagfile (the raw argv's '--config.' arguments
    dropped the last two: every point trained the file's values, or failed on a split value)."""
    from lmscale.sweeps.grid import override_flags
    return override_flags(config_flags.get_override_values(flags.FLAGS["config"]))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
