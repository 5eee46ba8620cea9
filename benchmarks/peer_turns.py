"""lmscale vs the PyTorch peer, taking turns: the ratio measured round by round.

    python benchmarks/peer_turns.py [--shapes 1024x64x64,256x32x128] [--rounds 8] [--steps 4] \
        [--compute float32] [--torch_python ~/torch-peer/bin/python]

``peer_compare.py`` runs each side in a fresh process, one after the other, ~1 minute each; on
a shared VM whose speed changes by up to 2x over minutes, the side that ran in the faster
minute wins (its ratios at 1024 units ranged 0.83-1.33 in one hour). Here all sides stay
alive, compiled and warmed up, and take turns: each round every side runs ``--steps`` steps
(a few seconds) while the others wait on their stdin, idle, and the round's ratio is
lmscale's chars/s over the better peer's *of the same round*. The order rotates each round,
and a pause (``--gap``) before each turn lets the previous side's threads go to sleep. The
median ratio over rounds is the figure; min and max show the spread.

The sides: the real lmscale step (``lmscale.training.bench.compile_step`` on
configs/quickstart.py with the shape and ``precision.compute``; the host split into a
device per core and malloc on huge pages, as ``lmscale.bench`` runs it), and the peer's own
model, optimizer and ``train_step`` (../shared/peer/torch_mlstm.py, unchanged; 2 threads;
the same step loop as its ``bench``: random batches, (h, c) carried, ``float(loss)`` to
finish a step): ``--scan bptt`` and ``autograd`` in float32, ``autograd`` under
``torch.autocast`` for bfloat16 (``peer_autocast.py``). With ``--matmul``, one more side
times ``lmscale.bench``'s square matmul, so lmscale's share of the matmul rate is taken round
by round too. Prints a table and appends one JSON line per shape and dtype
(``"method": "turns"``) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__:  # imported (the tests)
    from .peer_compare import PEER, PEER_SCANS
else:  # run as a script, its folder first on the path; the peer's Python has no lmscale
    from peer_compare import PEER, PEER_SCANS

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- workers

def _serve(step, tokens_per_step: float, warmup: int, **info) -> None:
    """Runs ``warmup`` steps, says ready (with ``info``), then for each line n on stdin runs n
    steps and prints their wall times as one JSON line; stops at EOF or n = 0."""
    for _ in range(warmup):
        step()
    print(json.dumps({"ready": True, "tokens_per_step": tokens_per_step, **info}), flush=True)
    for line in sys.stdin:
        n = int(line)
        if n <= 0:
            break
        times = []
        for _ in range(n):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times}), flush=True)


def lmscale_worker(hidden: int, batch: int, seq: int, compute: str, warmup: int,
                   cpu_devices: int = 0) -> None:
    """The lmscale side: the compiled training step of configs/quickstart.py at the shape
    (``cpu_devices``: ``parallel.cpu_devices``, 0 for lmscale's default split)."""
    config = _start_host(hidden, batch, seq, compute, cpu_devices)
    import jax
    from lmscale.training.bench import compile_step
    compiled, state, data, _ = compile_step(config)
    box = {"state": state}

    def step() -> None:
        box["state"], metrics = compiled(box["state"], data)
        jax.block_until_ready((box["state"], metrics))

    from lmscale.training.bench import BYTE_VOCAB, git_commit
    from lmscale.training.flops import train_flops_per_token
    from lmscale.training.host_memory import huge_pages_on
    _serve(step, batch * seq, warmup, devices=jax.device_count(),
           huge_pages=huge_pages_on(os.environ), jax=jax.__version__, commit=git_commit(),
           train_flops_per_token=train_flops_per_token(config.model, BYTE_VOCAB, seq))


def matmul_worker(compute: str, warmup: int, products: int = 5) -> None:
    """The machine's matmul rate as ``lmscale.bench`` measures it (``square_matmul``: 2048 x
    2048 on the CPU, the compute dtype, float32 accumulation; the host split as lmscale's
    side, the product on device 0), ``products`` per step; its "tokens" are FLOPs."""
    _start_host(256, 32, 128, compute)
    import jax
    import jax.numpy as jnp
    from lmscale.training.bench import square_matmul
    f, a, b = square_matmul(jnp.dtype(compute))

    def step() -> None:
        jax.block_until_ready([f(a, b) for _ in range(products)])

    _serve(step, products * 2 * a.shape[0] ** 3, warmup)


def _start_host(hidden: int, batch: int, seq: int, compute: str, cpu_devices: int = 0):
    """configs/quickstart.py at the shape, with this process set up as ``lmscale.bench`` sets
    up its own before JAX starts: restarted with huge pages for malloc, the host split into
    ``parallel.cpu_devices`` devices."""
    from lmscale.config import config_from_file
    from lmscale.training.host_devices import split_host
    from lmscale.training.host_memory import restart_with_huge_pages
    config = config_from_file(str(REPO / "configs" / "quickstart.py"))
    with config.unlocked():
        config.model.hidden, config.train.batch_size, config.train.seq_len = hidden, batch, seq
        config.precision.compute, config.parallel.cpu_devices = compute, cpu_devices
    restart_with_huge_pages(config.parallel.cpu_huge_pages, entry=True)
    split_host(config)
    return config


def peer_worker(peer: Path, hidden: int, batch: int, seq: int, scan: str, compute: str,
                warmup: int, seed: int = 0) -> None:
    """The peer's side: its model, Adam and train_step (under autocast for bfloat16)."""
    import numpy as np
    import torch
    from peer_autocast import autocast_train_step, load_peer  # run as a script: its folder
    module = load_peer(peer)
    train_step = autocast_train_step if compute == "bfloat16" else module.train_step
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    model = module.MLSTMCharLM(module.init_weights(seed, hidden), scan=scan)
    opt = module.make_optimizer(model, 1e-3)
    rng = np.random.default_rng(seed + 1)
    batches = [torch.from_numpy(rng.integers(1, module.VOCAB, size=(batch, seq + 1)))
               for _ in range(4)]
    box = {"state": model.zero_state(batch), "k": 0}

    def step() -> None:
        data = batches[box["k"] % len(batches)]
        box["k"] += 1
        loss, box["state"] = train_step(model, opt, data[:, :-1], data[:, 1:], box["state"], 1.0)
        float(loss)

    _serve(step, batch * seq, warmup, threads=torch.get_num_threads(), torch=torch.__version__)


# ----------------------------------------------------------------------------- driver

def turn_order(sides: list[str], round_index: int) -> list[str]:
    """The sides rotated by the round's index, so none always goes first."""
    k = round_index % len(sides)
    return sides[k:] + sides[:k]


def round_ratios(rounds: list[dict[str, float]], lm: str, peers: list[str]) -> list[float]:
    """Per round: chars/s of ``lm`` over the best of ``peers`` in that round."""
    return [r[lm] / max(r[p] for p in peers) for r in rounds]


def shares_of_matmul_rate(rounds: list[dict[str, float]], flops_per_token: float) -> list[float]:
    """Per round: lmscale's FLOP rate (its tokens/s x ``flops_per_token``) over the matmul
    side's FLOP/s of the same round."""
    return [r["lmscale"] * flops_per_token / r["matmul"] for r in rounds]


class Side:
    """A worker process answering 'n' with the times of n steps."""

    def __init__(self, name: str, cmd: list[str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"peer_turns: the {self.name} worker exited "
                                 f"(code {self.proc.wait()}); its messages are above")
            if line.startswith("{"):
                return json.loads(line)

    def ready(self) -> dict:
        """The worker's ready message: tokens_per_step and what it runs on."""
        return self._reply()

    def run(self, steps: int) -> list[float]:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return self._reply()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def compare(hidden: int, batch: int, seq: int, compute: str, a: argparse.Namespace) -> dict:
    """Starts the sides, runs the rounds; returns the JSON row."""
    me = [sys.executable, str(Path(__file__).resolve())]
    shape = ["--hidden", str(hidden), "--batch", str(batch), "--seq", str(seq),
             "--compute", compute, "--warmup", str(a.warmup)]
    sides = {}
    for k, n in enumerate(int(v) for v in a.cpu_devices.split(",")):
        name = "lmscale" if k == 0 else f"lmscale_{n}dev"
        sides[name] = Side(name, [*me, "--worker", "lmscale", "--cpu_devices_n", str(n), *shape])
    if a.matmul:
        sides["matmul"] = Side("matmul", [*me, "--worker", "matmul", *shape])
    for scan in PEER_SCANS[compute]:
        sides[f"peer_{scan}"] = Side(f"peer {scan}", [a.torch_python, *me[1:], "--worker", "peer",
                                                      "--scan", scan, "--peer", str(a.peer),
                                                      *shape])
    load_before = os.getloadavg()[0]  # as the sides start (before their compiles load it)
    try:
        info = {name: side.ready() for name, side in sides.items()}
        tokens = {name: i.pop("tokens_per_step") for name, i in info.items()}
        rounds = []
        for i in range(a.rounds):
            speeds = {}
            for name in turn_order(list(sides), i):
                time.sleep(a.gap)
                times = sides[name].run(a.steps)
                speeds[name] = tokens[name] * len(times) / sum(times)
                if a.verbose:
                    print(f"round {i} {name}: " + " ".join(f"{t * 1e3:.0f}" for t in times) + " ms",
                          flush=True)
            rounds.append(speeds)
    finally:
        for side in sides.values():
            side.close()
    peers = [n for n in sides if n.startswith("peer")]
    ratios = round_ratios(rounds, "lmscale", peers)
    median = lambda name: round(statistics.median(r[name] for r in rounds))
    extra = {}
    if "matmul" in sides:  # lmscale's FLOP rate over the matmul rate of the same round
        of_rate = shares_of_matmul_rate(rounds, info["lmscale"]["train_flops_per_token"])
        extra = {"matmul_gflops": round(statistics.median(r["matmul"] for r in rounds) / 1e9),
                 "lmscale_of_matmul_rate": round(statistics.median(of_rate), 3),
                 "lmscale_of_matmul_rate_min": round(min(of_rate), 3),
                 "lmscale_of_matmul_rate_max": round(max(of_rate), 3)}
    commit = info["lmscale"].pop("commit")  # of the code the lmscale side ran
    return {"method": "turns", "hidden": hidden, "batch": batch, "seq": seq, "compute": compute,
            "rounds": a.rounds, "steps_per_turn": a.steps,
            "lmscale_chars_per_s": median("lmscale"),
            **{f"{p}_chars_per_s": median(p) for p in sides if p not in ("lmscale", "matmul")},
            **extra,
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "sides": {name: {k: v for k, v in i.items() if k != "ready"} for name, i in info.items()},
            "commit": commit,
            # Another process on the machine skews the ratio (a loaded 2-core machine measured
            # 5.7x where a quiet one gives ~1.1x): the 1-minute load before and after the rounds.
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1024x64x64,256x32x128",
                    help="hidden x batch x seq, comma separated")
    ap.add_argument("--compute", default="float32", help="float32 and/or bfloat16, comma separated")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per side per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.5, help="seconds of pause before each turn")
    ap.add_argument("--torch_python", default=os.path.expanduser("~/torch-peer/bin/python"))
    ap.add_argument("--peer", type=Path, default=PEER)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "peer_compare.jsonl"))
    ap.add_argument("--cpu_devices", default="0",
                    help="lmscale's parallel.cpu_devices (0: its default, a device per core); "
                    "a comma-separated list adds one more lmscale side per value, the first "
                    "being the one the ratio is of")
    ap.add_argument("--matmul", action="store_true",
                    help="add a side timing lmscale.bench's square matmul, for lmscale's share "
                    "of the matmul rate round by round")
    ap.add_argument("--cpu_devices_n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--verbose", action="store_true", help="print every turn's step times")
    ap.add_argument("--worker", choices=("lmscale", "peer", "matmul"), help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--scan", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker == "lmscale":
        return lmscale_worker(a.hidden, a.batch, a.seq, a.compute, a.warmup, a.cpu_devices_n)
    if a.worker == "matmul":
        return matmul_worker(a.compute, a.warmup)
    if a.worker == "peer":
        return peer_worker(a.peer, a.hidden, a.batch, a.seq, a.scan, a.compute, a.warmup)
    unknown = [c for c in a.compute.split(",") if c not in PEER_SCANS]
    if unknown:
        ap.error(f"--compute {','.join(unknown)}: the peer runs only {', '.join(PEER_SCANS)}")
    if not a.peer.is_file():
        ap.error(f"no peer at {a.peer} (give --peer)")
    if not os.access(a.torch_python, os.X_OK):  # was a traceback after lmscale's side compiled
        ap.error(f"no PyTorch interpreter at {a.torch_python}: make the peer's environment as "
                 f"its README says (python3 -m venv ~/torch-peer; ~/torch-peer/bin/pip install "
                 f"torch), or give --torch_python")
    if os.getloadavg()[0] > 0.5:
        print(f"warning: the machine's 1-minute load is {os.getloadavg()[0]:.2f} before the "
              f"rounds: other work shares the cores and skews the ratio (recorded in each row)",
              file=sys.stderr, flush=True)
    rows = []
    for text in a.shapes.split(","):
        hidden, batch, seq = (int(v) for v in text.split("x"))
        for compute in a.compute.split(","):
            row = compare(hidden, batch, seq, compute, a)
            rows.append(row)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n| shape (hidden, batch, seq) | compute | lmscale chars/s | peer bptt | peer autograd "
          "| ratio: median (min–max) of rounds | lmscale of matmul rate |\n"
          "|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['hidden']}, {r['batch']}, {r['seq']} | {r['compute']} | "
              f"{r['lmscale_chars_per_s']} | {r.get('peer_bptt_chars_per_s', '–')} | "
              f"{r.get('peer_autograd_chars_per_s', '–')} | **{r['ratio']:.2f}** "
              f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
              f"{'%.0f %%' % (100 * r['lmscale_of_matmul_rate']) if 'matmul_gflops' in r else '–'} |")


if __name__ == "__main__":
    main()
