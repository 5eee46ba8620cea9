"""Benchmark a config's training step (and input pipeline) on this machine.

    python -m lmscale.bench --config=configs/quickstart.py [--config.model.hidden=1024 ...]
        [--steps=10] [--grad=custom|autodiff] [--unroll=0] [--layout=auto] [--factors=compute]
        [--pipeline] [--out=FILE]

Times the real jitted training step (compile and warm-up excluded, median of --steps),
reports tokens/s and chars/s (bytes/s: a byte tokenizer's tokens/s; for subword and word
tokenizers only with --loop, which measures the text's bytes per token), analytic train
FLOPs per token (3 x forward; see ``lmscale.training.bench``), achieved FLOP/s, the
device's measured matmul rate in the compute dtype and their ratio, and the compiled step's
peak memory. With --loop, also the full training loop's rate (data, step, metrics, logging)
from its own metrics.jsonl, and its share of the step-only rate. With --pipeline, also
times the input pipeline (StreamBatcher on the config's prepared data; raw text or a
built-in corpus is prepared into --workdir first). Prints a table and one JSON line, and
appends the JSON line (with the git commit) to --out.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lmscale.cli import parse_flags, run_cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", lower_bound=0)
_GRAD = flags.DEFINE_enum("grad", "custom", ["custom", "autodiff"],
                          "Backward of the recurrence: hand-written (custom) or autodiff.")
_UNROLL = flags.DEFINE_integer("unroll", 0, "Unroll of the time loops (the mLSTM's hand-written "
                               "feature-major backward loop only completely); 0: 2 with the "
                               "batch layout, else 1.", lower_bound=0)
_LAYOUT = flags.DEFINE_enum("layout", "auto", ["auto", "feature", "batch"],
                            "Layout of the hand-written backward's loops: feature (tuned for "
                            "XLA:CPU), batch (for XLA:GPU), auto (batch on GPUs).")
_FACTORS = flags.DEFINE_enum("factors", "compute", ["compute", "float32"],
                             "dtype of the gate factors the batch layout's loops save for the "
                             "backward: the compute dtype, or float32.")
_RESET_EVERY = flags.DEFINE_integer(
    "reset_every", 0, "Put a state reset every this many batch positions (0 = none).", lower_bound=0)
_PIPELINE = flags.DEFINE_bool("pipeline", False, "Also time the input pipeline.")
_LOOP = flags.DEFINE_bool("loop", False, "Also time the full training loop (data, step, logging) "
                          "on the config's data, in --workdir/loop.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lmscale_bench",
                               "Where raw text / a built-in corpus is prepared for --pipeline.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 0, "Size of the peak-rate matmul (0 = by device).",
                                 lower_bound=0)
_LABEL = flags.DEFINE_string("label", "", "Free text stored with the record.")
# A clone's benchmarks/results.jsonl; an installed package has no benchmarks/ beside it (the
# record went into site-packages/benchmarks/): then the current folder.
_CLONE_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "benchmarks")
_IN_A_CLONE = os.path.isfile(os.path.join(_CLONE_BENCHMARKS, "gpu_check.sh"))  # lmscale's own
_OUT = flags.DEFINE_string(
    "out", os.path.join(_CLONE_BENCHMARKS, "results.jsonl") if _IN_A_CLONE
    else "lmscale_bench.jsonl",
    "Append the JSON record here ('' = do not write); default: the repository's "
    "benchmarks/results.jsonl, or lmscale_bench.jsonl here for an installed lmscale.")
flags.mark_flags_as_required(["config"])


def _check_out() -> None:
    """Refuses an --out that is a folder, or in a folder that cannot be made or written, before
    the timing (a file in its way was a traceback after it; a folder, the usage text)."""
    from lmscale.cli import OutputError, writable_folder
    if os.path.isdir(_OUT.value):
        raise OutputError(f"--out={_OUT.value} is a folder; give the JSONL file to append the "
                          f"record to (or --out= to write none)")
    writable_folder(os.path.dirname(os.path.abspath(_OUT.value)),
                    "pass another --out, or --out= to write none")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from lmscale.training.host_memory import restart_with_huge_pages
    restart_with_huge_pages(_CONFIG.value.parallel.cpu_huge_pages, entry=__name__ == "__main__")
    from lmscale.training import bench
    from lmscale.training.host_devices import split_host
    run_cli(lambda: split_host(_CONFIG.value))  # before any device is touched
    if _OUT.value:
        run_cli(_check_out)

    def run() -> dict:
        config = _CONFIG.value
        from lmscale.training.fits import refuse_jax_debugging
        refuse_jax_debugging("lmscale.bench", config.precision.compute)  # before --pipeline's data
        batcher = None
        if _PIPELINE.value or _LOOP.value:
            from lmscale.data.dataset import TokenDataset
            from lmscale.training.data_source import resolve_dataset, train_batcher
            path = resolve_dataset(config.data, _WORKDIR.value, progress=False)
            import jax
            from lmscale.config import with_global_batch  # per_device_batch_size x devices
            batcher = train_batcher(TokenDataset.open(path),
                                    with_global_batch(config, jax.device_count()))
        return bench.run_bench(config, steps=_STEPS.value, warmup=_WARMUP.value, grad=_GRAD.value,
                               unroll=_UNROLL.value, layout=_LAYOUT.value,
                               factors=_FACTORS.value,
                               reset_every=_RESET_EVERY.value,
                               batcher=batcher if _PIPELINE.value else None,
                               matmul_n=_MATMUL_N.value or None, label=_LABEL.value,
                               loop_workdir=os.path.join(_WORKDIR.value, "loop") if _LOOP.value
                               else None)

    record = run_cli(run)
    print(bench.format_table([record]))
    print(json.dumps(record))
    if _OUT.value:
        run_cli(lambda: bench.append_jsonl(record, _OUT.value))  # a full disk: one line
    sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
