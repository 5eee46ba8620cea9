"""The training loop: data, model, state, jitted steps, and the side effects around them.

``train(config, workdir)`` runs (or resumes) a run: it prepares the data if needed,
restores the latest checkpoint of the workdir if there is one, trains to
``train.steps``, logs to metrics.jsonl / TensorBoard / a progress bar, evaluates on the
validation split, and checkpoints every ``checkpoint.every`` steps, at the end, and on
SIGTERM/SIGINT (at a step all processes agree on: stop.py). Everything a step needs is a
pure function of the state and the step number, so a resumed run reproduces an
uninterrupted one. What a resume may change is decided in resume.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from lmscale.config import derive, save_config, validate, with_global_batch
from lmscale.config_values import AVERAGING_OPTIMIZERS
from lmscale.data.errors import DataError
from lmscale.distributed import (check_same_config, leave_word, process_0_does, process_0_says,
                                 processes_that_differ)
from lmscale.data.dataset import TokenDataset, dataset_fingerprint
from lmscale.models.registry import (carries_state, get_kind, trained_length_note,
                                     unused_settings_note)
from lmscale.training import mesh as mesh_lib
from lmscale.compiled_programs import release_near_map_limit
from lmscale.messages import check_call_arguments, draws_bar, errors_for_caller
from lmscale.training.checkpoints import Checkpointer
from lmscale.training.model_signature import check_same_model, model_signature
from lmscale.training.command_log import record_command
from lmscale.training.archive import archive_previous_run
from lmscale.training.resume import (PROVENANCE_KEYS, check_resumable, check_same_dataset,
                                     init_note, keep_config_history, provenance,
                                     refuse_classifier_run, resumed_derived, software_versions)
from lmscale.training.run_records import (already_trained, last_records, perplexity_note,
                                          show_train_record, train_record)
from lmscale.training.step_timer import StepTimer
from lmscale.training.stop import StopSignal
from lmscale.training.workdir_lock import locked_workdir
from lmscale.training.data_source import resolve_dataset, train_batcher
from lmscale.training.evaluate import (batch_arrays, eval_settings, eval_stream,
                                       evaluate_split, unscored_note, validation_due,
                                       without_validation)
from lmscale.training.in_flight import InFlight
from lmscale.training.flops import adaptive_cutoffs, train_flops_per_token
from lmscale.training.best import BestKeeper, set_aside_stale_best
from lmscale.training.diverged import DivergedError, check_loss, save_finite
from lmscale.training.metrics import MetricsWriter, add_perplexity, truncate_metrics
from lmscale.training.ntasgd import NTASGDMonitor, eval_params, switch_on
from lmscale.training.precision import SkippedRun, print_compute_hint, resumed_loss_scale
from lmscale.training.schedules import (DECAYS_TO_ZERO, batch_and_rate_note, horizon_note,
                                        warmup_note)
from lmscale.training.fits import check_step_fits_host, refuse_jax_debugging, slow_cpu_step_note
from lmscale.training.setup import build_train_setup, jit_train_step
from lmscale.training.state import host_zeros_like, run_prng_impl, zero_acc
from lmscale.training.steps import make_eval_step

__all__ = ["train", "PROVENANCE_KEYS"]


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: list[jax.Device] | None = None,
          stop: threading.Event | None = None) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns the last train and val records
    (``"train"``, ``"val"``: metrics.jsonl's records) with ``step``, ``train_programs``,
    ``stopped`` (a signal or ``stop`` stopped it at a checkpoint), ``stopped_by_signal``
    (which signal), ``stopped_by_rule`` (the asgd rule ended it) and ``already_trained``
    (nothing to do).

    Data parallel over ``devices`` (default: every device of every process). ``stop``: set
    from another thread, the run stops at its next step boundary and saves, as a SIGTERM
    does (a run in a thread other than the main one takes no signal).
    """
    check_call_arguments(workdir, config, wants_config=True)
    release_near_map_limit()
    with errors_for_caller():  # from a notebook: "config.resume = False", not the flag
        refuse_jax_debugging("training", config.precision.compute)
        mesh = mesh_lib.make_mesh(devices)
        try:
            validate(config, mesh.size)  # a bad config writes nothing
        except Exception as e:  # the others wait in check_same_config's gather: say why
            if jax.process_count() > 1:
                leave_word(str(e))
            raise
        check_same_config(config)
        with locked_workdir(workdir), contextlib.ExitStack() as on_exit:
            return _train(with_global_batch(config, mesh.size), workdir, mesh, on_exit, stop)


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: Any,
           on_exit: contextlib.ExitStack, stop_request: threading.Event | None = None
           ) -> dict[str, Any]:
    """``train``'s run, the workdir locked and the config's batch made global; ``on_exit``
    abandons the checkpointer if the run raises (a notebook keeps no orbax threads)."""
    is_main = jax.process_index() == 0
    progress = config.train.progress_bar and is_main
    interactive = progress and draws_bar(sys.stderr)  # a bar on a terminal, plain lines in logs

    saved = _checkpoint_to_resume(config, workdir)  # its meta record; None: step 0 afresh
    prng_impl = run_prng_impl(saved)  # the run's keys, whatever JAX_DEFAULT_PRNG_IMPL says now
    on_exit.enter_context(jax.default_prng_impl(prng_impl))
    dataset, fingerprint = _open_dataset(config, workdir, saved, interactive)
    batcher = train_batcher(dataset, config)
    val = dataset.split("val") if "val" in dataset.split_names else None
    no_val_note = without_validation(config, dataset.path) if val is None else None
    stream_settings = {k: v for k, v in eval_settings(config).items() if k != "max_steps"}
    if val is not None:  # a split too small to validate on fails now, not after training
        eval_stream(val, **stream_settings)
    # Opened once the data is known good: a run refused over its data leaves no checkpoints/.
    checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep)
    on_exit.push(lambda kind, *_: checkpointer.abandon() if kind else None)
    tokenizer = dataset.tokenizer
    vocab_size = tokenizer.vocab_size
    byte_lengths = tokenizer.byte_lengths()
    word_level = tokenizer.to_dict().get("kind") == "word"  # records also report perplexity

    derived = derive(config, batcher.steps_per_epoch, batcher)
    if saved is not None:
        derived = resumed_derived(derived, saved, config)
    # A resumed run restores into the state's shapes: its initial state is never computed.
    setup = build_train_setup(config, vocab_size, decay_steps=derived["decay_steps"], lr=derived["lr"],
                              byte_lengths=byte_lengths, lr_drop_steps=derived.get("lr_drop_steps", ()),
                              abstract=saved is not None, mesh=mesh, check_fits=True)
    graphdef, state = setup.graphdef, setup.state
    initial_carry = nnx.merge(graphdef, state.params).initial_carry  # reads shapes, not params
    rows_note = None if val is None else unscored_note(eval_stream(
        val, **stream_settings, carried=carries_state(initial_carry)), val)
    derived.update(dataset=os.path.abspath(dataset.path), dataset_fingerprint=fingerprint,
                   # the order its documents were prepared in: a seed, or None (input order)
                   dataset_shuffle_seed=(dataset.metadata.get("options") or {}).get("shuffle_seed"),
                   devices=mesh.size,
                   # what the data was tokenized with (a prepared dataset's own: data.* may
                   # name another, unused), and the model's vocabulary
                   tokenizer=tokenizer.to_dict(), vocab_size=vocab_size,
                   processes=jax.process_count(), params=setup.num_params,
                   train_flops_per_token=train_flops_per_token(
                       config.model, vocab_size, config.train.seq_len,
                       id_counts=_loss_id_counts(config, dataset, vocab_size)),
                   precision=str(setup.policy), prng_impl=prng_impl,
                   software=software_versions(),
                   **provenance(workdir, saved))
    train_step, shardings = jit_train_step(setup, mesh)

    signature = model_signature(config, tokenizer.to_dict(), vocab_size,
                                carries=bool(jax.tree.leaves(state.carry)))
    precision_note = None
    if saved is not None:
        like = state

        def restore(step: int) -> tuple[Any, dict[str, Any]]:
            meta = checkpointer.read_meta(step)
            check_same_model(meta["signature"], signature, workdir, step=step)
            return checkpointer.restore(like, shardings, step), meta

        state, saved = checkpointer.newest_usable(restore, config.checkpoint.fallback)
        state, precision_note = resumed_loss_scale(state, saved.get("precision"), setup.policy,
                                                   config.precision, shardings.loss_scale)
    started_from = None
    if saved is None and config.train.get("start_from"):  # awd's finetune.py: new optimizer, given weights
        state, started_from = _started_from(config, tokenizer, state, setup.tx, shardings, mesh,
                                            derived)
    start = int(jax.device_get(state.step))
    if saved is not None and ((saved.get("ntasgd") or {}).get("stop_step") is not None):
        checkpointer.close()  # ASGD's rule ended this run: a re-run trains no further
        return already_trained(workdir, start, derived["steps"], is_main, stopped_by_rule=True)
    if saved is not None and start >= derived["steps"]:
        checkpointer.close()
        decayed = config.optim.schedule in DECAYS_TO_ZERO and derived["decay_steps"] <= start
        return already_trained(workdir, start, derived["steps"], is_main,
                               decayed_at=(config.optim.schedule, derived["decay_steps"])
                               if decayed else None)
    if is_main:
        _say_start(config, workdir, derived, saved, start, mesh, interactive,
                   (no_val_note, rows_note, precision_note))
    # Process 0's own writes: agreed on before the next collective (a failure here left the
    # others in the first step's collective and process 0 in jax's shutdown barrier: a hang).
    kept = start if start > 0 or saved is not None else -1

    def write_run_files() -> None:
        tokenizer.save(workdir)  # the workdir is self-contained (e.g. a SentencePiece model)
        keep_config_history(workdir, {**config.to_dict(), "derived": derived}, start)
        save_config(config, derived, os.path.join(workdir, "config.json"))
        record_command(workdir, start, jax.process_count(), mesh.size)
        truncate_metrics(os.path.join(workdir, "metrics.jsonl"), after_step=kept)

    def others_error() -> Exception:
        from lmscale.cli import OutputError
        return OutputError(f"process 0 could not write the run's files in {workdir} "
                           f"(config.json, commands.log, metrics.jsonl); see its error")

    process_0_does(write_run_files, others_error, errors=(Exception,))
    meta = {"signature": signature, "precision": config.precision.compute,
            "config": config.to_dict(), "derived": derived}
    # NT-ASGD: the validation history and switch step travel in each checkpoint's record.
    monitor = None
    if config.optim.name in AVERAGING_OPTIMIZERS:
        monitor = NTASGDMonitor(config.optim.ntasgd_nonmono, (saved or {}).get("ntasgd"),
                                stops=config.optim.name == "asgd")
        meta["ntasgd"] = monitor.record()

    rows_sharding = mesh_lib.batch_sharded(mesh)
    replicated = mesh_lib.replicated(mesh)
    eval_step = jax.jit(make_eval_step(graphdef, byte_lengths))
    train_rows = mesh_lib.local_rows(mesh, config.train.batch_size)

    steps = derived["steps"]
    # A start at step 0 with no checkpoint keeps no earlier record: a train.start_from run
    # killed before its first checkpoint had logged its step-0 validation, which the re-run
    # logs again. A restored step-0 checkpoint (a stop as the steps began) keeps it: the
    # resume does not validate step 0 again.
    writer = MetricsWriter(workdir, resumed_from=kept)
    on_exit.push(lambda kind, *_: writer.abandon() if kind else None)
    best = BestKeeper(workdir, config.checkpoint.keep_best, checkpoints_saved=checkpointer.wait)
    last: dict[str, Any] = {}

    def run_eval(step: int) -> dict[str, Any] | None:
        if val is None:
            return None
        params = eval_params(state.params, state.opt_state) if monitor else state.params
        result = evaluate_split(eval_step, params, initial_carry, val, mesh,
                                **eval_settings(config))
        record = add_perplexity({"step": step, "split": "val", **result}, word_level)
        if monitor:
            record["averaged"] = params is not state.params  # NT-ASGD: the averaged weights
        best.offer(step, result["loss"], params, params is not state.params)
        writer.write(record)
        last["val"] = record
        if progress:
            tqdm.tqdm.write(f"step {step}: val bpc {result['bpc']:.4f}{perplexity_note(record)}",
                            file=sys.stderr)
        return record

    bar = tqdm.tqdm(total=steps, initial=start, disable=not interactive, unit="step",
                    dynamic_ncols=True, smoothing=0.1)
    on_exit.push(lambda kind, *_: bar.close() if kind else None)
    timer = StepTimer()  # the first step compiles: its seconds are not throughput
    step = start
    # float16's steps skipped in a row go on from the checkpoint's count (a new precision
    # starts its own loss scale, and its count from 0)
    same_precision = saved is not None and saved.get("precision") == config.precision.compute
    skipped_run = SkippedRun.resumed(saved, same_precision, start,
                                     int(jax.device_get(state.loss_scale.skipped)),
                                     config.train.log_every)

    def save(state: Any) -> None:
        """``save_finite`` with the skipped steps in a row, up to this step, in the record;
        the loss of the steps since the last log checked first (``check_loss``: a save between
        two logs rotated good checkpoints away with diverged, finite weights)."""
        acc = jax.device_get(state.acc)
        if float(acc["count"]) > 0:
            check_loss(checkpointer, float(acc["nats"]) / float(acc["count"]), step, vocab_size,
                       config.train.divergence_factor, skips_steps=bool(state.loss_scale.dynamic))
        if state.loss_scale.dynamic:
            meta["skipped_in_a_row"] = skipped_run.advance(
                step, int(jax.device_get(state.loss_scale.skipped)), True)
            meta["skipped_run"] = skipped_run.record()
        save_finite(checkpointer, state, meta)

    in_flight = InFlight()  # bounded async dispatch (see in_flight.py)
    window_tokens, window_steps = 0, 0  # input tokens of the timed steps since the last record
    widths = set()  # the step widths compiled: variable BPTT compiles a program per length
    rule_stopped = False
    acc_shapes = jax.eval_shape(zero_acc)  # once: a trace per train record grew JAX's cache
    if started_from is not None and val is not None:
        run_eval(0)  # the weights started from (finetune.py's stored_loss; best/ starts with them)
    with StopSignal(config.train.stop_sync_every, request=stop_request) as stop:
        while step < steps and not stop.should_stop(step) and not rule_stopped:
            batch = batch_arrays(batcher, step, train_rows, rows_sharding)
            compiles = batch["inputs"].shape[1] not in widths
            widths.add(batch["inputs"].shape[1])
            timer.before(compiles, state)
            if compiles:  # a GPU config on a CPU host: one error, not the OOM killer's "Killed"
                check_step_fits_host(train_step, (state, batch))
            state, metrics = train_step(state, batch)
            timer.after(compiles, metrics)
            in_flight.add(metrics)
            if not compiles:  # the rates' steps (variable BPTT: each its own length)
                window_tokens += batcher.tokens_in_step(step)
                window_steps += 1
            step += 1
            stop.finishing = step == steps  # what a signal's acknowledgment says
            bar.update(1)
            logging = step % config.train.log_every == 0 or step == steps
            if logging:
                if jax.process_count() == 1:  # a failed background save: now (several
                    checkpointer.check()  # processes learn it together, at the next save)
                acc, metrics, ls = jax.device_get((state.acc, metrics, state.loss_scale))
                record = train_record(step, acc, metrics, ls, batcher.epochs_done(step), timer,
                                      window_tokens / max(window_steps, 1), word_level)
                window_tokens, window_steps = 0, 0
                stuck = skipped_run.after_log(step, int(ls.skipped), float(ls.scale), ls.dynamic)
                writer.write(record)
                last["train"] = record
                show_train_record(record, steps, timer, bar, plain=progress and not interactive)
                state = state.replace(acc=jax.device_put(host_zeros_like(acc_shapes), replicated))
                timer.reset()
                if stuck:  # float16 skipping every step to the run's end, silently
                    raise DivergedError(stuck, step)
                check_loss(checkpointer, record["loss"], step, vocab_size,
                           config.train.divergence_factor, skips_steps=bool(ls.dynamic))
            scheduled = validation_due(config.train, step, batcher.epochs_done)
            evaluating = scheduled or step == steps
            if evaluating:
                if step == steps and not scheduled:  # the end's extra validation, which may be
                    save(state)  # long (a signal waits for it): the weights are saved first
                record = run_eval(step)
                if monitor and record and scheduled:  # NT-ASGD: see _after_validation
                    state, rule_stopped = _after_validation(monitor, record["loss"], step, state,
                                                            replicated, progress)
                if monitor:
                    meta["ntasgd"] = monitor.record()
            if step % config.checkpoint.every == 0 and step < steps and not rule_stopped:
                save(state)
            if evaluating or step % config.checkpoint.every == 0:
                timer.restart()
        bar.close()
        save(state)
        checkpointer.close()
    best.close()
    writer.close()
    if stop.stopping and is_main:  # without a bar too: a notebook's interrupt returns here
        # stderr, as the run's other lines: `train ... | tee log` and Ctrl-C (tee gone first)
        # met a closed stdout here, a BrokenPipeError traceback and exit 1 after the save
        print(f"stopped by {stop.cause()} at step {step}; "
              f"checkpoint saved, re-run to resume", file=sys.stderr, flush=True)
    if "val" not in last and stop.stopping:  # the run's last validation, if any (a resume's)
        last.update(last_records(workdir, step, ("val",)))
    last["step"] = step
    last["train_programs"] = getattr(train_step, "_cache_size", lambda: None)()  # compiled shapes
    last["stopped_by_signal"] = stop.signal if stop.stopping else None
    last["stopped"] = stop.stopping  # by a signal or request here or in another process
    last["stopped_by_rule"] = rule_stopped
    last["already_trained"] = False
    return last


def _after_validation(monitor: NTASGDMonitor, loss: float, step: int, state: Any,
                      replicated: Any, progress: bool) -> tuple[Any, bool]:
    """NT-ASGD's rule on a scheduled validation's ``loss`` (only those: the end of a run that
    a later one continues, train.steps raised, is not on the grid): (``state``, averaging
    switched on if the rule fired; whether the run stops here, optim.name="asgd")."""
    if not monitor.after_validation(loss, step):
        return state, False
    if monitor.stops:  # finetune.py's "Done!": the rule on the averaged losses
        if jax.process_index() == 0:  # said with or without a bar: the run ends before train.steps
            tqdm.tqdm.write(f"step {step}: ASGD stops (validation worse than the best of those "
                            f"more than {monitor.nonmono} passes ago)", file=sys.stderr)
        return state, True
    if progress:
        tqdm.tqdm.write(f"step {step}: NT-ASGD switches to averaging", file=sys.stderr)
    return state.replace(opt_state=switch_on(state.opt_state, step, replicated)), False


def _checkpoint_to_resume(config: ml_collections.ConfigDict, workdir: str
                          ) -> dict[str, Any] | None:
    """The meta record of the checkpoint this run resumes from (refused if the run changed
    in a way a resume cannot take, before its data is touched), or None: step 0 afresh
    (``config.resume`` False archives a previous run first; stale best weights set aside;
    ``train.start_from``'s run checked)."""
    refuse_classifier_run(workdir)
    if not config.resume:
        archive_previous_run(workdir)
    saved = None
    if process_0_says(os.path.isdir(os.path.join(workdir, "checkpoints"))):
        reader = Checkpointer(workdir, read_only=True)
        try:
            if reader.latest_step() is not None:  # refuse a changed run before touching its data
                saved = reader.newest_usable(reader.read_meta, config.checkpoint.fallback)
                check_resumable(saved, config, reader.directory, workdir)
        finally:
            reader.close()
    if saved is None:  # step 0 afresh
        set_aside_stale_best(workdir)
    if saved is None and config.train.get("start_from"):  # before the data is prepared
        from lmscale.training.start_from import check_start_from
        check_start_from(config)
    return saved


def _open_dataset(config: ml_collections.ConfigDict, workdir: str, saved: dict[str, Any] | None,
                  interactive: bool) -> tuple[TokenDataset, str]:
    """The run's prepared dataset (prepared now if needed) and its fingerprint, the same in
    every process and, resuming, the same the recorded steps were counted on."""
    dataset = TokenDataset.open(resolve_dataset(config.data, workdir, progress=interactive,
                                                resuming=saved is not None))
    fingerprint = dataset_fingerprint(dataset.path)
    differ = processes_that_differ(fingerprint)
    if differ:  # e.g. a relative data.train from another working directory, or node-local copies
        raise DataError(f"process(es) {differ} read another dataset than process 0 from "
                        f"data.train={config.data.train!r} (a relative path resolved in another "
                        f"working directory, or node-local copies that differ): every process of "
                        f"a run must read the same data")
    if saved is not None:  # the same data the recorded steps were counted on
        check_same_dataset(saved, dataset.path, fingerprint, workdir)
    return dataset, fingerprint


def _started_from(config: ml_collections.ConfigDict, tokenizer: Any, state: Any, tx: Any,
                  shardings: Any, mesh: Any, derived: dict[str, Any]) -> tuple[Any, dict]:
    """``train.start_from`` (awd's finetune.py): ``state`` with the given run's weights and a
    new optimizer state; what it started from, recorded in ``derived`` and said."""
    from lmscale.training.start_from import start_params
    params, started_from = start_params(config, tokenizer.to_dict(), state.params,
                                        mesh_lib.replicated(mesh))
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = state.replace(params=params, opt_state=opt_state)
    derived.update(started_from.pop("carried"))  # e.g. OpenAI's framing of each text
    derived["started_from"] = started_from
    if jax.process_index() == 0:
        print(f"note: starting from {started_from['workdir']}'s "
              f"{'best weights' if started_from['best'] else 'latest weights'} (step "
              f"{started_from['step']}; train.start_from): optimizer, step and data "
              f"position start afresh", file=sys.stderr, flush=True)
    return state, started_from


def _say_start(config: ml_collections.ConfigDict, workdir: str, derived: dict[str, Any],
               saved: dict[str, Any] | None, start: int, mesh: Any, interactive: bool,
               notes: tuple[str | None, ...]) -> None:
    """What the run is, on stderr as it begins: resuming from where, the compute hint, the
    model, and each note that applies (``notes``: the caller's, on its data and precision)."""
    if saved is not None:  # without a bar too: a notebook's re-run said nothing of it
        print(f"resuming {workdir} from its checkpoint at step {start} (of "
              f"{derived['steps']})", file=sys.stderr, flush=True)
    print_compute_hint(config.precision.compute, mesh.devices.flat[0])
    # What trains (a size of another kind, model.hidden of a transformer, was ignored unsaid)
    print(f"model: {get_kind(config.model.kind).describe(config.model)}, "
          f"{derived['params']:,} parameters, vocabulary {derived['vocab_size']:,}",
          file=sys.stderr, flush=True)
    for note in (unused_settings_note(config.model), trained_length_note(config),
                 init_note(saved, config), *notes,
                 batch_and_rate_note(config, mesh.size, derived["lr"]),
                 warmup_note(config.optim.schedule, config.optim.warmup_steps,
                             derived["steps"], derived["decay_steps"]),
                 horizon_note(config.optim, derived["steps"], derived["decay_steps"]),
                 slow_cpu_step_note(derived["train_flops_per_token"] * config.train.batch_size
                                    * config.train.seq_len * config.train.grad_accum_steps,
                                    config.train.log_every, interactive)):
        if note:
            print(note, file=sys.stderr, flush=True)


def _loss_id_counts(config: ml_collections.ConfigDict, dataset: Any, vocab_size: int
                    ) -> np.ndarray | None:
    """With adaptive cut-offs, the training split's id counts (a sample): the share of
    targets in each cluster sets the loss's FLOPs. None otherwise (not read)."""
    if not adaptive_cutoffs(config.model):
        return None
    return dataset.split("train").id_counts(vocab_size)
