"""Checkpoints with orbax: the whole TrainState plus a JSON record of the run.

Saved under WORKDIR/checkpoints/<step>/ by an orbax ``CheckpointManager``; orbax writes
into a temporary folder and renames it when complete, so a crash mid-save leaves the
last good checkpoint as the latest. The JSON item ("meta") makes each checkpoint a
self-describing record: the checkpoint format version, the model signature (architecture,
tokenizer, carry shape), the precision, the resolved config and the derived values
(provenance included) of the run that wrote it. A workdir holding another model is refused
with a message naming the field instead of a shape error deep in the restore
(``model_signature.py``); an unreadable
checkpoint is one line naming its folder (and, with ``fallback``, skipped).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lmscale.atomic import absolute_path
from lmscale.messages import is_utf8

from lmscale.training.orbax_logs import (BACKGROUND_FAILURES, DiskFullLogs, disk_full,
                                         failed_write, filter_disk_full_logs, listing_quietly,
                                         short_error, tmp_cleanup_finished)
from lmscale.training.state import TrainState

# Version of what a checkpoint holds (the TrainState layout and the meta record). Raise it
# when a change makes new checkpoints unreadable by older lmscale; older formats stay readable.
# 1: signature (+ precision); 2: + format, config, derived.
FORMAT_VERSION = 2

# orbax writes a replicated array "replica-parallel": each device holding a copy writes a slice
# of it, cut by a small program compiled per array shape and device at a process's first save
# (19 programs, 1.7 s, on 2 CPU devices for the quickstart; 65 programs, 6 s, on 8). That pays
# for large arrays only (parallel device-to-host copies, writes spread over hosts); an array
# whose slice would be smaller than this is written whole from one device instead.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _type_handlers(min_slice_bytes: int) -> ocp.type_handlers.TypeHandlerRegistry:
    """orbax's standard type handlers, jax.Array's with ``min_slice_bytes`` for replica-parallel
    writes (set on a registry of our own: the global one is every orbax user's in the process)."""
    default = ocp.type_handlers.get_type_handler(jax.Array)
    arrays = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=min_slice_bytes,
        array_metadata_store=getattr(default, "_array_metadata_store", None))  # same records as orbax's
    return ocp.type_handlers.create_type_handler_registry(*[
        (ty, arrays if ty is jax.Array else ocp.type_handlers.get_type_handler(ty))
        for ty in ocp.type_handlers.supported_types()])


def failed_restore_noise(unraisable: Any) -> bool:
    """Whether an unraisable exception (``sys.unraisablehook``'s argument) is one a failed
    orbax restore leaves behind (``_drop_closed_loop_callbacks``)."""
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine's
    sibling_read = (getattr(code, "co_name", "") == "_read_array_index_and_device_put"
                    and "while reading array index" in str(error))
    # A failed save's writes, never awaited, collected as the interpreter exits.
    abandoned_write = (getattr(code, "co_name", "") == "write_fragment"
                       and isinstance(error, ImportError) and "shutting down" in str(error))
    return closed_loop or sibling_read or abandoned_write


def _drop_closed_loop_callbacks() -> None:
    """tensorstore completes the pending reads of a failed orbax restore after orbax has
    closed its event loop, and each late callback raises "Event loop is closed" as an
    unraisable exception: tens of tracebacks after the one-line "unreadable, falling back"
    warning; the restore's other reads of the damaged checkpoint, never awaited once one
    failed, raise theirs when collected (``_read_array_index_and_device_put``, each with a
    page of tensorstore spec; 60-320 lines after eval's one error line). Those alone are
    dropped; every other unraisable exception reaches the hook that was installed before
    (installed once per process)."""
    previous = sys.unraisablehook
    if getattr(previous, "lmscale_drops_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        if not failed_restore_noise(unraisable):
            previous(unraisable)

    hook.lmscale_drops_closed_loop = True
    sys.unraisablehook = hook


_drop_closed_loop_callbacks()


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names it."""


class CheckpointMismatchError(CheckpointError):
    """The workdir's checkpoint belongs to a different model or run."""


class ModelMismatchError(CheckpointMismatchError):
    """``check_same_model``'s: ``key`` is ``saved`` in the checkpoint and ``current`` in the
    config compared with it (for callers that word the way out for their own tool)."""

    def __init__(self, message: str, key: str, saved: Any, current: Any) -> None:
        super().__init__(message)
        self.key, self.saved, self.current = key, saved, current


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint folder that is corrupt, truncated or missing files."""


def _remove_emptied_steps(directory: str) -> None:
    """Removes empty step folders: a run killed while orbax deleted an old checkpoint leaves
    its folder empty, and every later start logged "Metadata file does not exist" for it."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.isdigit() and os.path.isdir(path) and not os.listdir(path):
            try:
                os.rmdir(path)
            except OSError:  # another process got there first, or it filled meanwhile
                pass


def path_encoding_problem(path: str) -> str | None:
    """Why orbax (tensorstore, which takes paths as UTF-8) cannot use the folder ``path`` in
    this process, or None. Under a locale whose file names are not UTF-8 (``LC_ALL=C`` with
    ``PYTHONUTF8=0``; an ISO-8859-1 one), a path with "é" reached tensorstore as characters
    it cannot encode (a pybind11 "Unable to cast" traceback at the first save, after the
    training steps, or "checkpoint ... is unreadable" for a reader); a folder whose name is
    not UTF-8 (bytes kept as lone surrogates) is the same under any locale."""
    if path.isascii():
        return None
    try:
        path.encode("utf-8")
        if is_utf8(sys.getfilesystemencoding()):
            return None
    except UnicodeEncodeError:  # lone surrogates: bytes that are not UTF-8
        pass
    return (f"{ascii(path)}: orbax writes and reads checkpoints by UTF-8 paths, and this "
            f"process reads paths as {sys.getfilesystemencoding()} (the locale: LC_ALL, "
            f"LC_CTYPE, LANG; or PYTHONUTF8=0), or the path is not UTF-8: run with PYTHONUTF8=1 "
            f"(or LANG=C.UTF-8), or use a folder whose path is ASCII")


class Checkpointer:
    """Saves and restores TrainStates in ``WORKDIR/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> None:
        """``read_only`` (inference, classifiers): the folder must exist (FileNotFoundError
        naming it, nothing created), and temporary folders are left alone: a reader must not
        delete the one a training run in the same workdir is writing."""
        self.workdir = absolute_path(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        problem = path_encoding_problem(self.directory)
        if problem is not None:
            raise CheckpointError(f"cannot use the checkpoints of {problem}")
        self.failed = False  # a save of this process failed (``check``)
        self._background_failures()  # a previous run's in this process (a notebook, tests)
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"{workdir} holds no checkpoint ({self.directory} does not exist)")
        if not read_only:
            filter_disk_full_logs()
            DiskFullLogs.said = False  # each run says it once
            _remove_emptied_steps(self.directory)  # every process: none lists one half-gone
        # (Not orbax's own read_only option: it logs a warning at every construction.)
        # The step's folders made in save() itself, not by a background thread that signals
        # the writers through orbax's one operation id a process: two runs saving at once in
        # one process (train() in two threads) took each other's signal, and wrote into
        # folders not yet made or removed (both runs failed, one after a 300 s wait).
        # (orbax's preservation_policy and handler_registry: its max_to_keep and item_handlers
        # are marked deprecated.)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=not read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save and not read_only,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        state_handler = ocp.PyTreeCheckpointHandler(
            type_handler_registry=_type_handlers(MIN_REPLICA_SLICE_BYTES))
        meta_handler = ocp.JsonCheckpointHandler()
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, handler, args_types in (
                ("state", state_handler, (ocp.args.PyTreeSave, ocp.args.PyTreeRestore)),
                ("meta", meta_handler, (ocp.args.JsonSave, ocp.args.JsonRestore))):
            for args in args_types:
                handlers.add(item, args, handler)
        with listing_quietly(self.directory, read_only):
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 handler_registry=handlers)
        tmp_cleanup_finished(self.manager)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Steps on disk, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, state: TrainState, meta: dict[str, Any], *, force: bool = True) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        meta = {"format": FORMAT_VERSION, **meta}
        self._previous_finished()
        try:  # saves asynchronously: waits for the previous save first, raising its failure
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=force)
        except (OSError, ValueError) as e:
            raise self._save_failed(e) from None

    def _save_failed(self, error: BaseException) -> BaseException:
        """One line for a save that failed writing (asynchronously: reported at the next save
        or wait): which checkpoint, why, and the latest complete one, still the one to resume.
        Other errors are returned as they are."""
        failed = re.search(r"checkpoints/(\d+)\.orbax-checkpoint-tmp", str(error))
        if isinstance(error, CheckpointError) or not failed_write(error):
            return error
        which = f"checkpoint {failed.group(1)}" if failed else "a checkpoint"
        why = "the disk is full" if disk_full(error) else short_error(error)
        # On disk (orbax's list can hold the failed step: with several processes, another
        # process's part may finish): a complete checkpoint's folder is its bare step.
        try:
            done = [int(n) for n in os.listdir(self.directory) if n.isdigit()
                    and not (failed and int(n) == int(failed.group(1)))]
        except OSError:
            done = []
        latest = max(done, default=None)
        then = (f"the latest complete checkpoint is {latest} (re-run to resume from it once the "
                f"cause is fixed)" if latest is not None else
                "no checkpoint is complete yet (a re-run starts afresh once the cause is fixed)")
        return CheckpointError(f"{which} could not be written in {self.directory}: {why}; {then}")

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record of a checkpoint (format checked); UnreadableCheckpointError if unreadable."""
        step = self.latest_step() if step is None else step
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(restored["meta"])
        except Exception as e:  # orbax/tensorstore raise many types for missing or damaged files
            raise self._unreadable(step, e) from None
        check_format(meta, self.path(step))
        return meta

    def restore(self, like: TrainState, shardings: TrainState, step: int | None = None) -> TrainState:
        """Restores into the structure, shapes and shardings of ``like`` (any device count)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
        except Exception as e:
            raise self._unreadable(step, e) from None
        self._check_step(restored["state"].step, step)
        return restored["state"]

    def _unreadable(self, step: int, error: Exception) -> BaseException:
        """The error of a failed read of checkpoint ``step``: the KeyboardInterrupt itself
        where orbax wrapped one (its reads catch BaseException and raise Exception from it):
        Ctrl-C while a notebook loaded a run said "checkpoint ... is unreadable", and a
        training run resuming with ``checkpoint.fallback`` moved its newest one aside."""
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, KeyboardInterrupt):
                return cause
            cause = cause.__cause__ or cause.__context__
        return UnreadableCheckpointError(
            f"checkpoint {self.path(step)} is unreadable: {short_error(error)}")

    def _check_step(self, held: jax.Array, step: int) -> None:
        """Refuses a checkpoint whose state is of another step than its folder's name: a folder
        copied or renamed into checkpoints/ (resuming from it would go back silently and rotate
        the real ones away; evaluating it would report another step's weights as this one's)."""
        held = int(jax.device_get(held))
        if held != step:
            raise UnreadableCheckpointError(
                f"checkpoint {self.path(step)} holds the state of step {held}, not {step} (a "
                f"checkpoint folder copied or renamed into {self.directory}?): move it out")

    def restore_params(self, like: Any, sharding: jax.sharding.Sharding, step: int) -> Any:
        """Only the parameters of a checkpoint (no optimizer state, no carry), for inference.

        ``like``: the parameters' structure (e.g. ``jax.eval_shape`` of the model's
        ``nnx.Param`` state); every leaf is placed with ``sharding``.
        """
        return self.restore_field("params", like, sharding, step)

    def restore_field(self, name: str, like: Any, sharding: jax.sharding.Sharding, step: int) -> Any:
        """One field of a checkpoint's TrainState (e.g. "params", "opt_state"), alone (with the
        state's step, checked against the folder's)."""
        item = {name: like, "step": jax.ShapeDtypeStruct((), jnp.int32)}
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), item)
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), item)
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                os.path.join(self.path(step), "state"),
                args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                            partial_restore=True))
        except Exception as e:
            raise self._unreadable(step, e) from None
        self._check_step(restored["step"], step)
        return restored[name]

    def newest_usable(self, use: Callable[[int], Any], fallback: bool) -> Any:
        """``use(step)`` on the newest checkpoint it succeeds on.

        An UnreadableCheckpointError is raised as is (with a hint) unless ``fallback``: then
        the previous one is tried, and once one reads, those newer than it are moved to
        WORKDIR/unreadable_checkpoints/ (nothing is deleted). Where none reads, none is moved:
        one failure for every checkpoint is more likely this environment's than the files'
        (all but the oldest were set aside before). Other errors pass through.
        """
        steps = self.steps()
        unreadable: list[int] = []
        for i, step in enumerate(steps):
            try:
                result = use(step)
            except UnreadableCheckpointError as e:
                previous = steps[i + 1] if i + 1 < len(steps) else None
                if not fallback or previous is None:
                    newer = ", and none after it reads either (left in place)" if unreadable else ""
                    hint = (f"; --config.checkpoint.fallback=true resumes from the previous one "
                            f"(step {previous})" if previous is not None else
                            f"; no checkpoint is left before it{newer}: --config.resume=false "
                            f"starts the run afresh (its files moved to archive/)")
                    raise UnreadableCheckpointError(f"{e}{hint}") from None
                print(f"warning: {e}; falling back to step {previous} (moved aside if that one "
                      f"reads)", flush=True)
                unreadable.append(step)
                continue
            for bad in unreadable:
                self.set_aside(bad)
            return result
        raise FileNotFoundError(f"{self.workdir} holds no checkpoint (looked in {self.directory})")

    def set_aside(self, step: int) -> None:
        """Moves checkpoint ``step`` to WORKDIR/unreadable_checkpoints/<step>-<time> (process 0;
        the others learn whether it could: a failed move left them at a barrier, a hang)."""
        from lmscale.distributed import process_0_does

        def move() -> None:
            target = os.path.join(self.workdir, "unreadable_checkpoints",
                                  f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.move(self.path(step), target)
            except OSError as e:
                raise self._cannot_move(step, short_error(e)) from None
        process_0_does(move, lambda: self._cannot_move(step, "see process 0"),
                       errors=(CheckpointError,))
        self.manager.reload()

    def _cannot_move(self, step: int, why: str) -> CheckpointError:
        return CheckpointError(f"cannot move the unreadable checkpoint {self.path(step)} aside "
                               f"(checkpoint.fallback): {why}")

    def check(self) -> None:
        """Raises ``save``'s one line if an asynchronous save has failed since the last look,
        without waiting for one in progress (called at every train record too). With several
        processes the error says to exit at once (``exit_at_once``): orbax's threads wait in
        barriers for this process's part, and an ordinary exit would join them."""
        mine = self._background_failures()
        if mine:
            failure = mine[0]
        else:
            try:
                self.manager.check_for_errors()
                return
            except Exception as e:  # noqa: BLE001 - with several processes, any failure
                if not isinstance(e, (OSError, ValueError)) and jax.process_count() == 1:
                    raise
                failure = e
        self.failed = True
        error = self._save_failed(failure)
        if not isinstance(error, CheckpointError):  # one the message does not know: named
            error = CheckpointError(f"a checkpoint could not be written in {self.directory}: "
                                    f"{type(failure).__name__}: {short_error(failure)}")
        if jax.process_count() > 1:
            from lmscale.distributed import leave_word
            leave_word(f"{error}")  # the others, waiting for its part, stop too
            error.exit_at_once = True  # type: ignore[attr-defined]
        raise error from None

    def _background_failures(self) -> list[BaseException]:
        """The failed background saves logged for this folder since the last look (taken)."""
        mine = [f for f in BACKGROUND_FAILURES if self.directory in f"{f[0]} {f[1]}"]
        for f in mine:  # orbax's record names the step's folder ("directory: ...")
            BACKGROUND_FAILURES.remove(f)
        return [error for _, error in mine]

    def _previous_finished(self) -> None:
        """Waits for the previous asynchronous save on every process, raising on the one whose
        part failed. orbax's own wait (in its next save) joined a thread held in a barrier for
        the failed process's part, which that process waited in too: with several processes,
        a save that failed on one host (its mount of the workdir read-only, its disk full)
        hung the run with no word until a 20-minute timeout."""
        in_progress = getattr(self.manager, "is_saving_in_progress", None)
        if jax.process_count() > 1 and in_progress is not None:
            from lmscale.distributed import word_left
            polls = 0
            while in_progress():  # this process's flag (cleared once every process is done)
                self.check()
                polls += 1
                if polls % 10 == 0 and (word := word_left()):  # a process whose part failed
                    error = CheckpointError(f"a checkpoint could not be written by another "
                                            f"process of the run ({word})")
                    error.exit_at_once = True  # type: ignore[attr-defined]
                    self.failed = True
                    raise error
                time.sleep(0.05)
        self.check()

    def wait(self) -> None:
        self._previous_finished()
        try:
            self.manager.wait_until_finished()
        except (OSError, ValueError) as e:
            raise self._save_failed(e) from None

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def abandon(self) -> None:
        """After an error: closes orbax's manager, its pending save completing or failing
        quietly (the error being raised is the one to see). Not after a save that failed on
        this process of several: the manager's close waits for the other processes' part."""
        if self.failed and jax.process_count() > 1:
            return
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - e.g. the full disk the raised error names
            pass


def check_format(meta: dict[str, Any], where: str) -> None:
    """Refuses a checkpoint written in a newer format than this lmscale reads."""
    version = int(meta.get("format", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written by a newer lmscale (checkpoint format {version}; this one reads "
            f"up to {FORMAT_VERSION}); upgrade lmscale to use it")
