"""Labeled texts as classification batches: token ids, lengths, labels and loss weights.

Every row is one text from position 0 (the model starts it from a zero carry), padded at the
end to the batch's width: the longest text rounded up to a multiple of ``bucket_width``
(capped at the model's ``max_len``), so few distinct shapes are compiled. A model with a
length limit (the transformer) reads the last ``max_len`` tokens of a longer text, as
featurization does.

Training batches are a pure function of the step (exact resume): per epoch a seeded
permutation of the texts, cut into pools of ``POOL`` batches, each pool sorted by length (little
padding) and cut into batches, and the batches shuffled; the epoch's remainder (< B texts,
random ones: cut from the permutation) is left out. Loss weights are normalized over the
global batch on the host, so a device's loss sum needs no reduction other than the step's one
all-reduce. Prediction reads texts
packed end to end instead (``predict.Predictor``).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import ml_collections
import numpy as np

from lmscale.config import ConfigError
from lmscale.data.errors import DataError
from lmscale.transfer.labeled import (Labeled, check_held_out, check_labels, constant_labels,
                                      index_classes, load_labeled)
from lmscale.data.texts import last_tokens
from lmscale.data.words import unknown_words_note

POOL = 50  # batches per length-sorted pool
BATCH_ORDER = 2  # TrainBatches' order, recorded in a run (2: each epoch's remainder random)


@dataclasses.dataclass
class Encoded:
    """ids: token ids per text; labels int [N] (single-label) or 0/1 [N, K] (multi-label)."""
    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer: object, preprocess: object, texts: Sequence[str], max_len: int | None,
           source: str = "texts", number_from: int = 1) -> list[np.ndarray]:
    """Token ids (int32) of each preprocessed text, cut to its last ``max_len`` tokens if set;
    an empty text is an error naming it from ``number_from`` (1: a file's texts; 0: a list's)."""
    out = []
    for i, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(preprocess(text)), np.int32)
        if len(ids) == 0:
            raise DataError(f"{source}: text {i + number_from} is empty; every text needs at "
                            f"least one token")
        out.append(ids)
    if (note := unknown_words_note(tokenizer, texts, out, source)):
        print(note, file=sys.stderr, flush=True)
    return last_tokens(out, max_len, source)  # cut texts said, as featurize says them


def width_for(lengths: np.ndarray, bucket: int, max_len: int | None) -> int:
    """The padded width of a batch: max length rounded up to ``bucket``, capped at ``max_len``."""
    width = -(-int(np.max(lengths)) // bucket) * bucket
    return width if max_len is None else min(width, max_len)


def make_batch(ids: Sequence[np.ndarray], labels: np.ndarray, rows: int, *, pad: int,
               bucket: int, max_len: int | None, row_weights: np.ndarray
               ) -> dict[str, np.ndarray]:
    """A batch of ``rows`` rows from the given texts (fewer: filler rows of one pad token and
    weight 0), ``width_for`` the texts wide. Returns
    tokens int32 [rows, W], lengths int32 [rows], labels int32 [rows] or
    float32 [rows, K], row_weights float32 [rows] (summing to 1 over real rows), and
    lm_weights float32 [rows, W] (1 / real targets on positions t whose next token t + 1
    is a real token of the text, 0 elsewhere: padding is never a target)."""
    n = len(ids)
    lengths = np.ones(rows, np.int32)
    lengths[:n] = [len(x) for x in ids]
    width = width_for(lengths, bucket, max_len)
    tokens = np.full((rows, width), pad, np.int32)
    for r, x in enumerate(ids):
        tokens[r, :len(x)] = x
    lab = np.zeros((rows,) + labels.shape[1:], np.float32 if labels.ndim == 2 else np.int32)
    lab[:n] = labels
    weights = np.zeros(rows, np.float32)
    weights[:n] = row_weights / max(float(np.sum(row_weights)), 1e-12)
    lm_weights = lm_target_weights(lengths, width)
    lm_weights[n:] = 0.0
    lm_weights /= max(float(lm_weights.sum()), 1.0)
    return {"tokens": tokens, "lengths": lengths, "labels": lab, "row_weights": weights,
            "lm_weights": lm_weights}


def lm_target_weights(lengths: np.ndarray, width: int) -> np.ndarray:
    """float32 [B, W]: 1 where position t predicts a real token (t + 1 < length), else 0."""
    return (np.arange(width)[None, :] + 1 < lengths[:, None]).astype(np.float32)


def check_enough_texts(count: int, batch_size: int, source: str = "") -> None:
    """Refuses fewer training texts than one batch (``finetune`` asks before the workdir is
    touched: a previous run archived, folders made)."""
    if count < batch_size:
        raise DataError(f"{source}{': ' if source else ''}{count} training texts are fewer "
                        f"than one batch of train.batch_size={batch_size}")


class TrainBatches:
    """``batch(step)``: the global training batch of a step (see the module docstring)."""

    def __init__(self, data: Encoded, batch_size: int, *, seed: int, pad: int, bucket: int,
                 max_len: int | None, class_weights: np.ndarray | None = None) -> None:
        check_enough_texts(len(data), batch_size)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.pad, self.bucket, self.max_len = pad, bucket, max_len
        self.class_weights = class_weights
        self.steps_per_epoch = len(data) // batch_size
        self._lengths = np.asarray([len(x) for x in data.ids])
        self._epoch: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, B] text indices of each batch of ``epoch``."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            # the remainder left out before the pools are sorted: random texts (it was the
            # last pool's longest, under POOL batches of texts the same longest every epoch)
            perm = rng.permutation(len(self.data))[:self.steps_per_epoch * self.batch_size]
            pool = POOL * self.batch_size
            perm = np.concatenate([p[np.argsort(self._lengths[p], kind="stable")]
                                   for p in np.split(perm, range(pool, len(perm), pool))])
            batches = perm.reshape(-1, self.batch_size)
            self._epoch = (epoch, batches[rng.permutation(len(batches))])
        return self._epoch[1]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(step, self.steps_per_epoch)
        index = self._order(epoch)[k]
        labels = self.data.labels[index]
        weights = np.ones(len(index), np.float32)
        if self.class_weights is not None and labels.ndim == 1:
            weights = self.class_weights[labels].astype(np.float32)
        return make_batch([self.data.ids[i] for i in index], labels, self.batch_size, pad=self.pad,
                          bucket=self.bucket, max_len=self.max_len, row_weights=weights)


def class_weights_from(spec: str, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """"" -> None; "balanced" -> N / (K * count_k) (sklearn's); "w0,w1,..." -> those K weights."""
    spec = str(spec).strip()
    if not spec:
        return None
    if spec == "balanced":
        counts = (labels.sum(axis=0) if labels.ndim == 2
                  else np.bincount(labels, minlength=num_classes)).astype(np.float64)
        return (len(labels) / (num_classes * np.maximum(counts, 1.0))).astype(np.float32)
    try:
        w = np.asarray([float(x) for x in spec.split(",")], np.float32)
    except ValueError:
        raise DataError(f"finetune.class_weights must be 'balanced' or {num_classes} numbers, "
                        f"got {spec!r}") from None
    if len(w) != num_classes or not np.all(np.isfinite(w)) or np.any(w <= 0):
        # A weight of 0 made its class's texts count as filler rows in the logged accuracy;
        # nan or inf trained on a loss of nan and blamed optim.lr.
        raise DataError(f"finetune.class_weights has {len(w)} values; the task has {num_classes} "
                        f"classes (each weight > 0 and finite), got {spec!r}")
    return w


def pos_weights_from(spec: str, labels: np.ndarray) -> np.ndarray | None:
    """A multi-label task's weight on each label's positive term (PyTorch's ``pos_weight``):
    "" -> None; "balanced" -> negatives / positives of the label in ``labels`` [N, K] (a
    label without positives: N); "w0,w1,..." -> those K weights (each > 0)."""
    spec = str(spec).strip()
    if not spec:
        return None
    k = labels.shape[1]
    if spec == "balanced":
        positives = labels.sum(axis=0).astype(np.float64)
        return ((len(labels) - positives) / np.maximum(positives, 1.0)).astype(np.float32)
    try:
        w = np.asarray([float(x) for x in spec.split(",")], np.float32)
    except ValueError:
        raise DataError(f"finetune.pos_weights must be 'balanced' or {k} numbers, got {spec!r}") from None
    if len(w) != k or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"finetune.pos_weights has {len(w)} values; the task has {k} labels "
                        f"(each weight > 0), got {spec!r}")
    return w


def load_splits(ft: ml_collections.ConfigDict) -> tuple[dict[str, Labeled], int, list[str]]:
    """Labeled train/val(/test) checked against the task: (splits, classes, class names)."""
    if not ft.train or not ft.val:
        raise ConfigError("finetune.train and finetune.val must both be given")
    check_held_out(ft.train, ft.val, ft.test, ("finetune.train", "finetune.val", "finetune.test"),
                   "the best weights are chosen")
    hint = "set --config.finetune.text_column / --config.finetune.label_column"
    splits = {name: load_labeled(spec, text_column=ft.text_column, label_column=ft.label_column,
                                 column_hint=hint, label_setting="--config.finetune.label_column")
              for name, spec in (("train", ft.train), ("val", ft.val), ("test", ft.test)) if spec}
    names = splits["train"].label_names
    named = index_classes(splits)  # by name: ids in sorted order; a TFDS ClassLabel: its names
    if ft.multilabel:
        k, class_names = len(names), list(names)
    elif named is not None:
        k, class_names = len(named), named
        if ft.num_classes and ft.num_classes != k:
            raise ConfigError(f"finetune.num_classes={ft.num_classes}, and {ft.train} names "
                              f"{k} classes ({', '.join(named[:10])}): set 0 (from the names)")
    else:
        labels = splits["train"].labels
        if not ft.num_classes and labels.min() < 0:  # -1/1: "no text of class 0"; -1/0: "one class"
            raise DataError(f"{ft.train}: label column {names[0]!r} has negative values "
                            f"{sorted(set(labels[labels < 0].tolist()))[:5]}; class ids run from "
                            f"0 (labels -1 and 1? give 0 and 1)")
        k = ft.num_classes or int(labels.max()) + 1
        class_names = [str(i) for i in range(k)]
        if not ft.num_classes:  # K from the largest id: an id below it no text has is a gap
            absent = sorted(set(range(k)) - set(np.unique(splits["train"].labels).tolist()))
            if absent:  # labels 1..K (stars, AG News) made a class 0 that no text has
                raise DataError(
                    f"{ft.train}: label column {names[0]!r} has no text of class id(s) "
                    f"{absent[:5]}, below its largest, {k - 1}; class ids run from 0 (labels "
                    f"from 1? subtract 1): set finetune.num_classes={k} to keep a class no "
                    f"training text has")
    if k < 2:
        raise DataError(f"{ft.train}: one class only; classification needs two or more")
    origin = ("finetune.num_classes" if ft.num_classes and named is None else
              f"the class names of {ft.train}" if named is not None else
              f"finetune.num_classes=0: the largest label of {ft.train}")
    for d in splits.values():
        check_labels(d.labels, ft.multilabel, k, d.source, d.label_names, origin)
    constant_labels(splits["train"])  # said once; their thresholds stay 0.5 (the loop)
    return splits, k, class_names
