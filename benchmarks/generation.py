"""Generation speed: ms per token of ``lmscale.generation.generate``, and the memory rate.

    python benchmarks/generation.py --config=configs/mlstm4096.py [--samples 1,8] \
        [--compute float32,bfloat16] [--length 200] [--repeats 3]

Random weights of the config's model (speed does not depend on them), the byte tokenizer,
the prompt "The movie was" (13 tokens). After a warm-up call (compilation excluded), the
fastest of ``--repeats`` calls of ``generate`` — what a user runs: the prompt fed token by
token, then ``length`` sampled tokens, in one jitted program; the decoder's prepared
weights are made in the first call and kept for the others (``prepared_weights``). Reports ms per token (prompt
and new), tokens/s over all samples, and the weights read per token over that time: with
few samples a decoder step is a matrix-vector product per weight, bound by memory (2 FLOPs
per weight and sample), so that rate against the machine's measured read rate (a sum over
1 GiB of float32) is the step's utilization. Also the first call's time, and the compile
time ≈ first call - fastest call. Appends JSON lines to benchmarks/results.jsonl.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.generation import generate
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.bench import append_jsonl, git_commit, host_info
from lmscale.training.restore import TrainedLM

HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config.", lock_config=True)
_SAMPLES = flags.DEFINE_list("samples", ["1", "8"], "Samples generated at once (batch).")
_COMPUTE = flags.DEFINE_list("compute", ["float32"], "Compute dtypes.")
_LENGTH = flags.DEFINE_integer("length", 200, "New tokens per sample.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (the fastest counts).", lower_bound=1)
_OUT = flags.DEFINE_string("out", os.path.join(HERE, "results.jsonl"), "JSON lines appended here.")
flags.mark_flags_as_required(["config"])
PROMPT = "The movie was"


def read_rate(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes read per second by a sum over ``gib`` GiB of float32 (the fastest call)."""
    x = jnp.ones((int(gib * 2 ** 28),), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    return x.nbytes / min(_timed(lambda: total(x).block_until_ready()) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(config, samples: int, compute: str, length: int, repeats: int) -> dict:
    """One configuration's record (see the module docstring)."""
    tok = ByteTokenizer.sentiment_discovery()
    model = build_model(config.model, tok.vocab_size, rngs=nnx.Rngs(0), dtype=jnp.dtype(compute))
    graphdef, params = nnx.split(model, nnx.Param)
    lm = TrainedLM(config=config, derived={}, tokenizer=tok, graphdef=graphdef, params=params,
                   step=0, mesh=mesh_lib.make_mesh(), workdir="")
    run = lambda seed: generate(lm, PROMPT, length, samples=samples, seed=seed)
    first = _timed(lambda: run(0))  # compiles
    seconds = min(_timed(lambda: run(r)) for r in range(repeats))
    tokens = len(tok.encode(PROMPT)) + length
    weight_bytes = sum(int(np.prod(p.shape)) * jnp.dtype(compute).itemsize
                       for p in jax.tree.leaves(params))
    return {"benchmark": "generation", "kind": config.model.kind, "compute": compute,
            "samples": samples, "tokens": tokens, "seconds": seconds, "first_call_seconds": first,
            "compile_seconds": first - seconds,
            "ms_per_token": 1e3 * seconds / tokens, "tokens_per_s": samples * tokens / seconds,
            "weight_bytes": weight_bytes, "weight_bytes_per_s": weight_bytes * tokens / seconds}


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    rate = read_rate()
    commit, host = git_commit(), host_info()
    print(f"read rate {rate / 1e9:.1f} GB/s; commit {commit}")
    for compute in _COMPUTE.value:
        for samples in (int(s) for s in _SAMPLES.value):
            record = measure(config, samples, compute, _LENGTH.value, _REPEATS.value)
            record.update(read_bytes_per_s=rate, of_read_rate=record["weight_bytes_per_s"] / rate,
                          commit=commit, date=time.strftime("%Y-%m-%d %H:%M"), **host)
            print(f"{config.model.kind} {compute} x{samples}: {record['ms_per_token']:.2f} ms/token, "
                  f"{record['tokens_per_s']:.0f} tokens/s, weights {record['weight_bytes'] / 2**20:.0f} "
                  f"MiB read at {record['weight_bytes_per_s'] / 1e9:.1f} GB/s "
                  f"({100 * record['of_read_rate']:.0f} % of the read rate); first call "
                  f"{record['first_call_seconds']:.1f} s (compile ≈ {record['compile_seconds']:.1f} s)")
            append_jsonl(record, _OUT.value)


if __name__ == "__main__":
    app.run(main)
