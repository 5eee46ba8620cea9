"""QRNN vs LSTM training step of the same width (and the QRNN's two fo-poolings), interleaved,
in CPU seconds per step.

    python benchmarks/qrnn_vs_lstm.py [--hidden=512] [--rounds=6] [--steps=5]

``python -m lmscale.bench`` times one config at a time in wall-clock seconds, which on a
machine shared with other jobs depends on what else runs at that moment. Here both steps
(``lmscale.training.bench.compile_step``: the real jitted train step of configs/quickstart.py
with model.kind lstm / qrnn, weight norm off, 1 layer, batch 32 x 128; the QRNN with
model.qrnn_pooling sequential and associative) are compiled first,
then timed in alternating rounds of --steps steps, and each step is measured in process
CPU time (user + system of all threads) as well as wall time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lmscale.config import config_from_file  # noqa: E402
from lmscale.training.bench import compile_step, time_interleaved  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    runs = {}
    for name in ("lstm", "qrnn", "qrnn associative"):
        c = config_from_file(os.path.join(REPO, "configs", "quickstart.py"))
        c.unlock()
        c.model.kind, c.model.hidden, c.model.weight_norm = name.split()[0], args.hidden, False
        c.model.qrnn_pooling = "associative" if "associative" in name else "sequential"
        c.lock()
        compiled, state, batch, _ = compile_step(c)
        state, m = compiled(state, batch)  # warm-up
        jax.block_until_ready(m)
        runs[name] = {"fn": compiled, "state": state, "batch": batch}
    time_interleaved(list(runs.values()), args.rounds, args.steps)
    print(f"| model (hidden {args.hidden}, 32 x 128) | CPU s/step median | min | wall s/step median | min |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in runs.items():
        print(f"| {kind} | {statistics.median(r['cpu']):.3f} | {min(r['cpu']):.3f} | "
              f"{statistics.median(r['wall']):.3f} | {min(r['wall']):.3f} |")
    ratio = statistics.median(runs["lstm"]["cpu"]) / statistics.median(runs["qrnn"]["cpu"])
    print(f"\nQRNN step: {ratio:.2f}x less CPU time than the LSTM's")


if __name__ == "__main__":
    main()
