"""The recurrence's in-loop products on two CPU devices: batch rows split vs weight columns split.

    python benchmarks/column_split.py [--hidden 1024 --batch 64 --seq 64] [--rounds 5]

The mLSTM's forward multiplies by W_mh [H, H] and W_h [H, 4H] every step (feature-major, as
``recurrent_vjp`` does: m = W_mh^T h, z = W_h^T m). With the batch split over two devices
(lmscale's data parallel), each device streams both whole matrices every step for B/2 columns
of h. Split by the weights' output units instead (tensor parallel), each device streams half
of each matrix for all B columns and the halves of m and h are gathered every step (two
``all_gather``s per step). A third variant runs on one device with both threads. Each runs
``--seq`` steps in one ``lax.scan`` (a tanh stands in for the gates), timed in turns, median
of ``--repeats`` calls a round; GFLOP/s from the 2·B·H·5H FLOPs a step.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402


def variants(hidden: int, steps: int) -> dict:
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))

    def rows(h_t, w_mh_t, w_h_t):  # h_t [H, B/2] local, both matrices whole
        def body(h_t, _):
            z_t = w_h_t @ (w_mh_t @ h_t)  # [4H, B/2]
            return jnp.tanh(z_t[:hidden]), None
        return jax.lax.scan(body, h_t, None, length=steps)[0]

    def columns(h_t, w_mh_t, w_h_t):  # h_t [H, B] everywhere, rows of W^T (output units) local
        def body(h_t, _):
            m_t = jax.lax.all_gather(w_mh_t @ h_t, "d", axis=0, tiled=True)  # [H, B]
            z_t = w_h_t @ m_t                                                # [2H, B]
            return jax.lax.all_gather(jnp.tanh(z_t[:hidden // 2]), "d", axis=0, tiled=True), None
        return jax.lax.scan(body, h_t, None, length=steps)[0]

    return {
        "rows (data parallel)": jax.jit(jax.shard_map(
            rows, mesh=mesh, in_specs=(P(None, "d"), P(), P()), out_specs=P(None, "d"))),
        "columns (tensor parallel)": jax.jit(jax.shard_map(
            columns, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P(),
            check_vma=False)),
        "one device": jax.jit(rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    if jax.device_count() < 2:
        raise SystemExit("needs 2 devices: XLA_FLAGS=--xla_force_host_platform_device_count=2")
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    h_t = jax.random.normal(keys[0], (a.hidden, a.batch), jnp.float32)
    w_mh_t = jax.random.normal(keys[1], (a.hidden, a.hidden), jnp.float32) * a.hidden ** -0.5
    w_h_t = jax.random.normal(keys[2], (4 * a.hidden, a.hidden), jnp.float32) * a.hidden ** -0.5
    fns = variants(a.hidden, a.seq)
    for f in fns.values():
        f(h_t, w_mh_t, w_h_t).block_until_ready()  # compile and warm up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(a.rounds):
        for name, f in fns.items():
            for _ in range(a.repeats):
                t = time.perf_counter()
                f(h_t, w_mh_t, w_h_t).block_until_ready()
                times[name].append(time.perf_counter() - t)
    flops = 2 * a.batch * a.hidden * 5 * a.hidden * a.seq
    base = np.median(times[next(iter(fns))])
    for name, ts in times.items():
        m = float(np.median(ts))
        print(f"{name:27s} {m * 1e3:8.1f} ms  {flops / m / 1e9:6.1f} GFLOP/s  "
              f"(min {min(ts) * 1e3:.1f} ms)  {base / m:.2f}x")


if __name__ == "__main__":
    main()
