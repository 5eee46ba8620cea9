"""Training-step throughput (chars/s) and FLOP utilization on this machine.

    python benchmarks/throughput.py                      # the quickstart model and 1024-d
    python benchmarks/throughput.py --hidden=4096 --batch=32 --seq=256 --steps=3

FLOPs: analytical matmul FLOPs of the model (``lmscale.models.flops_per_token``; the
training step counts 3x the forward: forward, and backward for inputs and weights),
cross-checked against XLA's own cost analysis of the compiled step. Utilization is the
achieved FLOP/s divided by a measured dense float32 matmul rate on the same devices.
Results are printed as JSON lines and appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model, count_params, flops_per_token
from lmscale.training import mesh as mesh_lib
from lmscale.training.optimizer import make_optimizer
from lmscale.training.state import create_state
from lmscale.training.steps import make_train_step

VOCAB = 257


def matmul_rate(n: int = 2048, repeats: int = 20) -> float:
    """Measured FLOP/s of a float32 n x n matmul (the machine's practical peak)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / repeats)
    return 2 * n**3 / best


def step_throughput(model_cfg: ml_collections.ConfigDict, batch: int, seq: int, steps: int
                    ) -> dict:
    optim = default_config().optim
    model = build_model(model_cfg, VOCAB, rngs=nnx.Rngs(0))
    params = count_params(model)
    tx, schedule = make_optimizer(optim, 1000)
    graphdef, state = create_state(model, tx, batch, seed=0)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    step_fn = jax.jit(make_train_step(graphdef, tx, schedule, mesh, dropout=False), donate_argnums=0)
    rng = np.random.default_rng(0)
    data = {"inputs": jnp.asarray(rng.integers(1, VOCAB, (batch, seq)), jnp.int32),
            "targets": jnp.asarray(rng.integers(1, VOCAB, (batch, seq)), jnp.int32),
            "weights": jnp.ones((batch, seq), jnp.float32),
            "resets": jnp.zeros((batch, seq), bool)}
    t = time.perf_counter()
    compiled = step_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    flops_step = 3 * flops_per_token(model_cfg, VOCAB) * batch * seq
    return {"kind": model_cfg.kind, "hidden": model_cfg.hidden, "embed": model_cfg.embed,
            "layers": model_cfg.layers, "params": params, "batch": batch, "seq": seq,
            "compile_s": round(compile_s, 2), "step_s": step_s, "chars_per_s": batch * seq / step_s,
            "flops_per_step": flops_step, "xla_flops_per_step": xla_flops,
            "flop_per_s": flops_step / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="*", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--kind", default="mlstm")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.jsonl"))
    args = p.parse_args()
    if args.hidden is None:  # the two reference points of the README table
        cases = [(256, 32, 128), (1024, 64, 256)]
    else:
        cases = [(h, args.batch or 64, args.seq or 256) for h in args.hidden]
    from lmscale.training.bench import git_commit, host_info
    peak = matmul_rate()
    host = {**host_info(), "matmul_flop_per_s": peak}
    commit = git_commit()  # "+dirty" if the library's code changed
    print(json.dumps({"host": host, "commit": commit}))
    for hidden, batch, seq in cases:
        cfg = default_config().model
        cfg.kind, cfg.hidden, cfg.embed = args.kind, hidden, 64
        result = step_throughput(cfg, batch, seq, args.steps)
        result["utilization"] = result["flop_per_s"] / peak
        result.update(host=host, date=time.strftime("%Y-%m-%d"), commit=commit)
        print(json.dumps(result))
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
