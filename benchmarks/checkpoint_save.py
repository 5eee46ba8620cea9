"""Checkpoint save time: a config's initial TrainState saved N times in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python benchmarks/checkpoint_save.py --config=configs/quickstart.py [--saves 2]

The state of ``build_train_setup`` (what ``lmscale.train`` saves: parameters, Adam moments,
carry, counters), put on a mesh of all devices with the training shardings, then saved by
``Checkpointer(async_save=False)`` ``--saves`` times (steps 0, 1, ...) into a temporary folder.
Per save: wall seconds (to the files committed) and the XLA programs compiled during it, with
their compile time (JAX's backend-compile event). The first save of a process is the one a
user waits for at the first checkpoint; later ones reuse what it compiled. Run without a
compilation cache (none is set here) to see what a fresh process pays. Appends JSON lines to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.monitoring
from absl import app, flags
from ml_collections import config_flags

from lmscale.config import with_global_batch
from lmscale.training import mesh as mesh_lib
from lmscale.training.bench import append_jsonl, git_commit, host_info
from lmscale.training import checkpoints
from lmscale.training.checkpoints import Checkpointer
from lmscale.training.setup import build_train_setup

HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.", lock_config=True)
_SAVES = flags.DEFINE_integer("saves", 2, "Saves in the process.", lower_bound=1)
_OUT = flags.DEFINE_string("out", os.path.join(HERE, "results.jsonl"), "JSON lines appended here.")
flags.mark_flags_as_required(["config"])
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def main(argv: list[str]) -> None:
    del argv
    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, seconds, **_: compiles.append(seconds) if name == _COMPILE_EVENT else None)
    config = with_global_batch(_CONFIG.value, jax.device_count())
    mesh = mesh_lib.make_mesh()
    state = build_train_setup(config, 257, decay_steps=10, lr=1e-3, mesh=mesh).state
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    commit, host = git_commit(), host_info()
    with tempfile.TemporaryDirectory() as folder:
        checkpointer = Checkpointer(folder, async_save=False)
        for save in range(_SAVES.value):
            step_state = state.replace(step=jax.device_put(save, state.step.sharding))
            before = len(compiles)
            start = time.perf_counter()
            checkpointer.save(step_state, {"benchmark": True})
            seconds = time.perf_counter() - start
            new = compiles[before:]
            record = {"benchmark": "checkpoint_save", "model": config.model.kind,
                      "hidden": config.model.get("hidden"), "state_bytes": state_bytes,
                      "save": save, "seconds": seconds, "programs_compiled": len(new),
                      "compile_seconds": sum(new), "min_replica_slice_bytes": getattr(checkpoints, "MIN_REPLICA_SLICE_BYTES", None),
                      "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"), **host}
            print(f"save {save}: {seconds:.2f} s, {len(new)} programs compiled in {sum(new):.2f} s "
                  f"({state_bytes / 2**20:.1f} MiB state, {jax.device_count()} devices)")
            append_jsonl(record, _OUT.value)
        checkpointer.close()


if __name__ == "__main__":
    app.run(main)
