"""A workdir as the record of one run: what a resume may change, and what it keeps.

Each checkpoint records the resolved config and derived values of the run that wrote it
(see checkpoints.py). Resuming compares against that record:

* fields that define what is trained on (``RESUME_FIELDS``: sequence length, data source,
  split, tokenizer) must not change: a changed one is refused with its name;
* the learning-rate decay horizon is fixed when the run starts: raising ``train.steps`` keeps
  the recorded ``derived.decay_steps`` (past it the schedule stays at its end value, 0 for
  linear/cosine) unless an ``optim.*`` decay setting is changed explicitly;
* provenance that came with the weights (``derived.preprocess``, ``derived.pretrained`` of an
  imported model) is carried into every later run;
* ``config.json`` is the current config; a different earlier one is kept as
  ``history/config.<step>.json`` (the step at which it was replaced).

``resume = False`` (``--config.resume=false``) starts afresh: the previous run's checkpoints,
metrics, tb/ and config.json, and what the tools made from its weights (transfer/,
features/, generate/), move to ``archive/<time>/`` (nothing is deleted).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import ml_collections

from lmscale.atomic import write_json
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.schedules import DECAYS_TO_ZERO

# Derived values that came with the weights and must survive every later run in the workdir.
PROVENANCE_KEYS = ("preprocess", "pretrained")
# Fields a resumed run may not change: what the recorded steps were trained on.
RESUME_FIELDS = ("train.seq_len", "data.train", "data.split", "data.tokenizer")
# ... and, in a sentencepiece run, these (they define its vocabulary).
SENTENCEPIECE_FIELDS = ("data.vocab_size", "data.sp_model_type", "data.sp_model")
# ... and these, compared with "" for a checkpoint that predates them.
SPLIT_FIELDS = ("data.val", "data.test")
# Path fields a run may have recorded with a "~" (before the tools expanded it: cli.py).
HOME_PATHS = ("data.train", "data.val", "data.test", "data.sp_model")
# ... and these, compared with their default for a checkpoint that predates them.
DEFAULTED_FIELDS = {"train.grad_accum_steps": 1}
# ... and, in a word-level run, these.
WORD_FIELDS = ("data.word_min_count", "data.word_vocab_size")
# Settings that define the decay horizon; unchanged, a resume keeps the recorded horizon.
DECAY_FIELDS = ("optim.schedule", "optim.decay_steps", "optim.decay_epochs", "optim.warmup_steps")
RUN_FILES = ("checkpoints", "metrics.jsonl", "tb", "config.json", "history", "best", "best.json",
             "commands.log",
             # ... what was set aside from it (corrupt checkpoints, damaged records): left,
             # they sat beside the new run's files, a later fallback's adding to them
             "unreadable_checkpoints", "metrics.jsonl.damaged", "best.json.damaged",
             # ... and what the tools made from its weights (transfer, features, generate).
             "transfer", "features", "generate")


def _get(config: dict[str, Any], key: str) -> Any:
    section, name = key.split(".")
    return config.get(section, {}).get(name)


def refuse_classifier_run(workdir: str) -> None:
    """Refuses to train an LM in a fine-tuned classifier's folder (lmscale.finetune's): it
    was refused field by field ("was trained with train.seq_len=256 ..."), not as what it is."""
    path = os.path.join(workdir, "config.json")
    record = _read_record(path) if os.path.isfile(path) else None
    derived = (record or {}).get("derived") or {}
    if record is None and os.path.isfile(os.path.join(workdir, "classifier.json")):
        # lmscale.transfer's output (classifier.json, results.json): training here made the
        # folder an LM run too, and load_lm then read that LM instead of naming the transfer.
        raise CheckpointMismatchError(
            f"{workdir} holds a transfer output (lmscale.transfer's classifier), not a language "
            f"model's training run: train the LM in another --workdir")
    if "class_names" in derived and os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointMismatchError(
            f"{workdir} holds a fine-tuned classifier (lmscale.finetune), not a language "
            f"model's training run: train the LM in another --workdir (this classifier started "
            f"from {derived.get('init_from') or 'the LM its config.json names'})")


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict, where: str,
                    workdir: str | None = None) -> None:
    """Refuses a resume whose config changes a field of ``RESUME_FIELDS``, naming it (of the
    data.* fields only data.train when it is a prepared dataset: its own split and tokenizer
    are used, whatever the others say).

    ``saved``: a checkpoint's meta. Checkpoints without a recorded config (older ones, or
    imported models, which have no training data) are not checked; so fine-tuning an imported
    model on any data is allowed.
    """
    old = saved.get("config")
    if not old or not _get(old, "data.train"):
        return
    new = config.to_dict()
    from lmscale.training.data_source import same_text_files
    # a run prepared from text into WORKDIR/data (a resume reads that, not the text)
    in_workdir = bool(workdir) and os.path.isfile(os.path.join(workdir, "data_request.json"))
    fields = RESUME_FIELDS
    if _get(new, "data.tokenizer") == "sentencepiece":
        if _get(new, "data.sp_model"):  # the model file defines the vocabulary: its bytes count
            fields += ("data.sp_model",)
        else:  # a model trained while preparing: these define it
            fields += SENTENCEPIECE_FIELDS
    if _get(new, "data.tokenizer") == "word":
        fields += WORD_FIELDS
    fields += SPLIT_FIELDS + tuple(DEFAULTED_FIELDS)
    from lmscale.data.dataset import is_dataset
    if is_dataset(str(_get(new, "data.train"))):  # its own tokenizer and splits: data.* unused
        fields = tuple(k for k in fields if k == "data.train" or not k.startswith("data."))
    for key in fields:
        before = _get(old, key)
        if before is None and key in SPLIT_FIELDS:
            before = ""
        if before is None and key in DEFAULTED_FIELDS:
            before = DEFAULTED_FIELDS[key]
        if key == "data.sp_model" and before and _same_sp_model(saved, _get(new, key)):
            continue  # the same model file, wherever it lies now
        if key in HOME_PATHS and recorded_with_home(before, _get(new, key)):
            continue
        if (key == "data.train" and before != _get(new, key)
                and _same_prepared_dataset(saved, str(_get(new, key)))):
            continue  # the same prepared dataset, however its path is spelled
        if (key in ("data.train", "data.val", "data.test") and before != _get(new, key)
                and in_workdir and same_text_files(workdir, config.data)):
            continue  # its text under another path (said when WORKDIR/data is opened)
        if key == "data.train" and before != _get(new, key) and in_workdir:
            raise CheckpointMismatchError(
                f"{where} was trained with data.train={before!r}; resuming it with "
                f"data.train={_get(new, key)!r} is refused (its steps were trained on the "
                f"other, and these files differ from it in names or sizes); a resume reads "
                f"the run's prepared {os.path.join(workdir, 'data')}: give the old value "
                f"(it need not exist any more), or a new --workdir, or --config.resume=false "
                f"to start afresh (the old run is archived)")
        if before != _get(new, key):
            raise CheckpointMismatchError(
                f"{where} was trained with {key}={before!r}; resuming it with "
                f"{key}={_get(new, key)!r} is refused (the recorded steps were trained on the "
                f"other); use the same value, a new --workdir, or --config.resume=false "
                f"to start afresh (the old run is archived)")
    was, now = _data_order(old), _data_order(new)
    changed = [k for k in {**was, **now} if was.get(k) != now.get(k)]
    switches = [k for k in changed if k in ("data.shuffle_shards", "train.variable_bptt")]
    changed = switches or changed  # a switch turned: what it draws with is beside the point
    if changed:  # the step -> batch map: a mid-epoch resume would re-read and skip text
        said = lambda o: ", ".join(f"{k}={o.get(k)!r}" for k in changed)
        raise CheckpointMismatchError(
            f"{where} was trained with {said(was)}; resuming it with {said(now)} is refused "
            f"(the order of the training stream changes: the current epoch would read some "
            f"text twice and some never, and the carried state would go on into other text); "
            f"use the same values, a new --workdir, or --config.resume=false to start afresh")
    check_same_batch(saved, new, where)
    check_same_optimizer(old, new, where)


def _data_order(config: dict[str, Any]) -> dict[str, Any]:
    """What of a config the training stream's order depends on beyond its shape:
    data.shuffle_shards, train.variable_bptt with the lengths it draws (train.bptt_max, as
    ``config_values.bptt_max`` reads it, and train.bptt_bucket), and the seed where it draws the
    order or the lengths (NumPy draws them from the whole seed). Fields a record predates
    read as their defaults."""
    shuffled = bool(_get(config, "data.shuffle_shards"))
    drawn = bool(_get(config, "train.variable_bptt"))
    order: dict[str, Any] = {"data.shuffle_shards": shuffled, "train.variable_bptt": drawn}
    if drawn:
        from types import SimpleNamespace

        from lmscale.config_values import bptt_max
        train = SimpleNamespace(bptt_max=_get(config, "train.bptt_max") or 0,  # a record's
                                seq_len=_get(config, "train.seq_len") or 0)  # dict, as config
        order["train.bptt_max"] = bptt_max(train)
        bucket = _get(config, "train.bptt_bucket")
        order["train.bptt_bucket"] = 5 if bucket is None else int(bucket)
    order["seed"] = config.get("seed") if shuffled or drawn else None
    return order


def recorded_with_home(before: Any, now: Any) -> bool:
    """Whether ``before`` is a path recorded with a "~" (before the tools expanded it:
    cli.PATH_FIELDS) that is ``now``."""
    return isinstance(before, str) and os.path.expanduser(before) == now


def _same_prepared_dataset(saved: dict[str, Any], path: str) -> bool:
    """Whether ``path`` is a prepared dataset with the files the checkpoint's run trained on
    (its recorded ``dataset_fingerprint``): "prep" and "../prep" from another directory, an
    absolute path or a symlink name the same data; False where either is unknown."""
    recorded = (saved.get("derived") or {}).get("dataset_fingerprint")
    from lmscale.data.dataset import has_fingerprint
    return bool(recorded) and has_fingerprint(path, recorded)  # a shard gone: opening names it


def _same_sp_model(saved: dict[str, Any], path: str) -> bool:
    """Whether the SentencePiece model file at ``path`` is the one the checkpoint's tokenizer
    was (its SHA-256, recorded in the signature); False where either is unknown."""
    recorded = ((saved.get("signature") or {}).get("data.tokenizer") or {}).get("sha256")
    if not recorded:
        return False
    from lmscale.datasets import sha256_of
    try:
        return sha256_of(path) == recorded
    except OSError:  # reported where the data is read
        return False


def check_same_batch(saved: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """Refuses a resume with another global batch, saying how the batch came to change (with
    ``train.per_device_batch_size`` the device count sets it): a model that carries state
    between batches has one carry row per sequence (its signature records the batch); for
    any model the stream's rows are batch-size stretches of the text, so another batch
    re-reads text already trained on and shifts the epochs (a transformer resumed silently)."""
    old = saved.get("config") or {}
    carried = (saved.get("signature") or {}).get("train.batch_size")
    recorded = carried if carried is not None else _get(old, "train.batch_size")
    now = _get(new, "train.batch_size")
    if recorded is None or recorded == now:
        return
    devices = (saved.get("derived") or {}).get("devices")

    def how(config: dict[str, Any], count: Any) -> str:
        per_device = _get(config, "train.per_device_batch_size") or 0
        return (f"{per_device} per device x {count} devices" if per_device and count else
                "train.batch_size")

    per_device_now = _get(new, "train.per_device_batch_size") or 0
    count_now = now // per_device_now if per_device_now else None
    way = (f"run it on {devices} devices again, or set train.batch_size={recorded} with "
           f"train.per_device_batch_size=0" if per_device_now and devices
           and recorded % per_device_now == 0 and recorded // per_device_now == devices
           else f"set train.batch_size={recorded}"
           + (" with train.per_device_batch_size=0" if per_device_now else ""))
    raise CheckpointMismatchError(
        f"{where} was trained with a global batch of {recorded} "
        f"({how(old, devices)}); this run's is {now} ({how(new, count_now)}), and "
        + ("the model's carried state holds one row per sequence of the batch" if carried is not None
           else "the data's rows are batch-size stretches of the text (another batch re-reads "
                "text already trained on and shifts the epochs)")
        + f", so resuming with another batch is refused; {way}, use a new --workdir, or "
        f"--config.resume=false to start afresh (the old run is archived)")


# Settings whose being on or off adds or removes a link of the optimizer chain
# (``optimizer.make_optimizer``), and so changes the optimizer state's tree; absent from an
# older checkpoint: off (0 / False).
OPTIMIZER_LINKS = ("optim.clip", "optim.weight_decay", "train.variable_bptt")
# Fine-tuning's holds (``optimizer.hold_for``): the steps at which the LM (and, unfreezing
# gradually, each layer group: one Adam per group) starts, built into the optimizer state's
# counts; another value on resume would hold again what had started training.
FINETUNE_HOLDS = ("finetune.unfreeze_every", "finetune.freeze_steps")
# With weight decay on, these place or mask its link (their value in an older checkpoint).
WEIGHT_DECAY_FORM = {"optim.weight_decay_style": "coupled", "optim.weight_decay_on": "all"}


def optimizer_layout(config: dict[str, Any], *, fine_tuning: bool = False) -> dict[str, Any]:
    """The settings that shape the optimizer state's tree (``optimizer.make_optimizer``; with
    ``fine_tuning``, ``make_finetune_optimizer``: Adam per part, clip, weight decay), read from
    a resolved config as recorded: a link on or off (``OPTIMIZER_LINKS``; off where an older
    checkpoint lacks it), and with weight decay on, where Adam's chain places it and its mask
    (``WEIGHT_DECAY_FORM``). A fine-tune recorded before fine-tuning applied weight decay
    (its config has no ``optim.weight_decay_style``) had no decay link, whatever it says."""
    layout: dict[str, Any] = {}
    adam = fine_tuning or (_get(config, "optim.name") or "adam") == "adam"
    if not fine_tuning:
        layout["optim.name"] = _get(config, "optim.name") or "adam"
    for key in OPTIMIZER_LINKS:
        if fine_tuning and key == "train.variable_bptt":
            continue
        layout[key] = _get(config, key) or 0
    if fine_tuning:
        for key in FINETUNE_HOLDS:  # absent in older records: 0
            layout[key] = _get(config, key) or 0
    if fine_tuning and _get(config, "optim.weight_decay_style") is None:
        layout["optim.weight_decay"] = 0
    if layout["optim.weight_decay"]:
        for key, default in WEIGHT_DECAY_FORM.items():
            if adam or key != "optim.weight_decay_style":  # SGD: the same chain either way
                layout[key] = _get(config, key) or default
    return layout


def check_same_optimizer(old: dict[str, Any], new: dict[str, Any], where: str, *,
                         fine_tuning: bool = False) -> None:
    """Refuses a resume with another optimizer layout (``optimizer_layout``: ``optim.name``,
    a link of the chain turned on/off, weight decay moved or masked otherwise): the
    checkpoint's optimizer state would not fit (orbax reported it as an unreadable checkpoint,
    and falling back moved good checkpoints aside)."""
    before = optimizer_layout(old, fine_tuning=fine_tuning)
    after = optimizer_layout(new, fine_tuning=fine_tuning)
    for key in after:
        b, a = before.get(key), after[key]
        same = bool(b) == bool(a) if key in OPTIMIZER_LINKS else b == a
        if not same:
            raise CheckpointMismatchError(
                f"{where} was trained with {key}={b!r}; resuming it with "
                f"{key}={_get(new, key)!r} is refused (the optimizer state differs: "
                + ("its holds, which keep the LM or a layer group frozen until its step, "
                   "count from the run's start" if key in FINETUNE_HOLDS
                   else "its chain of steps is not the same")
                + "); use the same setting, a new --workdir, or --config.resume=false to "
                "start afresh (the old run is archived)")


def check_same_dataset(saved: dict[str, Any], path: str, fingerprint: str, where: str) -> None:
    """Refuses a resume on a prepared dataset whose files changed since the checkpoint (say
    prepared again in place with --overwrite): its steps were counted on the other data."""
    recorded = (saved.get("derived") or {}).get("dataset_fingerprint")
    if recorded and recorded != fingerprint:
        raise CheckpointMismatchError(
            f"{where} was trained on the dataset {path} as it was then, and its files have "
            f"changed since (prepared again?): the recorded steps were counted on other data, "
            f"so resuming on it is refused; restore the dataset, use a new --workdir, or "
            f"--config.resume=false to start afresh (the old run is archived)")


def resumed_derived(derived: dict[str, Any], saved: dict[str, Any],
                    config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``derived`` with the recorded decay horizon kept when no decay setting changed; a new
    peak learning rate, or steps past a horizon where the rate is 0, said."""
    old, old_derived = saved.get("config"), saved.get("derived") or {}
    if not old or "decay_steps" not in old_derived:
        return derived
    new = config.to_dict()
    if (None not in (old_derived.get("lr"), derived.get("lr"))
            and old_derived["lr"] != derived["lr"] and jax.process_index() == 0):  # optim.lr, its scaling or the batch: unsaid before
        print(f"note: the peak learning rate is {derived.get('lr'):.4g} from here (it was "
              f"{old_derived['lr']:.4g}): the schedule goes on at the new rate",
              file=sys.stderr, flush=True)
    moved = [f"{k} {_get(old, k)!r} -> {_get(new, k)!r}" for k in DECAY_FIELDS
             if _get(old, k) != _get(new, k)]
    if moved:  # the schedule is the new config's: said, since the rate may jump at the resume
        if jax.process_index() == 0:
            horizon = (f"the decay horizon is {derived['decay_steps']} steps (it was "
                       f"{old_derived['decay_steps']})"
                       if derived["decay_steps"] != old_derived["decay_steps"] else
                       f"the decay horizon stays {derived['decay_steps']} steps")
            print(f"note: {', '.join(moved)} since the checkpoint: the learning rate follows the "
                  f"new schedule from here, {horizon}", file=sys.stderr, flush=True)
        return derived
    changed = old_derived.get("steps") != derived["steps"]  # since the checkpoint's run
    matters = new.get("optim", {}).get("schedule") != "constant"  # a horizon to keep
    if (changed and matters and old_derived["decay_steps"] != derived["decay_steps"]
            and jax.process_index() == 0):
        zero = (derived["steps"] > old_derived["decay_steps"]
                and new["optim"]["schedule"] in DECAYS_TO_ZERO)
        print(f"note: train.steps is {derived['steps']} (it was {old_derived.get('steps')}); the "
              f"learning rate keeps the decay horizon of {old_derived['decay_steps']} steps the "
              f"run started with (set optim.decay_steps to change it)"
              + (f": past it the {new['optim']['schedule']} rate is 0, and those steps leave "
                 f"the weights as they are" if zero else ""), file=sys.stderr, flush=True)
    return {**derived, "decay_steps": old_derived["decay_steps"]}


def _read_record(path: str) -> dict[str, Any] | None:
    """A config.json as written (None where it is not a JSON object: hand-damaged, torn)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError:  # invalid JSON, or not UTF-8
        return None
    return record if isinstance(record, dict) else None


def _set_aside_unreadable(workdir: str, path: str, label: str) -> str:
    """Moves an unreadable config.json to ``history/config.<label>.unreadable.json`` (a name
    of its own: nothing is overwritten); returns where."""
    history = os.path.join(workdir, "history")
    os.makedirs(history, exist_ok=True)
    target, n = os.path.join(history, f"config.{label}.unreadable.json"), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(history, f"config.{label}.unreadable-{n}.json")
    shutil.move(path, target)
    return target


def software_versions() -> dict[str, str]:
    """What a run was made with, for config.json's ``derived.software``: Python, lmscale (and
    its git commit when it runs from a checkout, "+" when that has uncommitted changes), JAX,
    jaxlib, flax, optax, orbax-checkpoint and NumPy."""
    import importlib.metadata
    import platform
    import subprocess
    found = {"python": platform.python_version()}
    for name in ("lmscale", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(root, ".git")):  # a checkout (an install has no commit)
        try:
            git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True,
                                            text=True, timeout=10)
            head = git("rev-parse", "--short=12", "HEAD")
            if head.returncode == 0:
                dirty = git("status", "--porcelain", "--untracked-files=no", "lmscale").stdout
                found["lmscale_commit"] = head.stdout.strip() + ("+" if dirty.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return found


def provenance(workdir: str, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance recorded in the workdir's config.json, else in the checkpoint's meta.

    An unreadable config.json (hand-damaged, torn) is no reason to stop a resume: the
    checkpoint's record holds the run's config and derived values. Process 0 moves the broken
    file to ``history/config.<time>.unreadable.json`` and writes config.json again from that
    record (so that a run that is already trained, which writes no new config.json, leaves a
    readable one for eval, generate and transfer)."""
    path = os.path.join(workdir, "config.json")
    found: dict[str, Any] = {}
    if saved and saved.get("derived"):
        found.update({k: saved["derived"][k] for k in PROVENANCE_KEYS if k in saved["derived"]})
    if os.path.exists(path):
        try:
            record = _read_record(path)
        except FileNotFoundError:  # process 0 set it aside meanwhile (below)
            return found
        if record is None:
            if saved and saved.get("config") and jax.process_index() == 0:
                kept = _set_aside_unreadable(workdir, path, time.strftime("%Y%m%d-%H%M%S"))
                write_json(path, {**saved["config"], "derived": saved.get("derived") or {}},
                           indent=2, sort_keys=True)
                print(f"note: {path} was not a readable config record; it is kept as {kept}, "
                      f"and written again from the checkpoint's record", file=sys.stderr,
                      flush=True)
            return found
        derived = record.get("derived") or {}
        found.update({k: derived[k] for k in PROVENANCE_KEYS if k in derived})
    return found


def init_note(saved: dict[str, Any] | None, config: ml_collections.ConfigDict) -> str | None:
    """A resume whose ``model.io_init`` differs from its checkpoint's config ("uniform" before
    the setting): said, as it changes nothing (only a new run's first weights are drawn)."""
    from lmscale.models import get_kind
    old = (saved or {}).get("config")
    if not old or "io_init" not in get_kind(config.model.kind).settings:  # the kinds that read it
        return None
    recorded = (old.get("model") or {}).get("io_init", "uniform")
    if recorded == config.model.io_init:
        return None
    return (f"note: model.io_init is {config.model.io_init!r} here and {recorded!r} in the "
            f"checkpoint's config; it draws only a new run's first weights, so this resumed run "
            f"goes on from its checkpoint's weights, drawn when it started (config.json records "
            f"the setting as given; the earlier configs are in history/)")


def keep_config_history(workdir: str, new_record: dict[str, Any], start: int) -> None:
    """Before config.json is replaced by a different config, keeps the old one in history/
    (an unreadable one as ``history/config.<start>.unreadable.json``)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    old = _read_record(path)
    if old is None:
        kept = _set_aside_unreadable(workdir, path, str(start))
        print(f"note: {path} was not a readable config record; it is kept as {kept}, and "
              f"written again from this run's config", file=sys.stderr, flush=True)
        return
    strip = lambda r: {k: v for k, v in r.items() if k != "derived"}
    if strip(old) == strip(new_record):
        return
    os.makedirs(os.path.join(workdir, "history"), exist_ok=True)
    shutil.copyfile(path, os.path.join(workdir, "history", f"config.{start}.json"))
