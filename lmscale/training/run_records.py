"""What a training run reports: the train record of every ``train.log_every`` steps (its
metrics.jsonl line), that record on the progress bar or as a plain line, and what a re-run of
a finished run returns (its last records, said so; nothing trained)."""

from __future__ import annotations

import os
import sys
from typing import Any

from lmscale.messages import for_caller
from lmscale.training.loss import bits_per_char
from lmscale.training.metrics import (MetricsWriter, add_perplexity, read_metrics,
                                      truncate_metrics)
from lmscale.training.step_timer import StepTimer

RATE_KEYS = ("steps_per_s", "tokens_per_s", "chars_per_s")


def train_record(step: int, acc: dict[str, Any], metrics: dict[str, Any], loss_scale: Any,
                 epoch: float, timer: StepTimer, tokens_per_step: float, word_level: bool
                 ) -> dict[str, Any]:
    """The train record at ``step`` from host copies of the state's accumulators ``acc``
    (nats, bytes, scored targets and steps since the last record), the step's ``metrics``
    (lr, grad_norm) and ``loss_scale``; its rates over ``timer``'s window (None without a
    timed step; ``first_step_s`` where a step compiled in it), perplexity if ``word_level``."""
    count, steps_in_acc = max(float(acc["count"]), 1.0), max(int(acc["steps"]), 1)
    loss = float(acc["nats"]) / count
    record = {"step": step, "split": "train", "loss": loss,
              "bpc": bits_per_char(float(acc["nats"]), float(acc["bytes"])),
              "bits_per_token": bits_per_char(loss),
              "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
              "loss_scale": float(loss_scale.scale), "skipped": int(loss_scale.skipped),
              "epoch": epoch}
    record.update(zip(RATE_KEYS, timer.rates(1, tokens_per_step,
                                             float(acc["bytes"]) / steps_in_acc)))
    if timer.compile_s is not None:
        record["first_step_s"] = timer.compile_s
    return add_perplexity(record, word_level)


def show_train_record(record: dict[str, Any], steps: int, timer: StepTimer, bar: Any,
                      plain: bool) -> None:
    """``record`` on the progress ``bar`` (its postfix), and as a line on stderr if ``plain``
    (progress without a bar: a log file, a notebook's cell); the rate is the first step's
    compile time while no step is timed yet."""
    chars_s = (f"{record['chars_per_s']:.3g}" if timer.steps else
               f"first step {timer.compile_s:.3g} s (compiling)")
    bar.set_postfix(loss=f"{record['loss']:.3f}", bpc=f"{record['bpc']:.3f}",
                    lr=f"{record['lr']:.2e}", chars_s=chars_s)
    if plain:
        rate = f"{chars_s} chars/s" if timer.steps else chars_s
        print(f"step {record['step']}/{steps}: loss {record['loss']:.4f} bpc "
              f"{record['bpc']:.4f}{perplexity_note(record)} lr {record['lr']:.3e} {rate}",
              file=sys.stderr, flush=True)


def already_trained(workdir: str, start: int, steps: int, is_main: bool,
                     stopped_by_rule: bool = False, decayed_at: tuple[str, int] | None = None
                     ) -> dict[str, Any]:
    """What a re-run of a finished run returns: its last records, said so; nothing trained.
    ``stopped_by_rule``: optim.name="asgd" ended it before train.steps; ``decayed_at``: (the
    schedule, its horizon) where a linear/cosine rate reached 0 by the run's end (raising
    train.steps alone trains on at rate 0).
    metrics.jsonl loses the records past the checkpoint (a run killed after its last save
    had logged them), as a resume's would, and TensorBoard too (a purge step)."""
    if is_main:
        if truncate_metrics(os.path.join(workdir, "metrics.jsonl"), after_step=start):
            MetricsWriter(workdir, resumed_from=start).close()  # TensorBoard's purge too
    last: dict[str, Any] = {"step": start, "train_programs": 0, "stopped_by_signal": None,
                            "stopped": False, "stopped_by_rule": stopped_by_rule,
                            "already_trained": True,
                            **last_records(workdir, start, ("train", "val"))}
    if is_main and stopped_by_rule:
        print(for_caller(f"{workdir} was ended at step {start} (of train.steps={steps}) by the "
                         f"asgd rule (optim.name='asgd'), its validation loss worse than the "
                         f"best of those more than optim.ntasgd_nonmono passes before: nothing "
                         f"to do (--config.resume=false starts over; the run is archived)"),
              file=sys.stderr)
    elif is_main:
        raise_steps = ("Raise --config.train.steps to train on" if not decayed_at else
                       f"Its {decayed_at[0]} learning rate reached 0 at step {decayed_at[1]}: "
                       f"raise --config.train.steps and --config.optim.decay_steps to train on")
        print(for_caller(f"{workdir} is already trained to step {start} (train.steps={steps}): "
                         f"nothing to do. {raise_steps}, or --config.resume=false to start over "
                         f"(the run is archived)"), file=sys.stderr)
    return last


def last_records(workdir: str, step: int, splits: tuple[str, ...]) -> dict[str, Any]:
    """The last record of each of ``splits`` in metrics.jsonl up to ``step`` (none of a
    missing or damaged file: the checkpoint still stands)."""
    try:
        records = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
    except (OSError, ValueError):
        records = []
    return {r["split"]: r for r in records if r.get("split") in splits}


def perplexity_note(record: dict[str, Any]) -> str:
    """" perplexity P" for a word-level record (what word-level runs are compared by), else ""."""
    return f" perplexity {record['perplexity']:.2f}" if "perplexity" in record else ""
