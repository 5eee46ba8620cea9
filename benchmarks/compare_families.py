"""mLSTM vs transformer (bytes and SentencePiece) vs AWD-LSTM vs QRNN on one text file at
equal CPU time.

    python benchmarks/compare_families.py --text=path/to/input.txt [--out=runs/compare]
        [--runs="awd-lstm 2x256 (bytes),qrnn 2x512 (bytes)"]

Runs ``configs/quickstart.py`` (mLSTM 256) first and measures its CPU time (user + system
of the training process, from ``os.wait4``: fair on a shared machine, where wall time is
not). Then it measures each transformer's CPU seconds per step on a short probe and trains
it for as many steps as fit into the mLSTM's CPU time. Every run trains on the same text
with the same split; ``bpc`` is bits per UTF-8 byte of the validation text, so the byte
and the subword models compare directly. Prints a Markdown table and appends JSON lines to
``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

from lmscale.training.bench import git_commit, train_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "mlstm 256 (bytes)": ["--config=configs/quickstart.py"],
    "transformer 4x128 (bytes)": ["--config=configs/transformer_quickstart.py"],
    "transformer 4x128 (SentencePiece 1k)": [
        "--config=configs/transformer_quickstart.py", "--config.data.tokenizer=sentencepiece",
        "--config.data.vocab_size=1024"],
    "awd-lstm 2x256 (bytes)": ["--config=configs/awd_lstm_char_cpu.py"],
    "qrnn 2x512 (bytes)": ["--config=configs/qrnn_char_cpu.py"],
}


def run(args: list[str], workdir: str, steps: int, text: str) -> dict:
    """Trains one run to ``steps``; returns its CPU seconds and last records."""
    _, usage = train_process([*args, f"--workdir={workdir}",
                              f"--config.data.train={text}", f"--config.train.steps={steps}",
                              f"--config.train.eval_every={max(steps // 4, 1)}",
                              "--config.train.progress_bar=False",
                              f"--config.checkpoint.every={steps}",
                              f"--config.optim.decay_steps={steps}"], REPO)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    val = [r for r in records if r["split"] == "val"]
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "steps": steps, "val_bpc": val[-1]["bpc"],
            "val_bits_per_token": val[-1]["bits_per_token"], "val_curve": [(r["step"], r["bpc"]) for r in val]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="a text file (e.g. tinyshakespeare's input.txt)")
    parser.add_argument("--out", default="runs/compare_families")
    parser.add_argument("--probe_steps", type=int, default=20)
    parser.add_argument("--runs", default="", help="comma-separated names of RUNS to compare "
                        "with the mLSTM (default: all)")
    parser.add_argument("--base_steps", type=int, default=600,
                        help="steps of the mLSTM quickstart, which sets the CPU budget")
    parser.add_argument("--budget_cpu_s", type=float, default=0.0,
                        help="> 0: use this CPU budget (e.g. an earlier mLSTM run's, from "
                        "benchmarks/results.jsonl) instead of running the mLSTM")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = list(RUNS)
    if args.runs:
        unknown = [n for n in args.runs.split(",") if n not in RUNS]
        if unknown:
            raise SystemExit(f"--runs: unknown {unknown}; expected names from {names}")
        names = [names[0]] + [n for n in args.runs.split(",") if n != names[0]]
    if args.budget_cpu_s > 0:
        results, budget = {}, args.budget_cpu_s
    else:
        results = {names[0]: run(RUNS[names[0]], os.path.join(args.out, "mlstm"), args.base_steps,
                                 args.text)}
        budget = results[names[0]]["cpu_s"]
    for i, name in enumerate(names[1:]):
        # Two probes separate the fixed cost (data preparation, tokenizer training, compiles,
        # the final validation) from the cost per step; the run gets the same total CPU time.
        tag = "".join(c if c.isalnum() else "_" for c in name)
        short = run(RUNS[name], os.path.join(args.out, f"probe_{tag}_a"), args.probe_steps, args.text)
        long = run(RUNS[name], os.path.join(args.out, f"probe_{tag}_b"), 3 * args.probe_steps,
                   args.text)
        per_step = max((long["cpu_s"] - short["cpu_s"]) / (2 * args.probe_steps), 1e-3)
        fixed = max(short["cpu_s"] - args.probe_steps * per_step, 0.0)
        steps = max(args.probe_steps, int((budget - fixed) / per_step))
        results[name] = run(RUNS[name], os.path.join(args.out, f"run_{tag}"), steps, args.text)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()  # the library's checkout, "+dirty" if its code changed
    print("| model | steps | CPU s | val bpc (bits/byte) | val bits/token |\n|---|---|---|---|---|")
    with open(os.path.join(REPO, "benchmarks", "results.jsonl"), "a") as f:
        for name, r in results.items():
            print(f"| {name} | {r['steps']} | {r['cpu_s']:.0f} | {r['val_bpc']:.3f} | "
                  f"{r['val_bits_per_token']:.3f} |")
            f.write(json.dumps({"benchmark": "compare_families", "model": name, "text": args.text,
                                "date": stamp, "commit": commit, "host": platform.node(),
                                "cpus": os.cpu_count(), **r}) + "\n")


if __name__ == "__main__":
    main()
