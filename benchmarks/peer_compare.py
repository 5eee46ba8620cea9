"""lmscale vs the PyTorch peer (../shared/peer/torch_mlstm.py), back to back, same shapes.

    python benchmarks/peer_compare.py [--repeats 3] [--torch_python ~/torch-peer/bin/python] \
        [--compute float32,bfloat16] [--peer ../shared/peer/torch_mlstm.py]

For each shape (hidden, batch, seq) and each repeat, runs in fresh processes, one after the
other: ``python -m lmscale.bench`` on configs/quickstart.py with the shape as overrides
(--steps steps), once per --compute dtype (the matmuls' compute dtype), then the peer's
``bench`` (--steps steps, 2 threads) in the same compute dtype: for
float32 with ``--scan bptt`` and ``--scan autograd``, for bfloat16 the autograd scan under
``torch.autocast`` (``benchmarks/peer_autocast.py``; the peer's hand-written backward cannot
autocast). The ratio of a repeat is lmscale's chars/s over the best peer run of the same
compute dtype *and the same repeat*; only such ratios mean anything on a shared machine.
Both sides count chars/s over the *mean* step time, which is what the peer reports and
what a training run gets (lmscale.bench's own figure is the median; it is recorded too,
as ``lmscale_median_chars_per_s``).
Before each run it waits (up to --quiet_wait s) until other processes use under 30 % of the
CPUs, and records the CPU share others used during the run (``other_cpu``). Prints a table;
appends one JSON line per repeat and compute dtype to --out.
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
AUTOCAST = REPO / "benchmarks" / "peer_autocast.py"
SHAPES = ((256, 32, 128), (1024, 64, 64))
PEER_SCANS = {"float32": ("bptt", "autograd"), "bfloat16": ("autograd",)}  # per compute dtype


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
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:  # its messages, not a bare CalledProcessError
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"peer_compare: {' '.join(cmd[:3])} ... exited with {p.returncode}; "
                         f"its messages are above")
    b1, t1 = _ticks()
    mine = _children_ticks() - c0
    other = max(0.0, (b1 - b0 - mine) / max(t1 - t0, 1))
    line = [x for x in p.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line), round(other, 3)


def mean_chars_per_s(record: dict) -> float:
    """lmscale.bench's chars/s over the mean of its timed steps (the peer's statistic)."""
    times = record["step_s_all"]
    return record["tokens_per_step"] * len(times) / sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--torch_python", default=os.path.expanduser("~/torch-peer/bin/python"))
    ap.add_argument("--quiet_wait", type=float, default=60.0)
    ap.add_argument("--grad", default="custom", help="lmscale --grad")
    ap.add_argument("--compute", default="float32",
                    help="compute dtypes (float32, bfloat16), comma separated: lmscale and the "
                    "peer in each")
    ap.add_argument("--peer", type=Path, default=PEER, help="the peer's torch_mlstm.py")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "peer_compare.jsonl"))
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                    help="hidden x batch x seq, comma separated")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    unknown = [c for c in a.compute.split(",") if c not in PEER_SCANS]
    if unknown:
        ap.error(f"--compute {','.join(unknown)}: the peer runs only {', '.join(PEER_SCANS)}")
    # Checked before lmscale's side runs (it was a traceback after the first lmscale bench).
    if not a.peer.is_file():
        ap.error(f"no peer at {a.peer} (give --peer)")
    if not os.access(a.torch_python, os.X_OK):
        ap.error(f"no PyTorch interpreter at {a.torch_python}: make the peer's environment as "
                 f"its README says (python3 -m venv ~/torch-peer; ~/torch-peer/bin/pip install "
                 f"torch), or give --torch_python")
    if subprocess.run([a.torch_python, "-c", "import torch"], capture_output=True).returncode:
        ap.error(f"{a.torch_python} cannot import torch: install it there "
                 f"({a.torch_python} -m pip install torch), or give --torch_python")
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
            peer = {}  # (compute, scan) -> (record, other CPU)
            for compute in a.compute.split(","):
                for scan in PEER_SCANS[compute]:
                    wait_quiet(0.3, a.quiet_wait)
                    script = ([str(a.peer)] if compute == "float32"
                              else [str(AUTOCAST), "--peer", str(a.peer)])
                    peer[compute, scan] = run([a.torch_python, *script, "bench",
                                               "--hidden", str(hidden),
                                               "--batch", str(batch), "--seq", str(seq),
                                               "--steps", str(a.steps), "--warmup", "2",
                                               "--threads", "2", "--scan", scan])
            for compute, (lm, lm_other) in lms.items():
                same = {s: peer[compute, s] for s in PEER_SCANS[compute]}
                best = max(same, key=lambda s: same[s][0]["chars_per_s"])
                lm_mean = mean_chars_per_s(lm)
                row = {"repeat": rep, "hidden": hidden, "batch": batch, "seq": seq, "grad": a.grad,
                       "compute": compute, "jax": lm["host"]["jax"],
                       "lmscale_chars_per_s": round(lm_mean),
                       "lmscale_median_chars_per_s": round(lm["chars_per_s"]),
                       "lmscale_other_cpu": lm_other,
                       "lmscale_of_matmul_rate":  # at the mean step time too
                           round(lm["of_matmul_rate"] * lm_mean / lm["chars_per_s"], 3),
                       "matmul_gflops": round(lm["matmul"]["flop_per_s"] / 1e9),
                       "peer_compute": compute,
                       **{f"peer_{s}_chars_per_s": same[s][0]["chars_per_s"] for s in same},
                       **{f"peer_{s}_other_cpu": same[s][1] for s in same},
                       "peer_best": best,
                       "ratio": round(lm_mean / same[best][0]["chars_per_s"], 3),
                       "commit": lm["commit"], "date": time.strftime("%Y-%m-%d %H:%M")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| shape (hidden, batch, seq) | compute (lmscale's JAX) | lmscale chars/s | peer bptt | "
          "peer autograd | ratio | lmscale % of matmul | other CPU (lm / bptt / autograd) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        def cell(scan):  # "–" where this dtype's peer has no such scan
            key = f"peer_{scan}_chars_per_s"
            return f"{r[key]:.0f}" if key in r else "–"
        print(f"| {r['hidden']}, {r['batch']}, {r['seq']} (#{r['repeat']}) | {r['compute']} "
              f"({r['jax']}) | {r['lmscale_chars_per_s']} "
              f"| {cell('bptt')} | {cell('autograd')} | {r['ratio']:.2f} "
              f"| {100 * r['lmscale_of_matmul_rate']:.0f} % | {r['lmscale_other_cpu']} / "
              f"{r.get('peer_bptt_other_cpu', '–')} / {r.get('peer_autograd_other_cpu', '–')} |")


if __name__ == "__main__":
    main()
