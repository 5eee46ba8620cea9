"""The recurrence's in-loop W_h matmul written in different forms, each timed in a loop.

    taskset -c 0 python benchmarks/matmul_forms.py [--hidden 1024 --batch 32 --seq 64] [--repeats 9]

The mLSTM step multiplies by W_h twice: forward z = W_h^T m ([4H, H] @ [H, B], feature-major)
and backward dm = W_h dz ([H, 4H] @ [4H, B]). Each form below runs --seq times inside one
jitted ``fori_loop`` (the next operand depends on the last result, as in the recurrence), and
prints the median time of --repeats calls, its GFLOP/s and how many copies the compiled
loop has. The forms: what lmscale does (``recurrent_vjp``), the same product with the
operands swapped (batch-major), a transposed contraction of the stored matrix, and (for the
backward's K = 4H) the contraction split into 4 blocks, 2 halves, or one batched matmul.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def forms(hidden: int, steps: int) -> dict[str, tuple[Callable, str]]:
    """name -> (loop function of (matrix, start), which operands it takes)."""
    h = hidden

    def loop(body: Callable) -> Callable:
        return lambda w, x: jax.lax.fori_loop(0, steps, lambda t, a: body(w, a), x)

    def back(dm: jax.Array, layout: str = "fm") -> jax.Array:
        return jnp.tile(dm, (4, 1)) if layout == "fm" else jnp.tile(dm, (1, 4))

    blocks = lambda d: d.reshape(4, h, -1)
    return {
        # forward, z = W^T m
        "fwd  Wt @ m (lmscale)": (loop(lambda wt, m: m + 1e-3 * jnp.dot(wt, m)[:h]), "Wt,m"),
        "fwd  m^T @ W": (loop(lambda w, mt: mt + 1e-3 * jnp.dot(mt, w)[:, :h]), "W,mT"),
        "fwd  W contracted on dim 0": (loop(lambda w, m: m + 1e-3 * jax.lax.dot_general(
            w, m, (((0,), (0,)), ((), ())))[:h]), "W,m"),
        # backward, dm = W dz
        "bwd  W @ dz (lmscale)": (loop(lambda w, dz: dz + 1e-3 * back(jnp.dot(w, dz))), "W,dz"),
        "bwd  dz^T @ Wt": (loop(lambda wt, dzt: dzt + 1e-3 * back(jnp.dot(dzt, wt), "bm")),
                           "Wt,dzT"),
        "bwd  4 K-blocks": (loop(lambda w4, dz: dz + 1e-3 * back(sum(
            jnp.dot(w4[k], blocks(dz)[k]) for k in range(4)))), "W4,dz"),
        "bwd  batched K-blocks": (loop(lambda w4, dz: dz + 1e-3 * back(jax.lax.dot_general(
            w4, blocks(dz), (((2,), (1,)), ((0,), (0,)))).sum(0))), "W4,dz"),
        "bwd  2 K-halves": (loop(lambda w, dz: dz + 1e-3 * back(
            jnp.dot(w[:, :2 * h], dz[:2 * h]) + jnp.dot(w[:, 2 * h:], dz[2 * h:]))), "W,dz"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32, help="rows per device")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()
    h, b = a.hidden, a.batch
    rng = np.random.default_rng(0)
    w = rng.standard_normal((h, 4 * h), np.float32) * 0.01
    dz = rng.standard_normal((4 * h, b), np.float32)
    operands = {"W": w, "Wt": w.T.copy(), "W4": w.reshape(h, 4, h).transpose(1, 0, 2).copy(),
                "m": dz[:h], "mT": dz[:h].T.copy(), "dz": dz, "dzT": dz.T.copy()}
    flops = 2 * h * 4 * h * b * a.seq
    print(f"{jax.devices()[0].platform}, H {h}, B {b}, {a.seq} steps, {flops / 1e9:.1f} GFLOP per call")
    for name, (fn, args) in forms(h, a.seq).items():
        xs = [jnp.asarray(operands[k]) for k in args.split(",")]
        compiled = jax.jit(fn).lower(*xs).compile()
        for _ in range(2):
            jax.block_until_ready(compiled(*xs))
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*xs))
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        copies = compiled.as_text().count(" copy(")
        print(f"{name:28s} {1e3 * med:8.1f} ms {flops / med / 1e9:6.0f} GFLOP/s  copies {copies}")


if __name__ == "__main__":
    main()
