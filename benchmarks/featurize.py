"""Featurization throughput (texts/s, chars/s) on real sentences, and FLOP utilization.

    python benchmarks/featurize.py                       # hidden 256 and 1024 on SST test
    python benchmarks/featurize.py --hidden 4096 --texts 512 --compute float32,bfloat16
    git show 217e335:lmscale/transfer/featurize.py > /tmp/featurize_old.py
    python benchmarks/featurize.py --hidden 1024 --before /tmp/featurize_old.py --rounds 4
    python benchmarks/featurize.py --hidden --config configs/transformer_quickstart.py

Random-weight mLSTMs (speed does not depend on the weights) of ``--hidden`` units, and the
models of the ``--config`` files (random weights, bytes), over the SST binary test
sentences (``--data``; default: SST's test.csv as ``python -m lmscale.datasets fetch
sst_binary`` gives it, 1821 texts), in each ``--compute`` dtype
(``restore.with_compute``). ``first_seconds``: the first call, compiling included; then the
median of ``--rounds`` whole ``featurize`` calls (compilation excluded). Utilization =
forward FLOPs of the real characters (``flops_per_token`` at length 1, without the output
layer, x characters: a transformer's attention is not counted) / time / the measured
matmul rate in that dtype (float32 accumulation, ``lmscale.training.bench.matmul_rate``);
``efficiency`` = real tokens / tokens read (the rest is padding: the rows' tails of the
packed texts, and a recurrent LM's last chunk's or a transformer's last call's rows).

``--before FILE``: another version of ``lmscale/transfer/featurize.py`` (e.g. from git),
timed round-robin with the current one in this process (on a shared machine only
alternating runs compare) and checked to give the same features.
Appends JSON lines to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmscale.config import config_from_file, default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import build_model, flops_per_token
from lmscale.training import mesh as mesh_lib
from lmscale.training.bench import git_commit, matmul_rate
from lmscale.training.restore import TrainedLM, with_compute
from lmscale.transfer import featurize as current
from lmscale.transfer import packing

HERE = os.path.dirname(os.path.abspath(__file__))


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("featurize_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_lm(model: int | str, tok: ByteTokenizer) -> TrainedLM:
    """An mLSTM of ``model`` units (embedding 64), or the model of config file ``model``."""
    if isinstance(model, str):
        cfg = config_from_file(model)
    else:
        cfg = default_config()
        cfg.model.hidden, cfg.model.embed = model, 64
    graphdef, params = nnx.split(build_model(cfg.model, tok.vocab_size, rngs=nnx.Rngs(0)), nnx.Param)
    return TrainedLM(config=cfg, derived={}, tokenizer=tok, graphdef=graphdef,
                     params=jax.tree.map(jnp.asarray, params), step=0, mesh=mesh_lib.make_mesh())


def bins_efficiency(lengths: list[int], max_len: int, batch: int) -> float:
    """Real tokens over tokens read by a model with a length limit (``packing.pack_bins``,
    each width's calls of ``batch`` rows, the last one padded)."""
    cut = np.minimum(lengths, max_len)
    read = 0
    for _, plan in packing.pack_bins(cut, max_len):
        rows = packing.rows_for(batch, plan.rows, jax.device_count())
        read += -(-plan.rows // rows) * rows * plan.width
    return float(cut.sum() / read)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="*", default=[256, 1024])
    p.add_argument("--config", nargs="*", default=[], help="config files of more models")
    p.add_argument("--texts", type=int, default=0, help="use only the first N texts (0 = all)")
    p.add_argument("--batch", type=int, default=128, help="rows (featurize's batch_size)")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--pooling", default="last", help="last, mean, max or min")
    p.add_argument("--compute", default="float32", help="comma-separated dtypes")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--before", default="", help="an older featurize.py to time against")
    p.add_argument("--data", default="", help="a CSV with a sentence column (default: SST's "
                   "test.csv, fetched with lmscale.datasets if absent)")
    p.add_argument("--out", default=os.path.join(HERE, "results.jsonl"))
    args = p.parse_args()
    if not args.data:
        from lmscale.datasets import fetch
        args.data = os.path.join(fetch("sst_binary"), "test.csv")
    with open(args.data, newline="", encoding="utf-8") as f:
        texts = [row["sentence"] for row in csv.DictReader(f)]
    texts = texts[:args.texts] if args.texts else texts
    chars = sum(len(t.encode()) for t in texts)
    tok = ByteTokenizer.sentiment_discovery()
    lengths = [len(tok.encode(t)) for t in texts]
    rows = -(-min(args.batch, len(texts)) // jax.device_count()) * jax.device_count()
    plan = packing.pack(lengths, rows)
    packed_efficiency = sum(lengths) / (rows * -(-plan.width // args.chunk) * args.chunk)
    versions = {"current": current.featurize}
    if args.before:
        versions = {"before": load_module(args.before).featurize, **versions}
    for model in args.hidden + args.config:
        for compute in args.compute.split(","):
            lm = with_compute(random_lm(model, tok), compute)
            width = lm.model().feature_width
            peak = matmul_rate(jnp.dtype(compute))["flop_per_s"]
            run = {name: (lambda f=f: f(lm, texts, batch_size=args.batch, chunk=args.chunk,
                                        pooling=args.pooling))
                   for name, f in versions.items()}
            features, first = {}, {}
            for name, f in run.items():  # warm-up: compiles
                t = time.perf_counter()
                features[name] = f()
                first[name] = time.perf_counter() - t
            seconds = {name: [] for name in run}
            for r in range(args.rounds):
                for name in (list(run) if r % 2 == 0 else list(run)[::-1]):
                    t = time.perf_counter()
                    run[name]()
                    seconds[name].append(time.perf_counter() - t)
            flops = flops_per_token(lm.config.model, tok.vocab_size) - 2 * width * tok.vocab_size
            for name in run:
                s = float(np.median(seconds[name]))
                result = {"benchmark": "featurize", "version": name,
                          **({"hidden": model} if isinstance(model, int)
                             else {"config": model, "kind": lm.config.model.kind}),
                          "compute": compute, "texts": len(texts), "chars": chars,
                          "batch": args.batch, "chunk": args.chunk, "pooling": args.pooling,
                          "seconds": s,
                          "first_seconds": first[name], "all_seconds": seconds[name], "texts_per_s": len(texts) / s,
                          "chars_per_s": chars / s, "flop_per_s": flops * chars / s,
                          "utilization": flops * chars / s / peak, "matmul_flop_per_s": peak,
                          "devices": jax.device_count(), "platform": jax.devices()[0].platform,
                          "commit": git_commit(), "date": time.strftime("%Y-%m-%d")}
                if name == "current":
                    result["efficiency"] = (packed_efficiency if lm.model().max_len is None
                                            else bins_efficiency(lengths, lm.model().max_len,
                                                                 args.batch))
                else:
                    result["max_abs_difference"] = float(
                        np.abs(features[name] - features["current"]).max())
                print(json.dumps(result))
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
