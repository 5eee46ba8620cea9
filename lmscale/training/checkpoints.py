"""Checkpoints with orbax: the whole TrainState plus a JSON description of the model.

Saved under WORKDIR/checkpoints/<step>/ by an orbax ``CheckpointManager``; orbax writes
into a temporary folder and renames it when complete, so a crash mid-save leaves the
last good checkpoint as the latest. The JSON item records the model config and the
tokenizer so that a workdir holding another model is refused with a clear message
instead of a shape error deep in the restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lmscale.training.state import TrainState


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoint belongs to a different model."""


class Checkpointer:
    """Saves and restores TrainStates in ``WORKDIR/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True) -> None:
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict[str, Any], *, force: bool = True) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, like: TrainState, shardings: TrainState, step: int | None = None) -> TrainState:
        """Restores into the structure, shapes and shardings of ``like`` (any device count)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_same_model(saved: dict[str, Any], current: dict[str, Any], directory: str) -> None:
    """Raises CheckpointMismatchError naming the first differing model field (the kind first)."""
    for key in sorted(set(saved) | set(current), key=lambda k: (k != "model.kind", k)):
        if saved.get(key) != current.get(key):
            raise CheckpointMismatchError(
                f"{directory} holds a checkpoint of a different model: {key} is "
                f"{saved.get(key)!r} there and {current.get(key)!r} here; use another --workdir "
                f"or the same model config")
