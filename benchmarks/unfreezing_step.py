"""A transformer's fine-tuning step under gradual unfreezing: step time with the top k blocks
trained (``layer_rates.trains_top``), against the whole LM trained.

    python benchmarks/unfreezing_step.py [--layers 4 --d_model 256 --rows 16 --width 128]

Builds a random classifier around a transformer LM (no data needed), jits the real fine-tuning
step (``make_finetune_step``, Adam, aux LM loss) once per number of trained blocks, and prints
the median of ``--steps`` timed steps (after 2 warm-up steps) and the compiled step's FLOPs
(XLA's cost analysis). The lowest frozen blocks run forward only (scanned apart from the
trained ones); before that, one scan over every block ran their backward pass too, for zeros.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmscale.config import default_config
from lmscale.finetuning import layer_rates
from lmscale.finetuning.data import make_batch
from lmscale.finetuning.head import init_classifier
from lmscale.finetuning.loop import init_finetune_state
from lmscale.finetuning.steps import BATCH_KEYS, make_finetune_step
from lmscale.training import mesh as mesh_lib
from lmscale.training.bench import git_commit
from lmscale.training.optimizer import make_finetune_optimizer
from lmscale.training.precision import Policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    config = default_config()
    m = config.model
    m.kind, m.layers, m.d_model, m.heads = "transformer", args.layers, args.d_model, 4
    m.d_ff, m.max_len = 4 * args.d_model, args.width
    graphdef, params, _ = init_classifier(config, 257, 2, jnp.float32)
    mesh = mesh_lib.make_mesh()
    rng = np.random.default_rng(0)
    texts = [rng.integers(1, 257, args.width).astype(np.int32) for _ in range(args.rows)]
    batch = make_batch(texts, np.arange(args.rows) % 2, args.rows, pad=0, bucket=32,
                       max_len=args.width, row_weights=np.ones(args.rows, np.float32))
    inputs = {k: batch[k] for k in BATCH_KEYS}
    starts = layer_rates.unfreeze_starts(1, 0, args.layers)
    tx, _ = make_finetune_optimizer(config.optim, 100, lr=1e-4, head_lr=1e-3, freeze_steps=0,
                                    groups=layer_rates.optimizer_groups(starts, 1.0, args.layers))
    for trained in range(1, args.layers + 2):
        trains = layer_rates.trains_top(trained, args.layers)
        step = jax.jit(make_finetune_step(graphdef, tx, mesh, multilabel=False, class_weights=None,
                                          aux_weight=0.1, train_lm=True, dropout=False,
                                          trains=trains), donate_argnums=0)
        state = init_finetune_state(config, Policy.from_compute("float32"), tx, params, mesh)
        flops = step.lower(state, inputs).compile().cost_analysis()["flops"]
        times = []
        for i in range(args.steps + 2):
            start = time.perf_counter()
            state, metrics = step(state, inputs)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        blocks = min(trained, args.layers)
        print(json.dumps({"bench": "unfreezing_step", "layers": args.layers,
                          "d_model": args.d_model, "rows": args.rows, "width": args.width,
                          "trained_blocks": blocks, "embeddings": trained > args.layers,
                          "step_ms": round(1e3 * float(np.median(times[2:])), 1),
                          "gflops": round(flops / 1e9, 2), "commit": git_commit()}), flush=True)


if __name__ == "__main__":
    main()
