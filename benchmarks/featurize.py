"""Featurization throughput (texts/s, chars/s) on real sentences, and FLOP utilization.

    python benchmarks/featurize.py                       # hidden 256 and 1024 on SST test
    python benchmarks/featurize.py --hidden 4096 --texts 512

Random-weight mLSTMs (speed does not depend on the weights) over the SST binary test
sentences (../shared/data/sst_binary/test.csv, 1821 texts). Measured after a warm-up
pass (compilation excluded). Utilization = forward FLOPs of the real characters
(``flops_per_token`` x characters) / time / the measured matmul rate; padding to the
chunk length counts as waste. Appends JSON lines to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.config import default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import build_model, flops_per_token
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM
from lmscale.transfer.featurize import featurize

HERE = os.path.dirname(os.path.abspath(__file__))
SST_TEST = os.path.join(HERE, "..", "..", "shared", "data", "sst_binary", "test.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="*", default=[256, 1024])
    p.add_argument("--texts", type=int, default=0, help="use only the first N texts (0 = all)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--data", default=SST_TEST)
    p.add_argument("--out", default=os.path.join(HERE, "results.jsonl"))
    args = p.parse_args()
    with open(args.data, newline="", encoding="utf-8") as f:
        texts = [row["sentence"] for row in csv.DictReader(f)]
    texts = texts[:args.texts] if args.texts else texts
    chars = sum(len(t.encode()) for t in texts)
    from benchmarks.throughput import matmul_rate
    peak = matmul_rate()
    tok = ByteTokenizer.sentiment_discovery()
    for hidden in args.hidden:
        cfg = default_config()
        cfg.model.hidden, cfg.model.embed = hidden, 64
        model = build_model(cfg.model, tok.vocab_size, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        lm = TrainedLM(config=cfg, derived={}, tokenizer=tok, graphdef=graphdef,
                       params=jax.tree.map(jnp.asarray, params), step=0, mesh=mesh_lib.make_mesh())
        featurize(lm, texts, batch_size=args.batch, chunk=args.chunk)  # warm-up: compiles
        t = time.perf_counter()
        featurize(lm, texts, batch_size=args.batch, chunk=args.chunk)
        seconds = time.perf_counter() - t
        flops = flops_per_token(cfg.model, tok.vocab_size) - 2 * hidden * tok.vocab_size  # no decoder
        result = {"benchmark": "featurize", "hidden": hidden, "texts": len(texts), "chars": chars,
                  "batch": args.batch, "chunk": args.chunk, "seconds": seconds,
                  "texts_per_s": len(texts) / seconds, "chars_per_s": chars / seconds,
                  "flop_per_s": flops * chars / seconds, "utilization": flops * chars / seconds / peak,
                  "matmul_flop_per_s": peak, "devices": jax.device_count(),
                  "platform": jax.devices()[0].platform, "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(result))
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
