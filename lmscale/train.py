r"""Train (or resume) a language model.

    python -m lmscale.train --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.train.steps=2000 --config.model.hidden=512 ...]

Re-running the same command with the same workdir resumes from its latest checkpoint.

Many processes (hosts): every process runs this same command. The processes find each
other by --coordinator_address/--num_processes/--process_id, the LMSCALE_* variables that
launch/local.py sets, or a SLURM/Open MPI job's environment (see lmscale.distributed).
"""

from __future__ import annotations

if __name__ == "__main__":  # a signal before the handlers below take over: one line
    from lmscale.early_signals import stop_quietly_while_starting
    stop_quietly_while_starting()

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmscale.cli import parse_flags, reader_may_leave, recorded_run, run_cli
from lmscale.distributed import (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, DistributedError,
                                 join, resolve)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/ (returns a locked ConfigDict).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs: HOST:PORT of process 0, which serves the "
    f"coordinator (default ${ENV_COORDINATOR}, or found from a SLURM/Open MPI job).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, f"Multi-process runs: how many processes (default ${ENV_NUM_PROCESSES}, "
    "the SLURM/Open MPI task count, or 1).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, f"Multi-process runs: this process's id, 0..num_processes-1 (default "
    f"${ENV_PROCESS_ID} or the SLURM/Open MPI rank).", lower_bound=0)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Multi-process runs: seconds to wait for all processes to reach "
    "the coordinator; past it jax aborts the process (SIGABRT).", lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def join_processes() -> None:
    """Before devices are touched: splits a CPU host into devices (``parallel.cpu_devices``)
    and joins the other processes of a multi-process run (if any)."""
    from lmscale.training.host_devices import split_host
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # jax logs each connection step at INFO
    try:
        group = resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ)
        run_cli(lambda: split_host(_CONFIG.value, multi_process=group is not None))
        join(group, _INIT_TIMEOUT.value)
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def note_other_devices(workdir: str) -> None:
    """``--config=RUN/config.json`` into another workdir on another number of devices than
    RUN recorded: said, as the rerun then agrees with RUN to ~1e-5, not bit for bit (a CPU
    host splits into one device per core by default)."""
    import jax
    run = recorded_run()
    if (run is None or jax.process_index() != 0
            or os.path.abspath(os.path.dirname(run[0])) == os.path.abspath(workdir)):
        return  # a config file, or the run resumed in its own workdir (said by its resume)
    config_path, recorded = run[0], int(run[1].get("devices") or 0)
    if recorded and recorded != jax.device_count():
        print(f"note: {config_path} is of a run on {recorded} devices and this one has "
              f"{jax.device_count()}: their results agree to about 1e-5, not bit for bit "
              f"(--config.parallel.cpu_devices={recorded} splits a CPU host as it was)",
              file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.training.host_memory import restart_with_huge_pages
    restart_with_huge_pages(_CONFIG.value.parallel.cpu_huge_pages, entry=__name__ == "__main__")
    from lmscale.training.stop import cli_signals
    with cli_signals():  # a signal outside the steps: one line (stop.py)
        join_processes()
        note_other_devices(_WORKDIR.value)
        from lmscale.training.loop import train
        from lmscale.training.run_records import perplexity_note
        result = run_cli(lambda: train(_CONFIG.value, _WORKDIR.value))
        import jax
        if "val" in result and jax.process_index() == 0:
            # Its own step; "final": not a twin of the progress line in a 2>&1 log. A run
            # stopped by a signal has no final validation: its last one is said as such.
            val = result["val"]
            which = "last" if result.get("stopped") else "final"
            ended = (f" (the asgd rule ended the run before train.steps="
                     f"{_CONFIG.value.train.steps})" if result.get("stopped_by_rule") else "")
            with reader_may_leave():
                print(f"step {val['step']}: {which} val bpc {val['bpc']:.4f}"
                      f"{perplexity_note(val)}{ended}")
    sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
