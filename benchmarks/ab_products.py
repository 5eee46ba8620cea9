"""A/B of how the models' products are written (``fast_dot.dense``, ``attention``), interleaved.

    python benchmarks/ab_products.py --config=configs/transformer_quickstart.py \
        --compute bfloat16 [--variants autodiff_low,autodiff,fast_dot] [--rounds 6 --steps 3]

Compiles the real training step once per variant, with ``fast_dot.dense`` or
``attention.attention`` replaced while it is traced, then runs the compiled steps
round-robin (``lmscale.training.bench.time_interleaved``). Prints each variant's median
and fastest step and its process CPU time per step. Variants:
- ``autodiff_low``: ``matmul`` of the operands in the compute dtype with a result in that dtype,
  cast to float32, autodiff backward (the transformer's dense layers before b2aed8b);
- ``autodiff``: ``einsum`` with a float32 result, autodiff backward (the QRNN's projections
  and the output heads before b2aed8b);
- ``fast_dot``: the code as it is (``fast_dot.dense``: float32 results, its own backward,
  the forms XLA:CPU keeps on its fast path; the transformer's ``attention.attention``);
- ``xla_attention``: the transformer's attention as before the thirteenth pass
  (``jax.nn.dot_product_attention`` and autodiff of the q, k, v slices), dense layers as
  they are; ``xla_attention_split``: the same attention with ``attention.split_heads``.
Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` to split the batch over the
two cores as ``lmscale.bench`` measurements here do.
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

from lmscale.models import attention, fast_dot
from lmscale.training.bench import compile_step, time_interleaved


def _autodiff(x, w, dtype, w_transposed=False):
    spec = "...i,oi->...o" if w_transposed else "...i,io->...o"
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype),
                      preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def _autodiff_low(x, w, dtype, w_transposed=False):
    w = w.astype(dtype)
    return jnp.matmul(x.astype(dtype), w.T if w_transposed else w).astype(jnp.float32)


def _xla_attention(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None)


def _autodiff_split(qkv):
    return tuple(jnp.moveaxis(qkv, 2, 0))


# What each variant puts in place while the step is traced: (module, attribute) -> function.
ORIGINAL = {(fast_dot, "dense"): fast_dot.dense, (attention, "attention"): attention.attention,
            (attention, "split_heads"): attention.split_heads}
VARIANTS = {"autodiff_low": {(fast_dot, "dense"): _autodiff_low},
            "autodiff": {(fast_dot, "dense"): _autodiff},
            "xla_attention": {(attention, "attention"): _xla_attention,
                              (attention, "split_heads"): _autodiff_split},
            "xla_attention_split": {(attention, "attention"): _xla_attention},
            "fast_dot": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/X.py")
    parser.add_argument("--compute", default="float32", help="precision.compute")
    parser.add_argument("--variants", default="autodiff_low,autodiff,fast_dot")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("config_module", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    with config.unlocked():
        config.precision.compute = args.compute
    runs = []
    try:
        for name in args.variants.split(","):
            for (module, attr), fn in {**ORIGINAL, **VARIANTS[name]}.items():
                setattr(module, attr, fn)
            fn, state, batch, seconds = compile_step(config)
            runs.append({"name": name, "fn": fn, "state": state, "batch": batch})
            print(f"{name}: compiled in {seconds:.1f} s", flush=True)
    finally:
        for (module, attr), fn in ORIGINAL.items():
            setattr(module, attr, fn)
    time_interleaved(runs, args.rounds, args.steps)
    for run in runs:
        print(f"{run['name']}: median {1e3 * np.median(run['wall']):.1f} ms, fastest "
              f"{1e3 * min(run['wall']):.1f} ms, CPU {1e3 * np.median(run['cpu']):.1f} ms/step")


if __name__ == "__main__":
    main()
