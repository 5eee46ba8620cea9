"""Fine-tuning a trained LM into a text classifier: ``finetune(config, workdir)``.

Built from the LM trainer's pieces: the TrainState (its carry empty: every text starts from
zeros), orbax Checkpointer (every ``checkpoint.every`` steps, at the end and on SIGTERM/SIGINT
via StopSignal; exact resume), MetricsWriter (metrics.jsonl + TensorBoard), precision policy
and loss scale, mesh and the shard_map step with one all-reduce (finetuning/steps.py).

Only the LM's parameters come from ``config.init_from`` (its model config, tokenizer and
preprocessing too); the head starts fresh. Validation every ``train.eval_every`` steps (or
``train.eval_every_epochs``); the best state by ``finetune.best_metric`` is kept in
WORKDIR/best/ and named in best.json. At the end the best parameters predict the validation
texts; multi-label thresholds are tuned there (thresholds.json) and used for every later
prediction; results.json holds the metrics (finetuning/results.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Collection

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from lmscale.atomic import absolute_path
from lmscale.config import (ConfigError, check_known_fields, horizon, load_config, save_config,
                            scaled_lr, validate_run_settings, with_global_batch)
from lmscale.finetuning.data import (BATCH_ORDER, Encoded, TrainBatches, check_enough_texts,
                                     class_weights_from, encode, load_splits, pos_weights_from)
from lmscale.finetuning import layer_rates
from lmscale.finetuning.best import keep_best, recorded_best
from lmscale.training.best import set_aside_stale_best
from lmscale.finetuning.head import init_classifier
from lmscale.finetuning.predict import Predictor, put_batch
from lmscale.finetuning.results import final_results
from lmscale.finetuning.truncated import fits_advice, fits_what, long_text_note
from lmscale.finetuning.settings import (as_applied, check_lm_settings, check_model_from_lm,
                                        check_not_a_language_model_run, check_same_start,
                                        check_task_settings, check_used_in_fine_tuning,
                                        lm_dropout_note, optim_as_begun, resumed_otherwise)
from lmscale.finetuning.steps import BATCH_KEYS, make_finetune_step, zero_acc
from lmscale.models import built_in_one_program
from lmscale.pretrained.preprocess import preprocessor_for
from lmscale.training import mesh as mesh_lib
from lmscale.training.checkpoints import Checkpointer
from lmscale.training.model_signature import check_same_model
from lmscale.training.diverged import DivergedError, check_finite, save_finite
from lmscale.training.evaluate import validation_due
from lmscale.training.fits import check_step_fits_host, refuse_jax_debugging
from lmscale.training.metrics import MetricsWriter, truncate_metrics
from lmscale.training.optimizer import finetune_applied_lrs, make_finetune_optimizer
from lmscale.training.in_flight import InFlight
from lmscale.training.precision import (LossScale, Policy, SkippedRun, print_compute_hint,
                                        resumed_loss_scale)
from lmscale.training.restore import TrainedLM, load_trained, weights_fingerprint
from lmscale.training.run_paths import best_folder
from lmscale.training.schedules import batch_and_rate_note, finetune_warmup_notes
from lmscale.compiled_programs import release_near_map_limit
from lmscale.messages import check_call_arguments, errors_for_caller
from lmscale.training.command_log import record_command
from lmscale.training.archive import archive_previous_run
from lmscale.training.resume import (RUN_FILES, check_same_optimizer, keep_config_history,
                                     resumed_derived, software_versions)
from lmscale.training.state import (TrainState, host_zeros_like, initial_state, placed_on,
                                    run_prng_impl, state_shardings)
from lmscale.training.step_timer import StepTimer
from lmscale.training.stop import StopSignal
from lmscale.training.workdir_lock import locked_workdir
from lmscale.transfer.labeled import Labeled, constant_labels
from lmscale.transfer.metrics import METRICS, better, classification_metrics, tune_thresholds

HEAD_FIELDS = ("multilabel", "state", "pooling", "head_hidden", "head_activation")
LM_INITS = ("pretrained", "random")


# The settings a diverged fine-tune names (``DivergedError``).
LOWER = "optim.lr, finetune.head_lr or optim.clip"


def load_lm(path: str) -> TrainedLM:
    """The LM of ``init_from``; a one-line error unless it is an lmscale LM workdir."""
    if not path:
        raise ConfigError("init_from is empty: give --config.init_from=LM_WORKDIR (a trained LM run)")
    config_path = os.path.join(best_folder(path)[0], "config.json")  # RUN/best: RUN's best weights
    if not os.path.exists(config_path):
        raise ConfigError(f"init_from={path} is not an lmscale LM workdir: no config.json there")
    if load_config(config_path)[0].init_from:
        raise ConfigError(f"init_from={path} is a fine-tuned classifier run, not a language model")
    return load_trained(path)


def resolve_config(config: ml_collections.ConfigDict, lm: TrainedLM) -> ml_collections.ConfigDict:
    """The run's config with the LM's model section: its architecture, and the dropouts it was
    trained with (recorded; training steps apply them times ``finetune.lm_dropout``)."""
    record = config.to_dict()
    record["model"] = lm.config.model.to_dict()
    out = ml_collections.ConfigDict(record)
    out.lock()
    return out


# A fine-tune's files: moved to WORKDIR/archive/<time>/ by --config.resume=false.
FINETUNE_RUN_FILES = RUN_FILES + ("results.json", "thresholds.json", "val_predictions.csv")


def init_finetune_state(config: ml_collections.ConfigDict, policy: Policy,
                        tx: optax.GradientTransformation, params: Any, mesh: Mesh | None = None,
                        *, abstract: bool = False) -> TrainState:
    """A fine-tune's initial state around ``params`` (step 0, ``tx``'s optimizer state, the
    precision's loss scale, no carry), built by one jitted program: eagerly, each zero-fill and
    the key were programs of their own, compiled again by every process.

    ``mesh``: computed placed as the step takes it (``state_shardings``); ``abstract``: shapes
    only, what a resumed run restores into."""
    def initial_finetune_state(params: Any) -> tuple[None, TrainState]:
        return None, initial_state(params, tx, carry=(), seed=config.seed, acc=zero_acc(),
                                   loss_scale=LossScale.for_precision(policy, config.precision))

    _, state = built_in_one_program(initial_finetune_state, params, abstract=abstract,
                                    shardings=placed_on(mesh))
    return state


def finetune(config: ml_collections.ConfigDict, workdir: str,
             devices: list[jax.Device] | None = None, given: Collection[str] = (),
             stop: threading.Event | None = None) -> dict[str, Any]:
    """Fine-tunes (or resumes) the classifier in ``workdir``; returns the results dict.
    ``given``: the fields the caller set (the CLI's ``--config.*`` flags), checked even at
    their default (a ``model.*`` one against the LM's; one fine-tuning does not use refused).
    ``stop``: set from another thread, the run stops at its next step boundary and saves
    (``stopped``), as a SIGTERM does."""
    check_call_arguments(workdir, config, wants_config=True)
    release_near_map_limit()
    with errors_for_caller():  # from a notebook: "config.resume = False", not the flag
        return _checked_finetune(config, workdir, devices, given, stop)


def _checked_finetune(config: ml_collections.ConfigDict, workdir: str,
                      devices: list[jax.Device] | None, given: Collection[str],
                      stop: threading.Event | None = None) -> dict[str, Any]:
    """``finetune`` with its settings, data and LM checked before the workdir is touched."""
    refuse_jax_debugging("fine-tuning", config.precision.compute)
    check_known_fields(config)
    validate_run_settings(config)
    check_used_in_fine_tuning(config, given)
    mesh = mesh_lib.make_mesh(devices)
    config = with_global_batch(config, mesh.size)
    ft = config.finetune
    if ft.best_metric not in METRICS:
        raise ConfigError(f"finetune.best_metric must be one of {list(METRICS)}, got {ft.best_metric!r}")
    check_task_settings(ft)  # num_classes, multilabel, the head: before any data is read
    if config.train.batch_size % mesh.size:
        raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                          f"{mesh.size} devices")
    check_not_a_language_model_run(workdir, config.init_from)
    splits, num_classes, class_names = load_splits(ft)  # bad data fails before any work
    lm = load_lm(config.init_from)
    check_model_from_lm(config, lm, given)
    config = resolve_config(config, lm)
    check_lm_settings(config, lm)  # before the workdir gets any folder
    with locked_workdir(workdir), contextlib.ExitStack() as on_exit:
        return _finetune(config, workdir, mesh, lm, splits, num_classes, class_names, on_exit,
                         stop)


def _finetune(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, lm: TrainedLM,
              splits: dict[str, Labeled], num_classes: int, class_names: list[str],
              on_exit: contextlib.ExitStack, stop_request: threading.Event | None = None
              ) -> dict[str, Any]:
    """``finetune``'s run, the workdir locked and the data loaded and checked; ``on_exit``
    abandons the checkpointers if the run raises (a notebook keeps no orbax threads)."""
    ft = config.finetune
    is_main = jax.process_index() == 0
    progress = config.train.progress_bar and is_main
    fingerprints = {n: splits[n].fingerprint() for n in ("train", "val")}
    # Refused before the workdir is touched (a previous run archived, folders made):
    if ft.lm_init not in LM_INITS:
        raise ConfigError(f"finetune.lm_init must be one of {list(LM_INITS)}, got {ft.lm_init!r}")
    check_enough_texts(len(splits["train"]), config.train.batch_size, ft.train)
    cw = class_weights_from(ft.class_weights, splits["train"].labels, num_classes)
    pw = pos_weights_from(ft.pos_weights, splits["train"].labels) if ft.multilabel else None
    if not config.resume:
        archive_previous_run(workdir, FINETUNE_RUN_FILES)

    checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep)
    on_exit.push(lambda kind, *_: checkpointer.abandon() if kind else None)
    resuming = checkpointer.latest_step() is not None  # restored into the state's shapes
    if not resuming:  # before best/ is opened
        set_aside_stale_best(workdir)
    best_ckpt = Checkpointer(os.path.join(workdir, "best"), keep=1)
    on_exit.push(lambda kind, *_: best_ckpt.abandon() if kind else None)
    fallback = config.checkpoint.fallback  # an unreadable newest checkpoint: the one before
    saved = checkpointer.newest_usable(checkpointer.read_meta, fallback) if resuming else None
    prng_impl = run_prng_impl(saved)  # the run's keys, whatever JAX_DEFAULT_PRNG_IMPL says now
    on_exit.enter_context(jax.default_prng_impl(prng_impl))

    policy = Policy.from_compute(config.precision.compute)
    pretrained = jax.device_get(lm.params) if ft.lm_init == "pretrained" and not resuming else None
    graphdef, params, max_len = init_classifier(config, lm.tokenizer.vocab_size, num_classes,
                                                policy.compute, abstract=resuming,
                                                lm_params=pretrained)
    stateful = lm.carries_state()  # else texts are read whole
    pad = lm.tokenizer.pad_id or 0
    prep = preprocessor_for(lm.derived)
    enc = {n: Encoded(encode(lm.tokenizer, prep, d.texts, max_len, d.source),
                      d.labels.astype(np.float32) if ft.multilabel else d.labels)
           for n, d in splits.items()}
    batches = TrainBatches(enc["train"], config.train.batch_size, seed=config.seed, pad=pad,
                           bucket=ft.bucket_width, max_len=max_len, class_weights=cw)
    steps, decay = horizon(config, batches.steps_per_epoch)
    if saved is not None:  # the decay horizon the run began with, as lmscale.train keeps it
        decay = resumed_derived({"steps": steps, "decay_steps": decay}, saved, config)["decay_steps"]
    lr = scaled_lr(config.optim, config.train.batch_size)
    head_lr = ft.head_lr or lr
    optim = optim_as_begun(config, saved, workdir)
    layers = config.model.layers
    starts = layer_rates.unfreeze_starts(ft.unfreeze_every, ft.freeze_steps, layers)
    tx, schedules = _optimizer(optim, ft, layers, decay, lr, head_lr, starts)
    # One program: eagerly, each of a schedule's operations was one, in every process.
    logged_lrs = jax.jit(lambda opt_state: finetune_applied_lrs(opt_state, schedules, ft.freeze_steps))
    signature = {**{f"model.{k}": v for k, v in config.model.items()},
                 "data.tokenizer": lm.tokenizer.to_dict(), "vocab_size": lm.tokenizer.vocab_size,
                 "num_classes": num_classes, **{f"finetune.{k}": ft[k] for k in HEAD_FIELDS}}
    state = init_finetune_state(config, policy, tx, params, mesh, abstract=resuming)
    shardings = state_shardings(state, mesh)
    precision_note = None
    if saved is not None:
        def restore(step: int) -> tuple[Any, dict[str, Any]]:
            meta = checkpointer.read_meta(step)
            check_same_model(meta["signature"], signature, workdir)
            check_same_start(meta, config, lm.step, workdir, fingerprints)
            check_same_optimizer(as_applied(meta), {**config.to_dict(), "optim": optim.to_dict()},
                                 workdir, fine_tuning=True)
            return checkpointer.restore(state, shardings, step), meta

        # the record of the checkpoint restored (a fallback's, not the one set aside)
        state, saved = checkpointer.newest_usable(restore, fallback)
        state, precision_note = resumed_loss_scale(state, saved.get("precision"), policy,
                                                   config.precision, shardings.loss_scale)
    start = int(jax.device_get(state.step))
    same_precision = resuming and not precision_note  # float16's steps skipped in a row go on
    skipped_run = SkippedRun.resumed(saved if resuming else None, same_precision, start,
                                     int(jax.device_get(state.loss_scale.skipped)),
                                     config.train.log_every)
    derived = {"steps": steps, "steps_per_epoch": batches.steps_per_epoch, "decay_steps": decay,
               "lr": lr, "head_lr": head_lr, "weight_decay": optim.weight_decay,
               "lm_layer_lrs": layer_rates.peak_rates(lr, ft.layer_lr_decay, layers),
               "num_classes": num_classes, "class_names": class_names,
               "class_weights": None if cw is None else cw.tolist(),
               "pos_weights": None if pw is None else pw.tolist(),
               "init_from": absolute_path(config.init_from), "lm_step": lm.step,
               "lm_init": ft.lm_init, "software": software_versions(),
               "preprocess": lm.derived.get("preprocess", "none"), "devices": mesh.size,
               "precision": str(policy), "prng_impl": prng_impl,
               "texts": {n: len(d) for n, d in splits.items()},
               "texts_fingerprint": fingerprints, "batch_order": BATCH_ORDER,
               **({"pretrained": lm.derived["pretrained"]} if "pretrained" in lm.derived else {})}
    if resuming and is_main:
        for note in (*resumed_otherwise(saved, config, start), precision_note):
            if note:
                print(note, file=sys.stderr, flush=True)
    if resuming and start >= steps and is_main:  # as lmscale.train says it, bar or not
        print(f"{workdir} is already fine-tuned to step {start} (train.steps={steps}): nothing "
              f"to train; its results again", file=sys.stderr, flush=True)
    elif progress and resuming:
        print(f"resuming {workdir} from its checkpoint at step {start} (of {steps})",
              file=sys.stderr, flush=True)
    if is_main:
        _say_start(config, lm, mesh, lr, steps, decay, starts,
                   long_text_note(max(map(len, enc["train"].ids)), ft.grad_tokens, max_len,
                                  stateful))
        lm.tokenizer.save(workdir)  # the run is self-contained for lmscale.classify
        if resuming:  # a config resumed otherwise: the old record kept in history/
            keep_config_history(workdir, {**config.to_dict(), "derived": derived}, start)
        save_config(config, derived, os.path.join(workdir, "config.json"))
        record_command(workdir, start, jax.process_count(), mesh.size)
    meta = {"signature": signature, "precision": config.precision.compute,
            "config": config.to_dict(), "derived": derived}

    step_fns: dict[int, Any] = {}

    def step_fn(unfrozen: int) -> Any:
        """The step with the LM's top ``unfrozen`` depth groups trained (all: layers + 1)."""
        if unfrozen not in step_fns:
            fn = make_finetune_step(graphdef, tx, mesh, multilabel=ft.multilabel, class_weights=cw,
                                    pos_weights=pw, aux_weight=ft.aux_lm_weight, train_lm=unfrozen > 0,
                                    trains=layer_rates.trains_top(unfrozen, layers),
                                    dropout=ft.head_dropout > 0 or ft.lm_dropout > 0,
                                    grad_reduce_dtype=jnp.dtype(config.parallel.grad_reduce_dtype),
                                    grad_tokens=ft.grad_tokens)
            rows = mesh_lib.batch_sharded(mesh)
            step_fns[unfrozen] = jax.jit(fn, in_shardings=(shardings, dict.fromkeys(BATCH_KEYS, rows)),
                                         out_shardings=(shardings, mesh_lib.replicated(mesh)),
                                         donate_argnums=0)
        return step_fns[unfrozen]

    predict = Predictor(graphdef, mesh, ft.multilabel, tokenizer=lm.tokenizer, config=config,
                        derived=lm.derived, batch_size=config.train.eval_batch_size)
    val_ids = enc["val"].ids[:ft.max_val_texts or None]
    val_labels = enc["val"].labels[:len(val_ids)]
    constant = constant_labels(splits["train"], note=False)  # thresholds 0.5 (load_splits said)

    step = start  # the loop's (validate names it in its error)

    def validate(params: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
        probs = predict(params, val_ids)
        if not np.all(np.isfinite(probs)):  # finite weights (check_finite): float16's range
            raise DivergedError(f"the validation probabilities are not finite at step {step} "
                                f"(the weights are: the {config.precision.compute} forward "
                                f"overflows); resume in bfloat16 "
                                f"(--config.precision.compute=bfloat16) or float32", step)
        thresholds = (tune_thresholds(probs, val_labels, ft.threshold_metric, fixed=constant)
                      if ft.multilabel else None)
        return (classification_metrics(probs, val_labels, ft.multilabel, class_names, thresholds),
                probs, thresholds)

    best_path = os.path.join(workdir, "best.json")
    best = recorded_best(best_ckpt, best_path, is_main, lambda kept: {
        "step": kept, "metric": ft.best_metric, "value": validate(best_ckpt.restore_params(
            state.params, mesh_lib.replicated(mesh), kept))[0][ft.best_metric]})
    if is_main:
        truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start)
    writer = MetricsWriter(workdir, resumed_from=start)
    on_exit.push(lambda kind, *_: writer.abandon() if kind else None)
    timer = StepTimer()  # the steps that compile are left out of the throughput
    in_flight = InFlight()  # bounded async dispatch (lmscale/training/in_flight.py)
    accuracy_name = "label_accuracy" if ft.multilabel else "accuracy"
    compiled: set[tuple[bool, tuple[int, ...]]] = set()
    def save(state: Any) -> None:
        """``save_finite`` with float16's steps skipped in a row in the record."""
        if state.loss_scale.dynamic:
            meta["skipped_in_a_row"] = skipped_run.advance(
                step, int(jax.device_get(state.loss_scale.skipped)), True)
            meta["skipped_run"] = skipped_run.record()
        save_finite(checkpointer, state, meta, LOWER)

    acc_shapes = jax.eval_shape(zero_acc)  # once: a trace per train record grew JAX's cache
    with StopSignal(config.train.stop_sync_every, request=stop_request) as stop:
        epochs_done = lambda n: n / batches.steps_per_epoch  # train.eval_every_epochs
        while step < steps and not stop.should_stop(step):
            batch = put_batch(batches.batch(step), mesh, BATCH_KEYS)
            # Each batch width (bucket) compiles its program, frozen and unfrozen: those steps
            # are left out of the throughput (only the first and the unfreezing were before).
            unfrozen = layer_rates.unfrozen_groups(step, starts, ft.freeze_steps, layers)
            program = (unfrozen, batch["tokens"].shape)
            compiles = program not in compiled
            compiled.add(program)
            timer.before(compiles, state)
            if compiles:  # one error, not the OOM killer's "Killed" (long texts on a CPU)
                check_step_fits_host(step_fn(unfrozen), (state, batch),
                                     what=fits_what(batch, ft.grad_tokens),
                                     advice=fits_advice(ft.grad_tokens, max_len, stateful))
            state, metrics = step_fn(unfrozen)(state, batch)
            timer.after(compiles, metrics)
            in_flight.add(metrics)
            step += 1
            stop.finishing = step == steps  # what a signal's acknowledgment says
            if step % config.train.log_every == 0 or step == steps:
                acc, metrics, ls, lrs = jax.device_get((state.acc, metrics, state.loss_scale,
                                                        logged_lrs(state.opt_state)))
                record = _train_record(step, acc, metrics, ls, lrs, accuracy_name,
                                       epochs_done(step), timer,
                                       config.train.batch_size)
                writer.write(record)
                stuck = skipped_run.after_log(step, int(ls.skipped), float(ls.scale), ls.dynamic)
                if stuck:  # float16 skipping every step to the end: a NaN classifier, exit 0
                    raise DivergedError(stuck, step)
                if progress:
                    print(f"step {step}/{steps}: loss {record['loss']:.4f} "
                          f"{accuracy_name.replace('_', ' ')} {record[accuracy_name]:.4f} "
                          f"lr {record['lr']:.2e}", file=sys.stderr, flush=True)
                state = state.replace(acc=jax.device_put(host_zeros_like(acc_shapes),
                                                         mesh_lib.replicated(mesh)))
                timer.reset()
            if validation_due(config.train, step, epochs_done) or step == steps:
                check_finite(checkpointer, state, LOWER)  # a NaN classifier was kept as "best"
                m, _, _ = validate(state.params)
                writer.write({"step": step, "split": "val",
                              **{k: v for k, v in m.items() if k != "per_class"}})
                value = m[ft.best_metric]
                if best is None or better(ft.best_metric, value, best["value"]):
                    best = {"step": step, "metric": ft.best_metric, "value": value}
                    keep_best(best_ckpt, state, {**meta, "best": best}, best_path, is_main)
                if progress:
                    print(f"step {step}: val {ft.best_metric} {value:.4f} (best {best['value']:.4f} "
                          f"at step {best['step']})", file=sys.stderr, flush=True)
                timer.restart()
            if step % config.checkpoint.every == 0 and step < steps:
                save(state)
        save(state)
        checkpointer.close()
    writer.close()
    if stop.stopping:
        best_ckpt.close()
        print(f"stopped by {stop.cause()} at step {step}; checkpoint saved, re-run to "
              f"resume", file=sys.stderr, flush=True)  # stderr: a closed stdout (training's)
        return {"step": step, "stopped": True, "stopped_by_signal": stop.signal,
                "best": best}  # the best so far (None before any validation): re-run to go on
    if best is None:  # a run resumed at its end that kept no best weights: its last state
        best = {"step": step, "metric": ft.best_metric,
                "value": validate(state.params)[0][ft.best_metric]}
        keep_best(best_ckpt, state, {**meta, "best": best}, best_path, is_main)
    best_ckpt.wait()
    params = best_ckpt.restore_params(state.params, mesh_lib.replicated(mesh), best["step"])
    best_ckpt.close()
    started = {"workdir": absolute_path(config.init_from), "step": lm.step,
               "weights": weights_fingerprint(lm), "init": ft.lm_init}  # results.json's "lm"
    results = final_results(workdir, params, predict, enc, splits, ft, class_names, best,
                            is_main, started)
    return {**results, "already_trained": start >= steps,  # as lmscale.train's record says
            "stopped": False}


def _optimizer(optim: ml_collections.ConfigDict, ft: ml_collections.ConfigDict, layers: int,
               decay: int, lr: float, head_lr: float, starts: Any
               ) -> tuple[optax.GradientTransformation, Any]:
    """The fine-tune's optimizer and its schedules: the head at ``head_lr``, the LM's layers
    at ``lr`` times ``finetune.layer_lr_decay`` per layer down, each depth group from its
    unfreezing step (``starts``), all frozen for ``finetune.freeze_steps``."""
    rates = layer_rates.checked(ft.layer_lr_decay, layers)
    groups = layer_rates.optimizer_groups(starts, ft.layer_lr_decay, layers)
    return make_finetune_optimizer(optim, decay, lr=lr, head_lr=head_lr,
                                   freeze_steps=ft.freeze_steps, layer_factor=rates,
                                   groups=groups)


def _say_start(config: ml_collections.ConfigDict, lm: TrainedLM, mesh: Mesh, lr: float,
               steps: int, decay: int, starts: Any, long_text: str | None) -> None:
    """The compute hint and each note that applies to this fine-tune, on stderr as it begins
    (``long_text``: the note on its longest training text)."""
    ft, layers = config.finetune, config.model.layers
    print_compute_hint(config.precision.compute, mesh.devices.flat[0])
    rate_note = batch_and_rate_note(config, mesh.size, lr)
    if rate_note and ft.head_lr:  # a rate given for the head is used as is
        rate_note += f"; the head's finetune.head_lr={ft.head_lr:g}, as given (not scaled)"
    for note in (rate_note,
                 *finetune_warmup_notes(config.optim.schedule, config.optim.warmup_steps,
                                        steps, decay, ft.freeze_steps),
                 long_text, lm_dropout_note(lm, ft.lm_dropout),
                 layer_rates.rates_note(lr, ft.layer_lr_decay, layers),
                 layer_rates.ungrouped_note(lm.params, layers, ft.layer_lr_decay,
                                            ft.unfreeze_every),
                 layer_rates.unfreezing_note(starts, steps, decay, config.optim.warmup_steps)):
        if note:
            print(note, file=sys.stderr, flush=True)


def _train_record(step: int, acc: dict[str, Any], metrics: dict[str, Any], loss_scale: Any,
                  lrs: tuple[Any, Any], accuracy_name: str, epoch: float, timer: StepTimer,
                  batch_size: int) -> dict[str, Any]:
    """The train record at ``step`` from host copies of the state's accumulators ``acc``
    (loss, aux loss, rows right, steps since the last record), the step's ``metrics``, the
    ``loss_scale`` and the (head, LM) learning rates applied; rates over ``timer``'s window."""
    n = max(int(acc["steps"]), 1)
    head_lr_now, lm_lr_now = lrs
    record = {"step": step, "split": "train", "loss": float(acc["loss"]) / n,
              "aux_lm_loss": float(acc["aux_loss"]) / n,
              # multi-label: the fraction of labels right (per-label accuracy)
              accuracy_name: float(acc["correct"]) / max(float(acc["rows"]), 1.0),
              "lr": float(head_lr_now), "lm_lr": float(lm_lr_now),
              "grad_norm": float(metrics["grad_norm"]), "loss_scale": float(loss_scale.scale),
              "skipped": int(loss_scale.skipped), "epoch": epoch,
              **dict(zip(("steps_per_s", "texts_per_s"), timer.rates(1, batch_size)))}
    if timer.compile_s is not None:
        record["first_step_s"] = timer.compile_s
    return record
