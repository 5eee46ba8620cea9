"""Fine-tuning on long texts: peak memory and step time with and without ``finetune.grad_tokens``.

    python benchmarks/finetune_long_texts.py                          # 8 texts of 100k bytes
    python benchmarks/finetune_long_texts.py --chars 20000 --grad_tokens 0,256,1024

A 128-unit mLSTM LM (2 training steps on generated text: speed and memory do not depend on
what it learned) is fine-tuned for ``--steps`` steps on ``--rows`` generated texts of
``--chars`` bytes each (one batch of ``--rows``), once per ``--grad_tokens`` value, each in a
fresh process: its peak resident memory (``ru_maxrss``), the wall time of the run, and the
steady step time (``1 / steps_per_s`` of metrics.jsonl: the first step, which compiles, left
out). 0 = back-propagation through the whole text. Appends JSON lines to
benchmarks/results.jsonl (``--out`` to change).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _texts(path: str, rows: int, chars: int, seed: int) -> None:
    import numpy as np
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "film", "the", "a", "plot", "actor", "dull", "great", "and"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["label", "sentence"])
        for r in range(rows):
            text = " ".join(rng.choice(words, chars // 4))[:chars]
            out.writerow([r % 2, text])


def one_run(args: argparse.Namespace, grad_tokens: int) -> dict:
    """Runs in a fresh process: the fine-tune, then its peak memory and timings."""
    from lmscale.config import default_config
    from lmscale.finetuning.loop import finetune
    from lmscale.training.loop import train
    work = tempfile.mkdtemp(prefix="ft_long_")
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("the film was good and the plot was dull.\n" * 2000)
    lm = default_config()
    lm.data.train, lm.data.split = corpus, "8,1,1"
    lm.model.hidden, lm.model.embed = args.hidden, 64
    lm.train.steps, lm.train.batch_size, lm.train.seq_len = 2, 4, 32
    lm.train.eval_every, lm.train.progress_bar = 0, False
    lm.lock()
    train(lm, os.path.join(work, "lm"))
    _texts(os.path.join(work, "train.csv"), args.rows, args.chars, 0)
    _texts(os.path.join(work, "val.csv"), 2, 64, 1)
    c = default_config()
    c.init_from = os.path.join(work, "lm")
    c.finetune.train, c.finetune.val = os.path.join(work, "train.csv"), os.path.join(work, "val.csv")
    c.finetune.grad_tokens, c.finetune.pooling = grad_tokens, args.pooling
    c.train.steps, c.train.batch_size, c.train.log_every = args.steps, args.rows, args.steps - 1
    c.train.eval_every, c.train.progress_bar, c.checkpoint.every = 0, False, args.steps
    c.lock()
    start = time.perf_counter()
    finetune(c, os.path.join(work, "ft"))
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in open(os.path.join(work, "ft", "metrics.jsonl"))]
    train_records = [r for r in records if "steps_per_s" in r]
    step_s = 1.0 / train_records[-1]["steps_per_s"] if train_records else None
    return {"bench": "finetune_long_texts", "rows": args.rows, "chars": args.chars,
            "hidden": args.hidden, "pooling": args.pooling, "grad_tokens": grad_tokens,
            "steps": args.steps, "finetune_wall_s": round(wall, 2),
            "step_s": None if step_s is None else round(step_s, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--pooling", default="last,mean")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad_tokens", default="0,1024,256")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results.jsonl"))
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:  # the first step compiles; the records time the ones after it
        parser.error(f"--steps must be at least 2, got {args.steps}")
    if args.one is not None:
        print(json.dumps(one_run(args, args.one)))
        return
    from lmscale.training.bench import append_jsonl, git_commit
    commit = git_commit()  # "+dirty" if the library's code changed
    failed = []
    for k in (int(x) for x in args.grad_tokens.split(",")):
        cmd = [sys.executable, __file__, "--one", str(k)] + [
            f"--{name}={getattr(args, name)}" for name in ("rows", "chars", "hidden", "pooling", "steps")]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if run.returncode != 0:
            print(f"grad_tokens={k}: failed (rc {run.returncode}): {run.stderr.strip()[-500:]}")
            failed.append(k)
            continue
        record = {**json.loads(run.stdout.strip().splitlines()[-1]), "commit": commit,
                  "date": time.strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(record), flush=True)
        if args.out:
            append_jsonl(record, args.out)
    if failed:
        sys.exit(f"error: grad_tokens {failed} failed (above)")


if __name__ == "__main__":
    main()
