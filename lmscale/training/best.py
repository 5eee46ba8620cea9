"""The best weights of a run: those that scored the lowest validation loss so far.

With ``checkpoint.keep_best`` the loop offers the weights it validated (NT-ASGD: the
averaged ones) after every validation pass; a new lowest loss saves them, parameters only, in
``WORKDIR/best/<step>/`` (an orbax CheckpointManager: written to a temporary folder and
renamed, so a crash leaves the previous best) and records ``WORKDIR/best.json`` (``step``,
``loss``, ``averaged``). The previous best is deleted only once best.json names the new one:
a run stopped at any moment leaves best.json naming weights that are on disk (the folder a
stop left behind besides them is removed at the next start). awd-lstm-lm keeps the same model (``model_save`` on a new
best validation loss) and scores the test set with it; here ``lmscale.eval --best`` does.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from lmscale.atomic import absolute_path, write_json
from lmscale.training.checkpoints import CheckpointError
from lmscale.training.orbax_logs import (disk_full, failed_write, short_error,
                                         tmp_cleanup_finished)

BEST_DIR = "best"
BEST_JSON = "best.json"


def read_best(workdir: str) -> dict[str, Any] | None:
    """``best.json`` of a run (None if it kept no best weights)."""
    path = os.path.join(workdir, BEST_JSON)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        int(record["step"]), float(record["loss"])
    except (ValueError, KeyError, TypeError) as e:  # torn or hand-edited: one line, not a traceback
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); it names the best "
                              f"weights in {os.path.join(workdir, BEST_DIR)} and their validation "
                              f"loss: restore it") from None
    return record


def _record_from_metrics(workdir: str, step: int) -> dict[str, Any] | None:
    """What best.json said, worked out again where it is gone or damaged but ``best/`` holds
    the weights of ``step``: its validation loss in metrics.jsonl; None if not logged."""
    from lmscale.training.metrics import read_metrics
    try:
        vals = [r for r in read_metrics(workdir)
                if r.get("split") == "val" and r.get("step") == step]
    except (OSError, ValueError):
        vals = []
    return ({"step": step, "loss": float(vals[-1]["loss"]),
             "averaged": bool(vals[-1].get("averaged", False))} if vals else None)


def set_aside_stale_best(workdir: str) -> None:
    """A run (or fine-tune) that starts at step 0 with no checkpoint to resume keeps no best
    weights of before: those of an attempt killed before its first checkpoint (its metrics
    are dropped; maybe another model's) move to WORKDIR/archive/<time>/. They stayed the new
    run's best: it never kept its own, and ``eval --best`` read the other weights."""
    from lmscale.training.archive import archive_previous_run
    archive_previous_run(workdir, (BEST_DIR, BEST_JSON, BEST_JSON + ".damaged"),
                         said="no checkpoint to resume: the best weights kept before it moved to")


class BestKeeper:
    """Saves the parameters offered with a lower validation loss than any before."""

    def __init__(self, workdir: str, enabled: bool,
                 checkpoints_saved: Callable[[], None] | None = None) -> None:
        """``checkpoints_saved``: waits for the run's own checkpointer's pending save
        (``Checkpointer.wait``), called before the best weights are saved, with several
        processes (the start-up's deletes come before any save):
        orbax finishes an async save in a background thread with barriers whose names do not
        name the manager, and the same barrier entered twice at once by one process fails
        ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing": a
        two-process keep_best run's checkpoint save at step 2, the best weights' at 4)."""
        self.workdir, self.enabled = absolute_path(workdir), bool(enabled)
        self._wait = checkpoints_saved if jax.process_count() > 1 else None
        self.manager = None
        damaged = None
        try:
            record = read_best(workdir) if enabled else None
        except ValueError as e:  # CheckpointError: best.json torn or hand-edited
            record, damaged = None, e
        self.loss = float(record["loss"]) if record else math.inf
        if enabled:
            # Every step kept (orbax's default): ``offer`` deletes the old one itself, after
            # best.json names the new (orbax's max_to_keep=1 deleted it before).
            # A save cut short (a kill) is removed, as checkpoints/' are (Checkpointer).
            options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False,
                                                   cleanup_tmp_directories=True)
            self.manager = ocp.CheckpointManager(os.path.join(self.workdir, BEST_DIR),
                                                 options=options)
            tmp_cleanup_finished(self.manager)
            kept = sorted(self.manager.all_steps())
            # best.json gone or damaged, the weights still here: never replaced unseen by
            # worse. Decided together, before process 0 writes it again (a process reading it
            # later would take the other path, and _recovered's agreement would hang).
            from lmscale.distributed import process_0_says
            if process_0_says(record is None and bool(kept)):
                record = self._recovered(kept, damaged)
            if record and int(record["step"]) in kept:
                # What a stop after saving left. Every process lists the steps before any
                # deletes (orbax deletes on process 0, then waits for the others' delete).
                if jax.process_count() > 1:
                    from jax.experimental import multihost_utils
                    multihost_utils.sync_global_devices("lmscale: best steps listed")
                self._keep_only(int(record["step"]))
            elif record:  # an older lmscale stopped mid-offer: the next validation records anew
                self.loss = math.inf

    def _recovered(self, kept: list[int], damaged: Exception | None) -> dict[str, Any] | None:
        """best.json rebuilt from metrics.jsonl's validation record of the newest kept step
        (written again, a damaged one kept as ``best.json.damaged``), said; None where that
        step's validation was never logged (a stop between saving the weights and logging):
        the next validation replaces them, as before best.json was written."""
        path = os.path.join(self.workdir, BEST_JSON)
        record = _record_from_metrics(self.workdir, kept[-1])  # the newest kept
        if jax.process_index() == 0:
            was = "damaged" if damaged else "missing"
            if record is None:
                print(f"note: {path} is {was}, and metrics.jsonl holds no validation of the "
                      f"best weights kept (step {kept[-1]}): the next validation replaces them",
                      file=sys.stderr)
            else:
                print(f"note: {path} was {was}; the best weights kept (step {record['step']}, "
                      f"validation loss {record['loss']:.4f} in metrics.jsonl) stay the best "
                      f"until a lower one; {BEST_JSON} written again", file=sys.stderr)

        def write_again() -> None:  # e.g. the full disk that tore it: said on every process
            if damaged:  # the hand-edited/torn file kept beside, not lost
                os.replace(path, path + ".damaged")
            if record is not None:
                write_json(path, record)
        from lmscale.distributed import process_0_does
        process_0_does(write_again, lambda: CheckpointError(
            f"process 0 could not write {path} again (or keep the damaged one aside); see its "
            f"error"))
        if record is not None:
            self.loss = float(record["loss"])
        return record

    def offer(self, step: int, loss: float, params: Any, averaged: bool) -> bool:
        """Keeps ``params`` if ``loss`` is the lowest yet; True when it did. In this order, so
        that a stop between any two leaves best.json naming weights on disk: save
        ``best/<step>``, write best.json, delete the previous best."""
        if not self.enabled or not loss < self.loss:
            return False
        if self._wait is not None:
            self._wait()
        if step not in self.manager.all_steps():
            try:
                self.manager.save(step, force=True, args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params)))
                self.manager.wait_until_finished()
            except (OSError, ValueError) as e:  # tensorstore: ValueError("RESOURCE_EXHAUSTED: ...")
                if not failed_write(e):
                    raise  # not a write that failed (weights orbax cannot save): as it is
                raise self._save_failed(step, e) from None
        self.loss = float(loss)
        if jax.process_index() == 0:
            write_json(os.path.join(self.workdir, BEST_JSON),
                       {"step": int(step), "loss": float(loss), "averaged": bool(averaged)})
        self._keep_only(int(step))
        return True

    def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
        """One line for best weights that could not be written (a full disk: was a page of
        tensorstore traceback): the previous best, named by best.json, stays."""
        why = "the disk is full" if disk_full(error) else short_error(error)
        kept = (f"the previous best weights (step {read_best(self.workdir)['step']}) stay"
                if os.path.exists(os.path.join(self.workdir, BEST_JSON))
                else "no best weights are kept yet")
        return CheckpointError(f"the best weights of step {step} could not be written in "
                               f"{os.path.join(self.workdir, BEST_DIR)}: {why}; {kept} (free "
                               f"some space and re-run to resume from the latest checkpoint)")

    def _keep_only(self, step: int) -> None:
        """Deletes the best weights of every step but ``step`` (called by every process; orbax
        deletes on process 0, which has written best.json before)."""
        for old in sorted(self.manager.all_steps()):
            if old != step:
                self.manager.delete(old)

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()


def restore_best_params(workdir: str, like: Any, sharding: jax.sharding.Sharding) -> tuple[Any, int]:
    """The parameters in ``WORKDIR/best/`` and their step; FileNotFoundError if none. A run
    validating in the workdir may replace them while they are read (``offer``: the new
    saved, best.json rewritten, the old deleted): read again at the step best.json names
    then (``eval --best`` said "Checkpoint directory does not exist", a traceback)."""
    for attempt in range(3):
        record = read_best(workdir)
        if record is None:
            raise FileNotFoundError(f"{workdir} kept no best weights ({BEST_JSON} is missing; "
                                    f"train with --config.checkpoint.keep_best=true)")
        step = int(record["step"])
        folder = os.path.join(absolute_path(workdir), BEST_DIR)
        if not os.path.isdir(os.path.join(folder, str(step))):
            if attempt < 2 and _replaced(workdir, step):
                continue
            # an older lmscale stopped mid-offer
            held = (sorted(int(n) for n in os.listdir(folder) if n.isdigit())
                    if os.path.isdir(folder) else [])
            raise FileNotFoundError(
                f"{os.path.join(workdir, BEST_JSON)} names the weights of step {step}, which "
                f"{folder} does not hold (it holds {held or 'none'}: the run stopped while "
                f"replacing its best weights); read a checkpoint instead (without --best): a "
                f"training run that goes on in {workdir} records its next validated weights "
                f"as the best")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                os.path.join(folder, str(step), "params"),  # orbax: absolute
                args=ocp.args.PyTreeRestore(item=abstract,
                                            restore_args=jax.tree.map(
                                                lambda _: ocp.ArrayRestoreArgs(sharding=sharding),
                                                like)))
        except (OSError, ValueError):  # orbax: "Checkpoint directory does not exist", ...
            if attempt < 2 and _replaced(workdir, step):
                continue
            raise
        return restored, step
    raise AssertionError("unreachable")


def _replaced(workdir: str, step: int) -> bool:
    """Whether best.json names other weights than ``step`` now (a run replaced them)."""
    try:
        record = read_best(workdir)
    except CheckpointError:
        return False
    return record is not None and int(record["step"]) != step
