"""A/B timing of recurrence options (lmscale.models.recurrent.scan_options), interleaved.

    python benchmarks/levers.py --hidden 256 --batch 32 --seq 128 \
        --variant grad=autodiff --variant grad=custom --variant grad=custom,unroll=4

Each variant's training step (the real jitted step, lmscale.training.bench.compile_step) is
compiled once; then the variants are timed in turns (round-robin, --rounds rounds of --steps
steps each), so that load from other processes hits all of them alike. Prints, per variant,
the median step time, chars/s and the ratio to the first variant (also from the fastest
step, which is less disturbed by other processes, and from the process CPU time per step,
a proxy when the machine is shared); one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from lmscale.config import default_config
from lmscale.models.recurrent import scan_options
from lmscale.training.bench import compile_step, time_interleaved


def parse_variant(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="mlstm")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--compute", default="float32")
    p.add_argument("--reset_every", type=int, default=0)
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    c = default_config()
    c.model.kind, c.model.hidden, c.model.embed = a.kind, a.hidden, 64
    c.train.batch_size, c.train.seq_len = a.batch, a.seq
    c.precision.compute = a.compute
    c.lock()
    runs = []
    for v in a.variant:
        with scan_options(**parse_variant(v)):
            compiled, state, batch, compile_s = compile_step(c, reset_every=a.reset_every)
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        runs.append({"variant": v, "fn": compiled, "state": state, "batch": batch,
                     "compile_s": compile_s})
    time_interleaved(runs, a.rounds, a.steps)
    base = float(np.median(runs[0]["wall"]))
    base_min = float(np.min(runs[0]["wall"]))
    for r in runs:
        step = float(np.median(r["wall"]))
        fastest = float(np.min(r["wall"]))
        print(json.dumps({"variant": r["variant"], "kind": a.kind, "hidden": a.hidden,
                          "batch": a.batch, "seq": a.seq, "compute": a.compute,
                          "reset_every": a.reset_every, "step_s": round(step, 5),
                          "chars_per_s": round(a.batch * a.seq / step),
                          "speedup": round(base / step, 3), "step_s_min": round(fastest, 5),
                          "speedup_min": round(base_min / fastest, 3),
                          "cpu_s": round(float(np.median(r["cpu"])), 5),
                          "speedup_cpu": round(float(np.median(runs[0]["cpu"]) / np.median(r["cpu"])), 3),
                          "compile_s": round(r["compile_s"], 2),
                          "date": time.strftime("%Y-%m-%d %H:%M")}))


if __name__ == "__main__":
    main()
