"""The adaptive softmax's training loss with and without the V-wide logits, timed side by side.

A tied QRNN LM with ``model.adaptive_cutoffs`` (configs/qrnn_wt103.py's output: 400 wide,
cut-offs 2800/20000/76000, V = 267,735 by default) on Zipf-distributed targets (p(rank r)
proportional to 1/r: the share of each cluster as in English word counts, roughly). For each
path — ``full``: the log-probabilities of ``adaptive_log_probs`` and the cross entropy over
them (lmscale before ``models/adaptive_loss.py``), ``adaptive``: ``lm_loss_sums``, the
trainer's loss now — the median time of the jitted gradient of the summed NLL and the compiled
program's peak memory (arguments + outputs + temporaries). Output-layer multiply-adds per token:
full H·(V + k); adaptive H·(c_1 + k) plus, for a token of cluster i, H times the cluster's size.

    python benchmarks/adaptive_loss.py [--vocab 267735 --hidden 512 --batch 16 --seq 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmscale.models import build_model
from lmscale.models.adaptive_softmax import parse_cutoffs
from lmscale.training.loss import cross_entropy_sums, lm_loss_sums


def zipf_targets(rng: np.random.Generator, vocab: int, shape: tuple[int, ...]) -> np.ndarray:
    """Token ids with p(id r) proportional to 1 / (r + 1)."""
    p = 1.0 / np.arange(1, vocab + 1)
    return rng.choice(vocab, size=shape, p=p / p.sum()).astype(np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=267_735)
    ap.add_argument("--cutoffs", default="2800,20000,76000")
    ap.add_argument("--embed", type=int, default=400, help="output width (tied)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    config = ml_collections.ConfigDict(dict(
        kind="qrnn", hidden=args.hidden, embed=args.embed, layers=args.layers, dropout=0.0,
        weight_norm=False, qrnn_window=2, tie_embeddings=True, adaptive_cutoffs=args.cutoffs))
    graphdef, params = nnx.split(build_model(config, args.vocab, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(zipf_targets(rng, args.vocab, (args.batch, args.seq)))
    targets = jnp.asarray(zipf_targets(rng, args.vocab, (args.batch, args.seq)))
    weights = jnp.ones((args.batch, args.seq), jnp.float32)
    cuts = parse_cutoffs(args.cutoffs, args.vocab)
    bounds = np.array([0, *cuts, args.vocab])
    share = np.histogram(np.asarray(targets), bins=bounds)[0] / targets.size
    sizes = np.diff(bounds)
    macs = {"full": args.embed * (args.vocab + len(cuts)),
            "adaptive": args.embed * (cuts[0] + len(cuts) + float(np.dot(share[1:], sizes[1:])))}

    def full(p):
        return cross_entropy_sums(nnx.merge(graphdef, p)(tokens, None)[0], targets, weights)[0]

    def adaptive(p):
        return lm_loss_sums(nnx.merge(graphdef, p), tokens, None, None, targets, weights)[0]

    rows = []
    for name, fn in (("full", full), ("adaptive", adaptive)):
        compiled = jax.jit(jax.value_and_grad(fn)).lower(params).compile()
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                + mem.temp_size_in_bytes) / 2**30 if mem is not None else None
        value, _ = jax.block_until_ready(compiled(params))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params))
            times.append(time.perf_counter() - start)
        rows.append({"path": name, "nll_per_token": float(value) / targets.size,
                     "step_ms": 1e3 * statistics.median(times), "peak_gib": peak,
                     "output_macs_per_token": macs[name], "vocab": args.vocab,
                     "cutoffs": args.cutoffs, "tokens": int(targets.size),
                     "cluster_share": [round(float(s), 4) for s in share],
                     "device": jax.devices()[0].device_kind})
        print(json.dumps(rows[-1]))
    print(f"adaptive vs full: {rows[0]['step_ms'] / rows[1]['step_ms']:.2f}x faster, "
          f"{rows[0]['peak_gib'] / rows[1]['peak_gib']:.1f}x less memory; NLL per token "
          f"{rows[0]['nll_per_token']:.6f} vs {rows[1]['nll_per_token']:.6f}")


if __name__ == "__main__":
    main()
