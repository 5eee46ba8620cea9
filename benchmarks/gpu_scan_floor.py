"""Where the mLSTM step's time goes on a GPU: the recurrence against its GEMM floor.

    python benchmarks/gpu_scan_floor.py [--hidden 4096 --batch 256 --seq 256 --dtype bfloat16]

Times, each jitted, compiled and warmed up first, median of ``--reps`` (``block_until_ready``):

1. ``forward``: ``mlstm_scan`` (lmscale's recurrence) alone;
2. ``forward+backward``: its value and gradient (hand-written backward) w.r.t. every weight;
3. ``bare scan``: the recurrence's two products alone in a ``lax.scan`` (m = (h W_mh) * pre_m,
   h = tanh(m W_h)[:, :H]): the sequential floor XLA reaches with nothing else in the loop;
4. ``one GEMM``: the same products over all T x B rows at once, no recurrence: the rate the
   GEMMs reach when the batch dimension is not the bottleneck.

FLOPs counted: 2 * B * (H*H + H*4H) per step for the products (x3 for forward+backward,
the input projections and the softmax left out). One JSON line per measurement on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmscale.models.recurrent import mlstm_scan


def median_seconds(fn, *args, reps: int) -> float:
    """Median wall time of ``fn(*args)`` after one compile-and-run and one warm-up call."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default="", help="Comma-separated measures to run (default all): "
                   "forward, forward+backward, bare scan, one GEMM.")
    a = p.parse_args()
    H, B, T, I, dt = a.hidden, a.batch, a.seq, a.inputs, jnp.dtype(a.dtype)
    keys = iter(jax.random.split(jax.random.key(0), 16))

    def normal(shape, scale, dtype=jnp.float32):
        return (jax.random.normal(next(keys), shape) * scale).astype(dtype)

    xs = normal((T, B, I), 1.0)
    w_x, w_mx = normal((I, 4 * H), I ** -0.5), normal((I, H), I ** -0.5)
    w_mh, w_h = normal((H, H), H ** -0.5), normal((H, 4 * H), H ** -0.5)
    b = jnp.zeros((4 * H,))
    carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    probe = normal((T, B, H), 1.0, dt)
    weights = (w_x, w_mx, w_mh, w_h, b)

    def loss(ws):
        hs = mlstm_scan(xs, carry, *ws, dtype=dt, grad="custom")[0]
        return jnp.sum((hs * probe).astype(jnp.float32))

    forward = jax.jit(lambda ws: mlstm_scan(xs, carry, *ws, dtype=dt, grad="custom")[0])
    both = jax.jit(jax.value_and_grad(loss))

    pre_m = normal((T, B, H), 1.0, dt)

    @jax.jit
    def bare(w_mh, w_h):
        def step(h, pm):
            m = jnp.dot(h, w_mh, preferred_element_type=jnp.float32).astype(dt) * pm
            z = jnp.dot(m, w_h, preferred_element_type=jnp.float32)
            h = jnp.tanh(z[:, :H]).astype(dt)
            return h, h
        return jax.lax.scan(step, jnp.zeros((B, H), dt), pre_m)[1]

    rows = normal((T * B, H), 1.0, dt)

    @jax.jit
    def one_gemm(w_mh, w_h):
        m = jnp.dot(rows, w_mh, preferred_element_type=jnp.float32).astype(dt)
        return jnp.dot(m, w_h, preferred_element_type=jnp.float32).astype(dt)

    products = 2.0 * T * B * (H * H + H * 4 * H)
    w16 = (w_mh.astype(dt), w_h.astype(dt))
    measures = [("forward", forward, (weights,), products),
                ("forward+backward", both, (weights,), 3 * products),
                ("bare scan", bare, w16, products), ("one GEMM", one_gemm, w16, products)]
    only = {m.strip() for m in a.only.split(",") if m.strip()}
    if only - {m[0] for m in measures}:
        p.error(f"--only: no measure {sorted(only - {m[0] for m in measures})}; the measures are "
                f"{[m[0] for m in measures]}")
    for name, fn, args, flops in measures:
        if only and name not in only:
            continue
        s = median_seconds(fn, *args, reps=a.reps)
        print(json.dumps({"measure": name, "hidden": H, "batch": B, "seq": T, "dtype": a.dtype,
                          "device": jax.devices()[0].device_kind, "ms": round(s * 1e3, 3),
                          "tflop_per_s": round(flops / s / 1e12, 2),
                          "chars_per_s": round(T * B / s)}), flush=True)


if __name__ == "__main__":
    main()
