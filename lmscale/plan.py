r"""Dry run: compile a config's training step for a device count and print its costs.

    python -m lmscale.plan --config=configs/mlstm4096_8gpu.py [--devices=8] [--json=out.json]
    python -m lmscale.plan --config=configs/mlstm4096_8gpu.py --devices=8 \
        --flops_per_s=400e12 --bandwidth_gbps=400 --project=8,64,128,512   # step time, scaling
    python -m lmscale.plan --config=configs/mlstm4096_8gpu.py --devices=8 --memory_gib=16

Prints parameters, FLOPs per token, per-device memory from the compiled program's memory
analysis, and the all-reduces per step. With ``--flops_per_s`` (sustained training FLOP/s per
device) and ``--bandwidth_gbps`` (ring bandwidth per device) it also projects step time,
throughput and scaling efficiency for the ``--project`` device counts
(lmscale/training/projection.py). With ``--memory_gib`` it says whether the step fits a
device of that memory and, if not, plans the recurrent models' remat (``model.remat=
segments``) too. Needs no data and allocates no weights. Without
GPUs, ``--devices=N`` plans on N virtual CPU devices (memory figures then come from the
XLA CPU compiler; a GPU compile of the same program differs somewhat).
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lmscale.atomic import write_json
from lmscale.cli import parse_flags, recorded_run, refuse_closed_stdout, run_cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/.", lock_config=True)
_DEVICES = flags.DEFINE_integer(
    "devices", 0, "Devices to plan for; 0 = all devices here (a CPU host split as lmscale.train "
    "splits it: parallel.cpu_devices). On a CPU-only machine, this many virtual CPU devices are "
    "created.", lower_bound=0)
_JSON = flags.DEFINE_string("json", "", "Also write the full result to this JSON file (-: to standard output).")
_FLOPS = flags.DEFINE_float("flops_per_s", 0.0, "Sustained training FLOP/s per device for the "
                            "projection (measured with lmscale.bench, or peak x utilization).",
                            lower_bound=0.0)
_BANDWIDTH = flags.DEFINE_float("bandwidth_gbps", 0.0, "Ring all-reduce bandwidth per device, "
                                "Gbit/s (across nodes: the node's network / its GPUs).",
                                lower_bound=0.0)
_LATENCY = flags.DEFINE_float("latency_us", 0.0, "Per-hop latency of the ring, microseconds.",
                              lower_bound=0.0)
_PROJECT = flags.DEFINE_list("project", [], "Device counts to project (default: the planned "
                             "count and 8x, 64x of it).")
_LAYOUT = flags.DEFINE_enum(
    "layout", "auto", ["auto", "feature", "batch"], "The recurrence loops the target devices run: "
    "batch on GPUs, feature on CPUs (auto: this machine's backend). Planning a GPU run on a "
    "CPU, pass batch: its memory differs (the 4096-d mLSTM at 256 x 256 in bf16 on an H200: "
    "10.7 GiB, the gate factors in bf16; 12.7 with them in float32).")
_MEMORY = flags.DEFINE_float("memory_gib", 0.0, "Memory of one device, GiB: say whether the "
                             "step fits, and if not plan model.remat=segments too (mlstm, lstm).",
                             lower_bound=0.0)
flags.mark_flags_as_required(["config"])
for _flag in ("flops_per_s", "bandwidth_gbps", "latency_us", "memory_gib"):  # nan passes lower_bound
    flags.register_validator(_flag, math.isfinite, message="must be a finite number")


def _json_folder() -> None:
    """Creates the --json file's folder, so a bad path fails before the compile."""
    from lmscale.config import ConfigError
    path = os.path.abspath(_JSON.value)
    if os.path.isdir(path):
        raise ConfigError(f"--json={_JSON.value} is a folder; expected a file name")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        reason = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise ConfigError(f"--json={_JSON.value}: cannot create its folder ({reason})") from None


def _projection_counts() -> list[int]:
    """The --project device counts, checked with the projection's other flags."""
    from lmscale.config import ConfigError
    if (_FLOPS.value > 0 or _BANDWIDTH.value > 0 or _LATENCY.value > 0 or _PROJECT.value) and not (
            _FLOPS.value > 0 and _BANDWIDTH.value > 0):
        raise ConfigError("a projection needs both --flops_per_s and --bandwidth_gbps (> 0), got "
                          f"{_FLOPS.value:g} and {_BANDWIDTH.value:g}")
    counts = []
    for text in _PROJECT.value:
        if not text.strip().isdigit() or int(text) < 1:
            raise ConfigError(f"--project takes device counts (integers >= 1), got {text!r}")
        counts.append(int(text))
    return counts


def _vocab_size() -> int | None:
    """The vocabulary to plan for: None (the config's data fixes it), or, for a word-level
    ``--config=WORKDIR/config.json`` whose data alone does not (it was refused, asking to
    prepare the data the run had prepared), that of the dataset the run trained on
    (``derived.dataset``). Overrides of ``data`` on the command line come first."""
    from lmscale.data.errors import DataError
    from lmscale.training.data_source import vocab_size_of
    try:
        vocab_size_of(_CONFIG.value.data)
        return None
    except DataError:
        from lmscale.data.dataset import is_dataset
        recorded = recorded_run()
        dataset = recorded[1].get("dataset") if recorded else None
        if not dataset or not is_dataset(str(dataset)):
            raise
    data = _CONFIG.value.data.copy_and_resolve_references()
    data.train = str(dataset)
    return vocab_size_of(data)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax
    if _DEVICES.value > 0:  # before any device query; only used if the default backend is CPU
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    else:  # a CPU host split as lmscale.train splits it (parallel.cpu_devices)
        from lmscale.training.host_devices import split_host
        run_cli(lambda: split_host(_CONFIG.value))
    from lmscale.config import ConfigError
    from lmscale.models.recurrent import scan_options
    from lmscale.training.plan import fit, format_fit, format_plan, plan
    counts = run_cli(_projection_counts)  # bad projection flags fail before the compile
    if _JSON.value:
        run_cli(_json_folder)

    def run() -> tuple[list, dict]:
        devices = jax.devices()
        if _DEVICES.value > len(devices):
            raise ConfigError(f"--devices={_DEVICES.value} but only {len(devices)} "
                             f"{devices[0].platform} devices are visible")
        devices = devices[:_DEVICES.value] if _DEVICES.value else devices
        with scan_options(layout=_LAYOUT.value):
            return devices, plan(_CONFIG.value, devices, _vocab_size())

    def run_fit() -> dict:
        with scan_options(layout=_LAYOUT.value):
            return fit(_CONFIG.value, devices, result, _MEMORY.value)

    if _JSON.value == "-":
        run_cli(lambda: refuse_closed_stdout("--json=- writes the plan there", "pass --json=FILE"))
    elif not _JSON.value:  # the tables are the plan
        run_cli(lambda: refuse_closed_stdout("the plan's tables go there", "pass --json=FILE"))
    devices, result = run_cli(run)
    # --json=- (or /dev/stdout): standard output is the JSON alone (| jq), the tables on stderr
    from lmscale.atomic import writes_stdout
    said = sys.stderr if writes_stdout(_JSON.value) else sys.stdout
    print(format_plan(result), file=said)
    if _MEMORY.value > 0:
        result["fit"] = run_cli(run_fit)
        print(format_fit(result, result["fit"]), file=said)
    if _FLOPS.value > 0 or _BANDWIDTH.value > 0:
        from lmscale.training.projection import format_projection, project
        from lmscale.training.data_source import one_byte_tokens
        counts = counts or [result["devices"] * k for k in (1, 8, 64)]
        per_token = 1.0 if one_byte_tokens(_CONFIG.value.data) else None
        rows = run_cli(lambda: project(result, _FLOPS.value, _BANDWIDTH.value, counts,
                                       _LATENCY.value, bytes_per_token=per_token))
        result["projection"] = {"flops_per_s": _FLOPS.value, "bandwidth_gbps": _BANDWIDTH.value,
                                "latency_us": _LATENCY.value, "rows": rows}
        print(format_projection(rows, _FLOPS.value, _BANDWIDTH.value), file=said)
    if _JSON.value == "-":  # standard output (atomic_write refuses "-")
        print(json.dumps(result, indent=2, default=str), flush=True)
    elif _JSON.value:
        run_cli(lambda: write_json(_JSON.value, result, indent=2))  # a full disk: one line
    sys.exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
