"""A/B of implementations of the recurrence (recurrent_loops.py) in one process, interleaved.

    cp lmscale/models/recurrent_loops.py /tmp/loops_new.py   # then edit it
    python benchmarks/ab_recurrence.py \
        --files lmscale/models/recurrent_loops.py,/tmp/loops_new.py \
        [--hidden 1024 --batch 64 --seq 64] [--rounds 5 --steps 3] [--compute bfloat16]
    git show 2e3f4a2:lmscale/models/recurrent_vjp.py > /tmp/rv_old.py   # an older whole layer

Compiles the quickstart training step once per file, then runs the compiled steps
round-robin, ``--steps`` each per round, and prints each one's median and fastest step and
its median process CPU time per step. On a shared machine, alternating in one process is what
makes two versions comparable. A file is either a ``recurrent_loops.py`` (the current
``recurrent_vjp`` and ``recurrent_segments`` are loaded over it) or a ``recurrent_vjp.py``
that defines ``recurrence`` (until 8ae5f8d it held the loops too; those of 6e65c65-8ae5f8d
call their own commit's recurrent_segments and cannot be loaded here). Files from before 62083a5
take the input projections precomputed (``recurrence(st, pre, w_mh, w_h, h0, c0, keep)``),
and files from before the weight norm was folded into the products take normalized matrices
(no ``s_mh, s_h``); both are wrapped to the current signature.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exec(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _over_loops(loops, name: str):
    """The current recurrent_vjp.py (and recurrent_segments.py) loaded with ``loops`` in
    place of lmscale.models.recurrent_loops."""
    import lmscale.models as package
    names = ("recurrent_loops", "recurrent_segments")
    before = {n: sys.modules[f"lmscale.models.{n}"] for n in names}
    models = os.path.join(REPO, "lmscale", "models")
    try:
        for n in names:
            module = loops if n == "recurrent_loops" else _exec(
                os.path.join(models, f"{n}.py"), f"{name}_{n}")
            sys.modules[f"lmscale.models.{n}"] = module
            setattr(package, n, module)
        return _exec(os.path.join(models, "recurrent_vjp.py"), f"{name}_vjp")
    finally:
        for n, module in before.items():
            sys.modules[f"lmscale.models.{n}"] = module
            setattr(package, n, module)


def load(path: str, name: str):
    """The recurrent_vjp module of the file at ``path`` (above), with ``recurrence`` in the
    current signature."""
    module = _exec(path, name)
    if not hasattr(module, "recurrence"):
        return _over_loops(module, name)
    params = inspect.signature(module.recurrence).parameters
    if "s_h" in params:
        return module
    import jax.numpy as jnp
    old = module.recurrence
    if "pre" in params:
        def old_x(st, x, w_x, b, w_mx, w_mh, w_h, h0, c0, keep):
            pre_x = jnp.einsum("tbi,ij->tbj", x, w_x.astype(st.dtype)) + b.astype(st.dtype)
            if st.kind == "mlstm":
                pre_m = jnp.einsum("tbi,ij->tbj", x, w_mx.astype(st.dtype))
                return old(st, (pre_x, pre_m), w_mh, w_h, h0, c0, keep)
            return old(st, (pre_x,), None, w_h, h0, c0, keep)
    else:
        old_x = old

    def recurrence(st, x, w_x, b, w_mx, w_mh, w_h, h0, c0, keep, s_mh, s_h):
        # Files from before the weight norm was folded into the products (s_mh, s_h) take the
        # normalized matrices.
        from lmscale.models.recurrent_loops import scaled
        return old_x(st, x, w_x, b, w_mx, scaled(w_mh, s_mh), scaled(w_h, s_h), h0, c0, keep)

    wrapper = type(sys)(name + "_wrapped")
    wrapper.recurrence = recurrence
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True,
                        help="Comma-separated recurrent_loops.py or recurrent_vjp.py files.")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compute", default="float32", help="precision.compute (matmul dtype)")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    import jax
    import lmscale.models.recurrent as recurrent
    from lmscale.config import config_from_file
    from lmscale.training.bench import compile_step, time_interleaved

    config = config_from_file(os.path.join(REPO, "configs", "quickstart.py"))
    with config.unlocked():
        config.model.hidden, config.train.batch_size = args.hidden, args.batch
        config.train.seq_len = args.seq
        config.precision.compute = args.compute
    runs = {}
    for i, path in enumerate(args.files.split(",")):
        recurrent.recurrent_vjp = load(path, f"_ab_recurrence_{i}")
        compiled, state, batch, _ = compile_step(config)
        for _ in range(2):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        runs[path] = {"fn": compiled, "state": state, "batch": batch}
    time_interleaved(list(runs.values()), args.rounds, args.steps)
    for path, run in runs.items():
        print(f"{path}: median {np.median(run['wall']) * 1e3:.1f} ms, fastest "
              f"{np.min(run['wall']) * 1e3:.1f} ms, CPU {np.median(run['cpu']) * 1e3:.1f} ms/step, "
              f"{args.batch * args.seq / np.median(run['wall']):.0f} chars/s")


if __name__ == "__main__":
    main()
