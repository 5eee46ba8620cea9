"""lmscale vs the PyTorch peer (../shared/peer/torch_mlstm.py), back to back, same shapes.

    python benchmarks/peer_compare.py [--repeats 3] [--torch_python ~/torch-peer/bin/python] \
        [--compute float32,bfloat16]

For each shape (hidden, batch, seq) and each repeat, runs in fresh processes, one after the
other: ``python -m lmscale.bench`` on configs/quickstart.py with the shape as overrides
(median of --steps steps), once per --compute dtype (the matmuls' compute dtype; the peer
always runs float32), then the peer's ``bench`` with ``--scan bptt`` and
``--scan autograd`` (its mean over --steps steps, 2 threads). The ratio of a repeat is
lmscale's chars/s over the better of the two peer scans *of the same repeat*; only such
ratios mean anything on a shared machine. Before each run it waits (up to --quiet_wait s)
until other processes use under 30 % of the CPUs, and records the CPU share others used
during the run (``other_cpu``). Prints a table; appends one JSON line per repeat to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peer" / "torch_mlstm.py"
SHAPES = ((256, 32, 128), (1024, 64, 64))


def _ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def _children_ticks() -> int:
    t = os.times()
    return int((t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


def wait_quiet(limit: float, timeout: float) -> float:
    """Waits until the machine's busy share over 2 s is below ``limit``; returns the last share."""
    end = time.time() + timeout
    while True:
        b0, t0 = _ticks()
        time.sleep(2.0)
        b1, t1 = _ticks()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < limit or time.time() > end:
            return round(busy, 3)


def run(cmd: list[str]) -> tuple[dict, float]:
    """Runs ``cmd``; returns (its last JSON line, CPU share used by other processes meanwhile)."""
    b0, t0 = _ticks()
    c0 = _children_ticks()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    b1, t1 = _ticks()
    mine = _children_ticks() - c0
    other = max(0.0, (b1 - b0 - mine) / max(t1 - t0, 1))
    line = [x for x in p.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line), round(other, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch_python", default=os.path.expanduser("~/torch-peer/bin/python"))
    ap.add_argument("--quiet_wait", type=float, default=60.0)
    ap.add_argument("--grad", default="custom", help="lmscale --grad")
    ap.add_argument("--compute", default="float32",
                    help="lmscale precision.compute dtypes, comma separated (one row each)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "peer_compare.jsonl"))
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                    help="hidden x batch x seq, comma separated")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows = []
    for rep in range(a.repeats):
        for hidden, batch, seq in shapes:
            shape = [f"--config.model.hidden={hidden}", f"--config.train.batch_size={batch}",
                     f"--config.train.seq_len={seq}"]
            lms = {}
            for compute in a.compute.split(","):
                wait_quiet(0.3, a.quiet_wait)
                lms[compute] = run([sys.executable, "-m", "lmscale.bench",
                                    "--config=configs/quickstart.py", *shape,
                                    f"--config.precision.compute={compute}", f"--steps={a.steps}",
                                    f"--grad={a.grad}", "--label=peer_compare"])
            peer = {}
            for scan in ("bptt", "autograd"):
                wait_quiet(0.3, a.quiet_wait)
                peer[scan] = run([a.torch_python, str(PEER), "bench", "--hidden", str(hidden),
                                  "--batch", str(batch), "--seq", str(seq), "--steps", str(a.steps),
                                  "--warmup", "2", "--threads", "2", "--scan", scan])
            best = max(peer, key=lambda s: peer[s][0]["chars_per_s"])
            for compute, (lm, lm_other) in lms.items():
                row = {"repeat": rep, "hidden": hidden, "batch": batch, "seq": seq, "grad": a.grad,
                       "compute": compute, "jax": lm["host"]["jax"],
                       "lmscale_chars_per_s": round(lm["chars_per_s"]),
                       "lmscale_other_cpu": lm_other,
                       "lmscale_of_matmul_rate": round(lm["of_matmul_rate"], 3),
                       "matmul_gflops": round(lm["matmul"]["flop_per_s"] / 1e9),
                       **{f"peer_{s}_chars_per_s": peer[s][0]["chars_per_s"] for s in peer},
                       **{f"peer_{s}_other_cpu": peer[s][1] for s in peer},
                       "peer_best": best,
                       "ratio": round(lm["chars_per_s"] / peer[best][0]["chars_per_s"], 3),
                       "commit": lm["commit"], "date": time.strftime("%Y-%m-%d %H:%M")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| shape (hidden, batch, seq) | lmscale compute (JAX) | lmscale chars/s | peer bptt | "
          "peer autograd | ratio | lmscale % of matmul | other CPU (lm / bptt / autograd) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['hidden']}, {r['batch']}, {r['seq']} (#{r['repeat']}) | {r['compute']} "
              f"({r['jax']}) | {r['lmscale_chars_per_s']} "
              f"| {r['peer_bptt_chars_per_s']:.0f} | {r['peer_autograd_chars_per_s']:.0f} | {r['ratio']:.2f} "
              f"| {100 * r['lmscale_of_matmul_rate']:.0f} % | {r['lmscale_other_cpu']} / "
              f"{r['peer_bptt_other_cpu']} / {r['peer_autograd_other_cpu']} |")


if __name__ == "__main__":
    main()
