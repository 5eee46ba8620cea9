"""Where a training step's time goes: per-operation times of the compiled step on this host.

    python benchmarks/op_profile.py --config=configs/quickstart.py [--config.model.hidden=1024 ...] \
        [--steps 3] [--top 30] [--hlo step.hlo] [--timeline]

Compiles the real training step (as ``lmscale.bench`` does), runs it under ``jax.profiler``
and sums the trace's events by XLA operation name (a fusion, a dot — ``ynn_fusion`` on CPU
is a YNNPACK matmul —, a copy), over the steps and XLA's worker threads. Times are
exclusive: an event's time less that of the events nested in it on its thread (a ``while``
keeps only what its body's operations do not cover), so the rows add up to the threads'
busy time. An operation run once per time step of the recurrence shows ``calls`` = steps x
seq_len. Prints, per step, the profiled window, each worker thread's busy time, the split
between in-loop and once-per-step operations, and the operations by total time; with
``--hlo``, writes the compiled program so a name can be looked up (``grep 'name = '``).
With ``--timeline``, also prints each worker thread's phases in the profile's first mean step:
stretches of in-loop operations (the recurrence's loops) and of the other operations, with
their start and length, so two devices that fall out of step show (their all-reduce's wait
sits at the end of the last phase). With ``--threads``, also prints how the devices' worker
threads compare: each one's wait at the all-reduce's rendezvous and its time on the
operations every thread ran equally often, against the fastest thread's. Equal work at
unequal speed (every operation slower on one thread) is the host's cores running at
different speeds, not a split of work; the fastest thread then waits for the slowest.
On a multi-core host the rows add up to about threads x window.

On a GPU the rows are the device's kernels and copies (its stream lines), named by their HLO
operation, and the header says how long the streams were busy against the profiled window:
the rest is the device waiting between kernels (launch gaps). Every line of the device planes
is listed first with its event count, whatever the profiler calls it.
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
_TIMELINE = flags.DEFINE_bool("timeline", False, "Also print each thread's phases in the first "
                              "mean step's time of the profile.")
_THREADS = flags.DEFINE_bool("threads", False, "Also print each worker thread's wait and its "
                             "speed on the operations all threads ran, against the fastest.")
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


def phases(events: list[tuple[int, int, str]], in_loop: set[str]) -> list[tuple[int, int, str]]:
    """(start, end, "loop" | "other") of one thread's consecutive runs of in-loop operations
    (names in ``in_loop``) and of other operations; executor and ``while`` events, which
    only wrap operations, are left out."""
    out: list[list] = []
    for start, end, name in sorted(events):
        if name.startswith(("ThunkExecutor", "while")):
            continue
        kind = "loop" if name in in_loop else "other"
        if out and out[-1][2] == kind:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end, kind])
    return [tuple(p) for p in out]


def thread_balance(threads: dict[str, list[tuple[int, int, str]]]
                   ) -> dict[str, dict[str, float]]:
    """Per thread {"busy", "wait", "shared", "slowdown"}: ns busy, ns in ``Wait`` events (a
    device's thread waiting for the other devices at a collective's rendezvous), ns on the
    operations every thread ran the same number of times (the same work, one device each),
    and that time over the fastest thread's (1.0 for the fastest)."""
    own = {name: exclusive_times(events) for name, events in threads.items()}
    calls = {name: collections.Counter(e[2] for e in events) for name, events in threads.items()}
    names = set.intersection(*(set(c) for c in calls.values())) if calls else set()
    shared_ops = {op for op in names if not op.startswith(("Wait", "ThunkExecutor", "while"))
                  and len({c[op] for c in calls.values()}) == 1}
    out = {}
    for name, times in own.items():
        out[name] = {"busy": float(sum(times.values())),
                     "wait": float(sum(v for k, v in times.items() if k.startswith("Wait"))),
                     "shared": float(sum(times[op] for op in shared_ops))}
    fastest = min((v["shared"] for v in out.values()), default=0.0)
    for v in out.values():
        v["slowdown"] = v["shared"] / fastest if fastest else 1.0
    return out


def profile(compiled, state, batch, steps: int):
    """The ``jax.profiler`` data (``ProfileData``) of ``steps`` steps after 2 untimed ones."""
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
        return ProfileData.from_file(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                                               recursive=True)[0])


def device_lines(data) -> list[tuple[str, str, int, int]]:
    """(plane, line, events, summed ns) of every line of the accelerator planes
    ("/device:GPU:0"...): what the profile holds, whatever its lines are called."""
    return [(plane.name, line.name, len(events), sum(e.duration_ns for e in events))
            for plane in data.planes if plane.name.startswith("/device:")
            for line in plane.lines for events in [list(line.events)]]


def device_op_times(data) -> tuple[collections.Counter, collections.Counter, int, int, int]:
    """On an accelerator: (ns, calls) per HLO operation of the kernels and copies on its
    stream lines (an event's ``hlo_op`` stat, else its kernel name), the ns some stream was
    busy (the union of the events), the profiled window (first start to last end) and the
    number of events. The window less the busy time is the device idle between kernels
    (launch gaps, host waits)."""
    total, calls = collections.Counter(), collections.Counter()
    spans = []
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("Stream"):
                continue
            for e in line.events:
                stats = {k: v for k, v in e.stats}
                name = str(stats.get("hlo_op") or e.name)[:90]
                total[name] += e.duration_ns
                calls[name] += 1
                spans.append((e.start_ns, e.start_ns + e.duration_ns))
    busy, end = 0, None
    for s, e in sorted(spans):
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    window = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else 0
    return total, calls, busy, window, len(spans)


def op_times(data) -> tuple[collections.Counter, collections.Counter, dict[str, int], int, dict]:
    """(exclusive ns, calls) per XLA operation name over the profiled steps on a CPU host,
    busy ns per worker thread, the profiled window in ns, and each worker thread's events."""
    total, calls, busy = collections.Counter(), collections.Counter(), {}
    spans, threads = [], {}
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
            threads[line.name] = events
            own = exclusive_times(events)
            busy[line.name] = sum(own.values())
            total.update(own)
            calls.update(name for _, _, name in events)
    return total, calls, busy, (max(spans) - min(spans)) if spans else 0, threads


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
    n, seq = _STEPS.value, config.train.seq_len
    data = profile(compiled, state, batch, n)
    if any(line[2] for line in device_lines(data)):
        print_device(data, n, seq)
        return
    total, calls, busy, window, thread_events = op_times(data)
    loop_ops = {k for k in calls if calls[k] >= seq * n}  # run once per time step
    in_loop = sum(v for k, v in total.items() if k in loop_ops)
    once = sum(v for k, v in total.items() if k not in loop_ops)
    busy_ms = ", ".join(f"{ns / n / 1e6:.1f}" for ns in busy.values() if ns > window / 10)
    print(f"per step: profiled window {window / n / 1e6:.1f} ms; worker threads busy {busy_ms} ms; "
          f"in-loop operations {in_loop / n / 1e6:.1f} ms, once-per-step operations "
          f"{once / n / 1e6:.1f} ms (exclusive, summed over threads)")
    print(f"{'ms/step':>9} {'calls/step':>10} {'us/call':>9}  operation")
    for name, ns in total.most_common(_TOP.value):
        print(f"{ns / n / 1e6:9.2f} {calls[name] / n:10.0f} {ns / calls[name] / 1e3:9.1f}  {name}")
    if _TIMELINE.value:
        print_timeline(thread_events, loop_ops, window / n)
    if _THREADS.value:
        devices = {k: v for k, v in thread_events.items() if "Eigen" in k}
        print("\nworker threads, ms per step: busy, waiting at the rendezvous, on the operations "
              "all ran equally often (x the fastest thread's time on them):")
        for name, b in thread_balance(devices).items():
            print(f"  {name}: busy {b['busy'] / n / 1e6:.1f}, wait {b['wait'] / n / 1e6:.1f}, "
                  f"shared {b['shared'] / n / 1e6:.1f} ({b['slowdown']:.2f}x)")


def print_device(data, n: int, seq: int) -> None:
    """The accelerator's lines, then its time per step by HLO operation (``device_op_times``)."""
    print("device lines (plane, line, events, ms summed over the profile):")
    for plane, line, count, ns in device_lines(data):
        print(f"  {plane} | {line}: {count} events, {ns / 1e6:.1f} ms")
    total, calls, busy, window, events = device_op_times(data)
    loop_ops = {k for k in calls if calls[k] >= seq * n}
    in_loop = sum(v for k, v in total.items() if k in loop_ops)
    print(f"per step: window {window / n / 1e6:.2f} ms, streams busy {busy / n / 1e6:.2f} ms "
          f"(idle {(window - busy) / n / 1e6:.2f} ms), {events / n:.0f} kernels and copies; "
          f"in-loop operations {in_loop / n / 1e6:.2f} ms, once-per-step "
          f"{(sum(total.values()) - in_loop) / n / 1e6:.2f} ms")
    print(f"{'ms/step':>9} {'calls/step':>10} {'us/call':>9}  operation")
    for name, ns in total.most_common(_TOP.value):
        print(f"{ns / n / 1e6:9.2f} {calls[name] / n:10.0f} {ns / calls[name] / 1e3:9.1f}  {name}")


def print_timeline(threads: dict, in_loop: set[str], step_ns: float) -> None:
    """The phases of each thread that runs a device's program (XLA's Eigen threads) in the
    profile's first ``step_ns`` (the mean step, so a shorter first step shows the start of
    the next), in ms from the profile's start."""
    t0 = min(e[0] for events in threads.values() for e in events)
    print(f"\nphases in the profile's first {step_ns / 1e6:.1f} ms, one mean step (ms from its "
          "start; a phase after the all-reduce's wait is the next step's):")
    for name, events in threads.items():
        if "Eigen" not in name:  # the client threads only launch and wait
            continue
        first = [e for e in events if e[0] < t0 + step_ns]
        shown = [p for p in phases(first, in_loop) if p[1] - p[0] > 1e5]  # over 0.1 ms
        if shown:
            print(f"  {name}: " + ", ".join(f"{k} {(s - t0) / 1e6:.1f}+{(e - s) / 1e6:.1f}"
                                           for s, e, k in shown))


if __name__ == "__main__":
    sys.exit(app.run(main))
