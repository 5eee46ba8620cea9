"""Loss and bits per character of a model over a split: the one evaluation of lmscale.

Training-time validation and ``lmscale.eval`` both call :func:`evaluate_split`, so the same
checkpoint, split and settings give the same answer. The answer does not depend on the
device count: the stream's row count comes from the split and ``batch_size`` alone, and rows
are padded (with zero weights) to a multiple of the devices. Sums are exact: each batch's
nats, target count and bytes come back per batch and are accumulated on the host in float64
(float32 running sums on device stop counting exactly past 2^24 targets).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lmscale.config_values import AVERAGING_OPTIMIZERS
from lmscale.data.dataset import SplitData
from lmscale.data.errors import DataError
from lmscale.data.stream import StreamBatcher, document_resets
from lmscale.models.registry import carries_state
from lmscale.training import mesh as mesh_lib
from lmscale.training.in_flight import InFlight
from lmscale.training.loss import LN2
from lmscale.training.state import zero_carry


def without_validation(config: Any, dataset_path: str) -> str | None:
    """For a dataset with no "val" split: a DataError when the config needs validation losses
    (``checkpoint.keep_best``, NT-ASGD's switch), which such a run kept none of and said
    nothing about; else a note when ``train.eval_every`` asked for validation."""
    needs = [name for name, on in (("checkpoint.keep_best=true", config.checkpoint.keep_best),
                                   (f"optim.name={config.optim.name!r} (it "
                                    f"{'switches' if config.optim.name == 'ntasgd' else 'stops'} "
                                    f"on validation losses)",
                                    config.optim.name in AVERAGING_OPTIMIZERS)) if on]
    way = ("give it a validation part (data.split or lmscale.prepare's --split=TRAIN,VAL,TEST "
           "with VAL >= 1, or data.val / --val=FILES)")
    if needs:
        raise DataError(f"{dataset_path} has no validation split, and {' and '.join(needs)} "
                        f"needs one: {way}")
    every = validation_period(config.train)
    if every:
        return (f"note: {dataset_path} has no validation split: this run reports no validation "
                f"loss ({every} finds nothing to evaluate); to have one, {way}")
    return None


def validation_period(train: Any) -> str | None:
    """The setting that schedules validation passes (``train.eval_every_epochs`` where > 0,
    else ``train.eval_every``), as ``field=value``; None where only the end validates."""
    if train.eval_every_epochs > 0:
        return f"train.eval_every_epochs={train.eval_every_epochs:g}"
    return f"train.eval_every={train.eval_every}" if train.eval_every else None


def validation_due(train: Any, step: int, epochs_done: Callable[[int], float]) -> bool:
    """Whether the ``step``-th step (counted from 1) ends with a scheduled validation: the first
    step at or past each multiple of ``train.eval_every_epochs`` epochs where that is > 0
    (``epochs_done(n)``: the epochs n steps have read; under variable BPTT epochs differ in
    steps), else each multiple of ``train.eval_every`` steps (0: none; the end's is apart)."""
    if train.eval_every_epochs > 0:
        # 1e-9: a multiple computed just under itself (0.7 / 0.1 = 6.999999999999999) counts
        period = lambda n: math.floor(epochs_done(n) / train.eval_every_epochs + 1e-9)
        return step >= 1 and period(step) > period(step - 1)
    return bool(train.eval_every) and step % train.eval_every == 0


def eval_stream(split: SplitData, batch_size: int, seq_len: int,
                reset_on_documents: bool | int = False, carried: bool = True) -> StreamBatcher:
    """A stream over a whole split with ``batch_size`` rows, whatever the device count.

    A split too small for rows of ``seq_len + 1`` tokens: a model that carries its state
    (``carried``, the recurrent kinds) reads it in shorter steps, keeping its rows: with the
    state carried the step length does not change which targets are scored, the number of
    rows does (each row's first token is not), so its result does not depend on ``seq_len``
    (it took fewer rows, and scored other targets under another ``--seq_len``); fewer rows
    only where a row would hold fewer than 2 tokens. A transformer, whose context is the step,
    keeps full steps in fewer rows (the most that still get one each)."""
    if split.num_tokens < seq_len + 1:
        raise DataError(f"{split.described} has {split.num_tokens} tokens: too few for one "
                        f"sequence of seq_len {seq_len}")
    if carried:
        rows = min(batch_size, split.num_tokens // 2)
        seq_len = min(seq_len, split.num_tokens // rows - 1)
    else:
        rows = min(batch_size, split.num_tokens // (seq_len + 1))
    return StreamBatcher(split, rows, seq_len, reset_on_documents=reset_on_documents)


def unscored_note(stream: StreamBatcher, split: SplitData) -> str | None:
    """A note where validation's rows leave more than 2 % of the split's targets unscored
    (each row's first token is read from a zero state): a small split read as many rows."""
    share = stream.batch_size / split.num_tokens
    if share <= 0.02:
        return None
    return (f"note: validation reads {split.described} ({split.num_tokens:,} tokens) as "
            f"{stream.batch_size} rows (train.eval_batch_size), and a row's first token is not "
            f"scored: {share:.0%} of them; a smaller train.eval_batch_size scores more")


def evaluate_split(eval_step: Callable, params: Any, initial_carry: Callable[[int], Any],
                   split: SplitData, mesh: Mesh, *, batch_size: int, seq_len: int,
                   reset_on_documents: bool | int = False, max_steps: int = 0) -> dict[str, float]:
    """Runs ``eval_step`` over the split (all of it, or the first ``max_steps`` batches).
    All of it scores every target but each row's first token (read with a zero state) and
    the split's last ``tokens mod rows``: the rows' tails after the last full step are one
    more, shorter step.

    ``eval_step(params, carry, batch) -> (carry, sums [nats, count, bytes])`` is the jitted
    step (``steps.make_eval_step``); ``initial_carry(rows)`` the model's zero carry. Returns
    loss (nats per token), bpc (bits per UTF-8 byte), bits_per_token, tokens and chars scored.
    """
    stream = eval_stream(split, batch_size, seq_len, reset_on_documents,
                         carries_state(initial_carry))
    steps = stream.steps_per_epoch if max_steps <= 0 else min(max_steps, stream.steps_per_epoch)
    padded = -(-stream.batch_size // mesh.size) * mesh.size
    rows = mesh_lib.local_rows(mesh, padded)
    sharding = mesh_lib.batch_sharded(mesh)
    carry = zero_carry(initial_carry, padded, sharding)
    sums, in_flight = [], InFlight()
    # The whole split: each row's last, shorter step too (one more program, of its width).
    tail = steps == stream.steps_per_epoch and stream.tail_length > 0
    for k in [*range(steps), *([TAIL] if tail else [])]:
        carry, s = eval_step(params, carry, padded_batch(stream, k, rows, padded, sharding))
        sums.append(s)
        in_flight.add(s)
    totals = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0) if sums else np.zeros(3)
    nats, count, num_bytes = (float(x) for x in totals)
    return {"loss": nats / max(count, 1.0), "bpc": nats / LN2 / max(num_bytes, 1.0),
            "bits_per_token": nats / LN2 / max(count, 1.0), "tokens": int(count),
            "chars": round(float(num_bytes))}  # a word model's <unk>: its mean, a fraction


def batch_arrays(batcher: StreamBatcher, step: int, rows: tuple[int, int],
                 sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of ``batcher.batch(step)`` as global arrays sharded by rows."""
    return mesh_lib.tree_put_global(_local(batcher, step, rows), sharding, batcher.batch_size)


def padded_batch(batcher: StreamBatcher, step: int, rows: tuple[int, int], padded: int,
                 sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Like :func:`batch_arrays` for a global batch of ``padded`` >= ``batcher.batch_size``
    rows: rows past the stream's are copies of its row 0 with zero weights (not counted)."""
    start, stop = rows
    real = (min(start, batcher.batch_size), min(stop, batcher.batch_size))
    local = _local(batcher, step, real)
    extra = stop - max(start, batcher.batch_size)
    if extra > 0:
        filler = _local(batcher, step, (0, 1))
        filler["weights"][:] = 0.0
        local = {k: np.concatenate([v, np.repeat(filler[k], extra, axis=0)]) for k, v in local.items()}
    return mesh_lib.tree_put_global(local, sharding, padded)


TAIL = -1  # the step of ``padded_batch`` that reads the rows' tails (``StreamBatcher.tail``)


def _local(batcher: StreamBatcher, step: int, rows: tuple[int, int]) -> dict[str, np.ndarray]:
    b = batcher.tail(rows) if step == TAIL else batcher.batch(step, rows=rows)
    return {"inputs": b.inputs.astype(np.int32), "targets": b.targets.astype(np.int32),
            "weights": b.weights.astype(np.float32), "resets": b.resets.astype(bool)}


def eval_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation settings of a run: validation in training and ``lmscale.eval`` share them."""
    return {"batch_size": config.train.eval_batch_size, "seq_len": config.train.seq_len,
            "reset_on_documents": document_resets(config.data),
            "max_steps": config.train.eval_steps}
