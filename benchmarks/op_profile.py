"""Where a training step's time goes: per-operation times of the compiled step on this host.

    python benchmarks/op_profile.py --config=configs/quickstart.py [--config.model.hidden=1024 ...] \
        [--steps 3] [--top 30] [--hlo step.hlo]

Compiles the real training step (as ``lmscale.bench`` does), runs it under ``jax.profiler``
and sums the trace's events by XLA operation name (a fusion, a dot — ``ynn_fusion`` on CPU
is a YNNPACK matmul —, a copy), over the steps and XLA's worker threads. Times are
exclusive: an event's time less that of the events nested in it on its thread (a ``while``
keeps only what its body's operations do not cover), so the rows add up to the threads'
busy time. An operation run once per time step of the recurrence shows ``calls`` = steps x
seq_len. Prints, per step, the profiled window, each worker thread's busy time, the split
between in-loop and once-per-step operations, and the operations by total time; with
``--hlo``, writes the compiled program so a name can be looked up (``grep 'name = '``).
On a multi-core host the rows add up to about threads x window.
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


def exclusive_times(events: list[tuple[int, int, str]]) -> collections.Counter:
    """ns per name on one thread, each event less the events nested in it.

    ``events``: (start, end, name) of one thread; events there nest or are disjoint."""
    out: collections.Counter = collections.Counter()
    stack: list[list] = []  # [end, name, start of the part not yet counted]

    def close_until(t: int) -> None:
        while stack and stack[-1][0] <= t:
            end, name, since = stack.pop()
            out[name] += end - since
            if stack:
                stack[-1][2] = end

    for start, end, name in sorted(events, key=lambda e: (e[0], -e[1])):
        close_until(start)
        if stack:
            out[stack[-1][1]] += start - stack[-1][2]
        stack.append([end, name, start])
    close_until(float("inf"))
    return out


def op_times(compiled, state, batch, steps: int
             ) -> tuple[collections.Counter, collections.Counter, dict[str, int], int]:
    """(exclusive ns, calls) per XLA operation name over ``steps`` profiled steps, busy ns
    per worker thread, and the profiled window in ns."""
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
    total, calls, busy = collections.Counter(), collections.Counter(), {}
    spans = []
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's worker threads run the operations
                continue
            events = [(e.start_ns, e.start_ns + e.duration_ns, e.name) for e in line.events
                      if not e.name.startswith(("end:", "ThreadpoolListener"))
                      and "wait for completion" not in e.name]  # the client thread's wait
            if not events:
                continue
            spans += [min(e[0] for e in events), max(e[1] for e in events)]
            own = exclusive_times(events)
            busy[line.name] = sum(own.values())
            total.update(own)
            calls.update(name for _, _, name in events)
    return total, calls, busy, (max(spans) - min(spans)) if spans else 0


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
    total, calls, busy, window = op_times(compiled, state, batch, _STEPS.value)
    n, seq = _STEPS.value, config.train.seq_len
    in_loop = sum(v for k, v in total.items() if calls[k] >= seq * n)
    once = sum(v for k, v in total.items() if calls[k] < seq * n)
    threads = ", ".join(f"{ns / n / 1e6:.1f}" for ns in busy.values() if ns > window / 10)
    print(f"per step: profiled window {window / n / 1e6:.1f} ms; worker threads busy {threads} ms; "
          f"in-loop operations {in_loop / n / 1e6:.1f} ms, once-per-step operations "
          f"{once / n / 1e6:.1f} ms (exclusive, summed over threads)")
    print(f"{'ms/step':>9} {'calls/step':>10} {'us/call':>9}  operation")
    for name, ns in total.most_common(_TOP.value):
        print(f"{ns / n / 1e6:9.2f} {calls[name] / n:10.0f} {ns / calls[name] / 1e3:9.1f}  {name}")

if __name__ == "__main__":
    sys.exit(app.run(main))
