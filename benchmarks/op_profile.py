"""Where a training step's time goes: per-operation times of the compiled step on this host.

    python benchmarks/op_profile.py --config=configs/quickstart.py [--config.model.hidden=1024 ...] \
        [--steps 3] [--top 30] [--hlo step.hlo]

Compiles the real training step (as ``lmscale.bench`` does), runs it under ``jax.profiler``
and sums the trace's events by XLA operation name (a fusion, a dot — ``ynn_fusion`` on CPU
is a YNNPACK matmul —, a copy), over the steps and the host's threads. An operation run
once per time step of the recurrence shows ``calls`` = steps x seq_len. Prints the
operations by total time, and the split between in-loop and once-per-step operations; with
``--hlo``, writes the compiled program so a name can be looked up (``grep 'name = '``).
The times are per thread: on a multi-core host they can add up to more than the step.
"""

from __future__ import annotations

import collections
import glob
import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Profiled steps (after 2 untimed ones).", lower_bound=1)
_TOP = flags.DEFINE_integer("top", 30, "Operations listed.", lower_bound=1)
_HLO = flags.DEFINE_string("hlo", "", "Also write the compiled program's HLO text here.")
flags.mark_flags_as_required(["config"])


def op_times(compiled, state, batch, steps: int) -> tuple[collections.Counter, collections.Counter]:
    """(total ns, calls) per XLA operation name over ``steps`` profiled steps."""
    import jax
    from jax.profiler import ProfileData
    for _ in range(2):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                state, _ = compiled(state, batch)
                jax.block_until_ready(state)
        data = ProfileData.from_file(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                                               recursive=True)[0])
    total, calls = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's worker threads run the operations
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "end:", "ThreadpoolListener")):
                    continue
                total[event.name] += event.duration_ns
                calls[event.name] += 1
    return total, calls


def main(argv: list[str]) -> None:
    del argv
    from lmscale.training.bench import compile_step
    from lmscale.training.host_devices import split_host
    config = _CONFIG.value
    split_host(config)
    compiled, state, batch, _ = compile_step(config)
    if _HLO.value:
        with open(_HLO.value, "w") as f:
            f.write(compiled.as_text())
    total, calls = op_times(compiled, state, batch, _STEPS.value)
    n, seq = _STEPS.value, config.train.seq_len
    loops = {"while", "SlinkyThreadPool::Await"}
    in_loop = sum(v for k, v in total.items() if calls[k] >= seq * n)
    once = sum(v for k, v in total.items() if calls[k] < seq * n and k.split(".")[0] not in loops)
    print(f"per step: in-loop operations {in_loop / n / 1e6:.1f} ms, once-per-step operations "
          f"{once / n / 1e6:.1f} ms (summed over threads)")
    print(f"{'ms/step':>9} {'calls/step':>10} {'us/call':>9}  operation")
    for name, ns in total.most_common(_TOP.value):
        print(f"{ns / n / 1e6:9.2f} {calls[name] / n:10.0f} {ns / calls[name] / 1e3:9.1f}  {name}")


if __name__ == "__main__":
    sys.exit(app.run(main))
