"""The transfer's L1 C search on a large train set: every row vs a subsample (``search_rows``).

    python benchmarks/transfer_c_search.py                       # 100k x 1024, search_rows 0 and 20000
    python benchmarks/transfer_c_search.py --rows 30000 --features 256 --search_rows 0,6000

Synthetic standardized features shaped like LM states (a low-rank shared part plus noise),
with a planted "neuron" (unit 7) and 40 weak units; labels drawn from their logistic model;
10k validation rows. For each ``--search_rows`` value (0 = search on every row), the wall and
CPU seconds of ``classify.fit_l1`` over the default C grid (its fits in worker processes, as
``lmscale.transfer`` runs them), the chosen C, validation accuracy and non-zero weights.
Appends JSON lines to benchmarks/results.jsonl (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def features(n: int, f: int, seed: int = 0, n_val: int = 10_000) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    total = n + n_val
    shared = rng.standard_normal((total, 32), dtype=np.float32)
    mix = rng.standard_normal((32, f), dtype=np.float32) * 0.5
    x = rng.standard_normal((total, f), dtype=np.float32) + shared @ mix
    w = np.zeros(f, np.float32)
    w[7] = 1.5
    k = min(40, f)  # units with a small weight besides unit 7
    w[rng.choice(f, k, replace=False)] += rng.normal(0, 0.25, k).astype(np.float32)
    logit = x @ w / np.sqrt(1 + 0.25 * np.sum(mix[:, 7] ** 2))
    y = (rng.random(total) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    x = (x - x[:n].mean(0)) / x[:n].std(0)
    return x[:n].astype(np.float32), y[:n], x[n:].astype(np.float32), y[n:]


def cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), field)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--search_rows", default="0,20000")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results.jsonl"))
    args = parser.parse_args()
    if args.features < 8:  # unit 7 is the planted one
        parser.error(f"--features must be at least 8, got {args.features}")
    from joblib.externals.loky import get_reusable_executor
    from lmscale.transfer.classify import fit_l1
    x, y, xv, yv = features(args.rows, args.features)
    from lmscale.training.bench import append_jsonl, git_commit
    commit = git_commit()  # "+dirty" if the library's code changed
    for search_rows in (int(s) for s in args.search_rows.split(",")):
        cpu, start = cpu_seconds(), time.perf_counter()
        fit = fit_l1(x, y, xv, yv, search_rows=search_rows)
        wall = time.perf_counter() - start
        get_reusable_executor().shutdown(wait=True)  # the workers' CPU time is counted
        record = {"bench": "transfer_c_search", "rows": args.rows, "features": args.features,
                  "search_rows": search_rows, "seconds": round(wall, 1),
                  "cpu_seconds": round(cpu_seconds() - cpu, 1), "C": fit.C,
                  "val_accuracy": fit.val_accuracy, "nonzero_weights": fit.nonzero,
                  "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(record), flush=True)
        if args.out:
            append_jsonl(record, args.out)


if __name__ == "__main__":
    main()
