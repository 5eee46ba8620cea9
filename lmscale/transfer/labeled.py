"""Labeled text for classification: CSV / JSONL files, or TFDS data sets (optional extra).

``load_labeled("train.csv", text_column="sentence", label_column="label")`` returns the
texts and their labels. Several label columns (comma separated) give multi-label data
[N, K]. Errors name the file, the row and what is there instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from lmscale.data.compression import READ_ERRORS, format_extension, open_input
from lmscale.data.csv_rows import csv_rows, not_utf8
from lmscale.data.input_checks import unreadable
from lmscale.data.errors import DataError, cr_lines_hint, json_kind
from lmscale.data.tfds import (PREFIX, class_label_names, is_tfds, iter_examples, parse_tfds,
                               text_feature)


@dataclasses.dataclass
class Labeled:
    """texts [N]; labels int64 [N] (one column) or [N, K] (several); the source, for messages;
    ``class_names``: the names of class ids 0..K-1 where the data declares them (a TFDS
    ClassLabel: sst2's "negative", "positive"), else None."""
    texts: list[str]
    labels: np.ndarray
    source: str
    label_names: list[str]
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """sha256 of the texts and labels in order: the same data read under another path
        ("./v.csv", an absolute path, a link) has the same one, an edited file another."""
        h = hashlib.sha256()
        for text in self.texts:
            b = text.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little") + b)
        h.update(str(self.labels.dtype).encode() + repr(self.labels.shape).encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


def label_columns(label_column: str) -> list[str]:
    """The label column names of a comma-separated ``label_column`` (two or more: multi-label);
    DataError if one is named twice ("label,label" became a two-label task of one label)."""
    names = [c.strip() for c in label_column.split(",") if c.strip()]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DataError(f"label column(s) {', '.join(map(repr, twice))} named twice in "
                        f"{label_column!r}")
    return names


def load_labeled(spec: str | os.PathLike[str], *, text_column: str = "sentence",
                 label_column: str = "label", column_hint: str = "",
                 label_setting: str = "--label_column") -> Labeled:
    """Reads ``spec``: a .csv/.tsv/.jsonl file, or ``tfds:NAME/SPLIT`` (tensorflow-datasets).
    ``column_hint``: appended to a missing column's error, the settings that name the columns
    (e.g. "set --text_column / --label_column"); ``label_setting``: the setting that names
    the label columns, as the caller's user sets it (``--labels`` of lmscale.classify,
    ``--config.finetune.label_column`` of a fine-tune)."""
    spec = os.fspath(spec)  # a pathlib.Path from a notebook: was an AttributeError (startswith)
    hint = f" ({column_hint})" if column_hint else ""
    label_names = label_columns(label_column)
    if not label_names:
        raise DataError("no label column given")
    class_names, lines = None, None
    if is_tfds(spec):  # " tfds:..." (prepare's is_tfds strips it) was "no such file"
        spec = spec.strip()
        texts, rows = read_tfds(spec[len("tfds:"):], text_column, label_names, hint,
                                label_setting)
        if len(label_names) == 1:
            class_names = class_label_names(spec, label_names[0])
    else:
        if not os.path.exists(spec):
            from lmscale.datasets import fetch_hint
            raise DataError(f"{spec}: no such file{fetch_hint(spec)}")
        ext = format_extension(spec)  # reviews.csv.gz: ".csv"
        if ext in (".csv", ".tsv"):
            texts, rows, lines = _read_csv(spec, text_column, label_names,
                                           "\t" if ext == ".tsv" else ",", column_hint)
        elif ext in (".jsonl", ".json"):
            texts, rows, lines = _read_jsonl(spec, text_column, label_names, hint)
        else:
            raise DataError(f"{spec}: unsupported file type {ext!r}; expected .csv, .tsv or .jsonl "
                            "(or tfds:NAME/SPLIT)")
    if not texts:
        raise DataError(f"{spec}: no rows")
    return Labeled(texts=texts, labels=_label_array(rows, spec, label_names, lines), source=spec,
                   label_names=label_names, class_names=class_names)


MAX_CLASS_NAMES = 100  # distinct class names a label column may hold (more: text, or ids)


def _label_array(rows: list[list[int | str]], spec: str, names: list[str],
                 lines: list[int] | None = None) -> np.ndarray:
    """int64 labels [N] or [N, K]; one column of class names: str [N] (``index_classes``
    numbers them; ``lines``: each row's line in ``spec``, named in errors). DataError for
    names in a multi-label column, a column mixing ids and names, or more than
    MAX_CLASS_NAMES names or than 10 and half the rows (a text column named as the label)."""
    def at(i: int) -> str:  # "FILE:LINE" of row i, where lines are known
        return f"{spec}:{lines[i]}" if lines is not None else spec

    for k, name in enumerate(names):
        given = [r[k] for r in rows if isinstance(r[k], str)]
        if not given:
            continue
        first = next(i for i, r in enumerate(rows) if isinstance(r[k], str))
        if len(names) > 1:
            raise DataError(f"{at(first)}: label column {name!r} has {given[0]!r}; multi-label "
                            f"columns must be 0 or 1")
        if len(given) < len(rows):
            ids = [i for i, r in enumerate(rows) if not isinstance(r[k], str)]
            # the fewer kind is the odd one out (a typo "1O" among ids): its first row named
            odd, example, kind, other = (
                (first, ids[0], "a class name", "class ids") if len(given) <= len(ids)
                else (ids[0], first, "a class id", "class names"))
            raise DataError(f"{at(odd)}: label column {name!r} is {rows[odd][k]!r}, {kind}, and "
                            f"{max(len(ids), len(given))} of {len(rows)} rows hold {other} "
                            f"(e.g. {rows[example][k]!r}): give one or the other")
        distinct = sorted(set(given))
        if len(distinct) > MAX_CLASS_NAMES or len(distinct) > max(10, len(rows) // 2):
            raise DataError(f"{spec}: label column {name!r} has {len(distinct)} distinct "
                            f"values that are no numbers in {len(rows)} rows ({distinct[0]!r}, "
                            f"...): a text column? class names are at most {MAX_CLASS_NAMES}, "
                            f"and fewer than half the rows; give ids 0, 1, ...")
        return np.asarray(given, dtype=str)
    labels = np.asarray(rows, dtype=np.int64)
    return labels[:, 0] if labels.shape[1] == 1 else labels


def index_classes(splits: dict[str, Labeled], known: Sequence[str] | None = None
                  ) -> list[str] | None:
    """Numbers class names: each split's str labels become ids 0..K-1 in place, by the
    sorted names of ``splits["train"]`` (or ``known``: a saved classifier's classes);
    returns the names. Labels that are ids already: the names the training data declares
    for them (a TFDS ClassLabel's, in its order), else None. Every split must give its
    classes the same way: DataError naming the file and the name not among them."""
    named = {n: d for n, d in splits.items() if d.labels.dtype.kind == "U"}
    if not named:
        return None if known is not None else declared_classes(splits)
    if len(named) < len(splits):
        ids, names = (sorted(set(splits) - set(named))[0], sorted(named)[0])
        raise DataError(f"{splits[names].source} labels its classes by name and "
                        f"{splits[ids].source} by id: give both the same way")
    classes = list(known) if known is not None else sorted(set(splits["train"].labels.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    for d in named.values():
        unknown = sorted(set(d.labels.tolist()) - set(index))
        if unknown:
            whose = "the classifier's" if known is not None else "those of the training texts"
            raise DataError(f"{d.source}: class {unknown[0]!r} is not one of the classes "
                            f"{classes[:10]} ({whose})")
        d.labels = np.asarray([index[c] for c in d.labels.tolist()], dtype=np.int64)
    return classes


def declared_classes(splits: dict[str, Labeled]) -> list[str] | None:
    """The class names ``splits["train"]`` declares for its ids (None: none declared);
    DataError where another split declares other names for the same ids."""
    train = splits["train"].class_names
    for d in splits.values():
        if train is not None and d.class_names is not None and d.class_names != train:
            raise DataError(f"{d.source} names its classes {d.class_names[:10]}, "
                            f"{splits['train'].source} {train[:10]}: the same ids must name "
                            "the same classes")
    return train


def require_binary(data: Labeled, label_column: str) -> None:
    """Raises unless ``data`` has one label column with exactly the values {0, 1}."""
    if data.labels.ndim != 1:
        raise DataError(f"{data.source}: {len(data.label_names)} label columns given; this needs "
                        "one binary label column")
    values = sorted(set(int(v) for v in np.unique(data.labels)))
    if values != [0, 1]:
        raise DataError(f"{data.source}: label column {label_column!r} has values {values[:10]}; "
                        "binary classification needs exactly two classes, 0 and 1")


def _label(value: Any, where: str, column: str) -> int | str:
    """A class id: an integer, or a number or text of one ("1", "1.0"); or a class name, text
    that is no number ("positive": ``index_classes`` numbers the names). A fraction, a number
    past 2^31 (1e20 overflowed the int64 array with no file named), an empty label or one
    that is neither (null, a list) is a DataError at ``where``; "1_0", which Python's float()
    reads as 10, is a name."""
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: label {column!r} is empty")
    try:
        f = float(value)
        if isinstance(value, str) and "_" in value:  # float("1_0") == 10.0
            raise ValueError(value)
    except (TypeError, ValueError):
        if isinstance(value, str):
            return value.strip()  # a class name
        raise DataError(f"{where}: label {column!r} is {value!r}, not a number") from None
    if not math.isfinite(f) or f != int(f) or abs(f) >= 2 ** 31:  # nan, inf: int() raises
        raise DataError(f"{where}: label {column!r} is {value!r}, not an integer class id")
    return int(f)


def checked_text(text: str, where: str, row: int, column: str) -> str:
    """``text``, unless it is empty or only whitespace (a blank cell: a word model reads no
    token of it): then an error at ``where`` (file:line), row ``row`` (the data rows counted
    from 1). Transfer, fine-tuning and classify read texts through this."""
    if not text:
        raise DataError(f"{where}: row {row} has an empty {column!r}; every text needs at "
                        "least one character")
    if not text.strip():
        shown = repr(text) if len(text) <= 20 else f"{len(text)} whitespace characters"
        raise DataError(f"{where}: row {row} has only whitespace in {column!r} ({shown}); "
                        "every text needs a character other than whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" in JSON): no UTF-8 for it
        raise DataError(f"{where}: row {row} has {text[e.start:e.end]!r} at character {e.start} "
                        f"of {column!r}, a lone UTF-16 surrogate with no UTF-8 encoding (JSON "
                        f"escapes a character outside the BMP as a pair: \\ud83d\\ude00)") from None
    return text


def _read_csv(path: str, text_column: str, label_names: list[str], delimiter: str,
              column_hint: str = "") -> tuple[list[str], list[list[int]], list[int]]:
    texts, rows, lines = [], [], []
    for line, row in csv_rows(path, [text_column, *label_names], delimiter,
                              column_hint=column_hint):
        texts.append(checked_text(row[text_column], f"{path}:{line}", len(texts) + 1, text_column))
        rows.append([_label(row[c], f"{path}:{line}", c) for c in label_names])
        lines.append(line)
    return texts, rows, lines


def jsonl_records(path: str, text_field: str, other_fields: Sequence[str] = (), hint: str = ""
                  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file, each holding
    ``text_field`` as a string and ``other_fields``; DataError naming the file and line of bad
    JSON, of a line that is not a JSON object, of a missing field (with the keys there and
    ``hint``) and of a text that is not a string (null)."""
    fields = (f"the field {text_field!r}" if not other_fields else "the text and label fields")
    try:
        yield from _jsonl_objects(path, text_field, other_fields, hint, fields)
    except UnicodeDecodeError as e:
        raise DataError(not_utf8(path, e)) from None
    except READ_ERRORS as e:  # a damaged .gz
        error = unreadable(path, e)
        if error is None:
            raise
        raise error from None


def _jsonl_objects(path: str, text_field: str, other_fields: Sequence[str], hint: str,
                   fields: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # utf-8-sig: a byte order mark is read as nothing, as in a CSV file and a prepared corpus
    # newline="\n": a line ends at LF only, as JSONL's lines (and prepare's reader): a CR is
    # JSON whitespace, which universal newlines split a record at ("bad JSON")
    read = (text_field, *other_fields)
    repeated: list[list[str]] = []  # a line's objects' repeated keys, the outermost last
    hook = functools.partial(_object, repeated=repeated)
    with open_input(path, "r", encoding="utf-8-sig", newline="\n") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            repeated.clear()
            try:
                obj = json.loads(line, object_pairs_hook=hook)
            except ValueError as e:  # also an integer of over 4300 digits: no JSONDecodeError
                raise DataError(f"{path}:{i}: bad JSON ({getattr(e, 'msg', e)})"
                                f"{cr_lines_hint(line, e)}") from None
            twice = [k for k in (repeated[-1] if repeated else ()) if k in read]
            if isinstance(obj, dict) and twice:  # json keeps the last value, silently
                raise DataError(f"{path}:{i}: the field {twice[0]!r} is given twice in one "
                                f"object; give it once, so that it is clear which value to read")
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: {json_kind(obj)}, not a JSON object; each line "
                                f"must be one object with {fields}")
            for key in [text_field, *other_fields]:
                if key not in obj:
                    raise DataError(f"{path}:{i}: no field {key!r}; keys are {sorted(obj)}{hint}")
            if not isinstance(obj[text_field], str):
                raise DataError(f"{path}:{i}: field {text_field!r} is "
                                f"{json_kind(obj[text_field])}, not a string")
            yield i, obj


def _object(pairs: list[tuple[str, Any]], repeated: list[list[str]]) -> dict[str, Any]:
    """A JSON object's dict, its repeated keys appended to ``repeated`` (inner objects are
    built first: the outermost object's come last)."""
    out: dict[str, Any] = {}
    twice = []
    for key, value in pairs:
        if key in out:
            twice.append(key)
        out[key] = value
    repeated.append(twice)
    return out


def _read_jsonl(path: str, text_field: str, label_names: list[str], hint: str = ""
                ) -> tuple[list[str], list[list[int]], list[int]]:
    texts, rows, lines = [], [], []
    for i, obj in jsonl_records(path, text_field, label_names, hint):
        texts.append(checked_text(obj[text_field], f"{path}:{i}", len(texts) + 1, text_field))
        rows.append([_label(obj[k], f"{path}:{i}", k) for k in label_names])
        lines.append(i)
    return texts, rows, lines


def read_tfds(name: str, text_key: str, label_names: list[str], hint: str = "",
              label_setting: str = "--label_column") -> tuple[list[str], list[list[int]]]:
    """Texts and label rows of ``NAME/SPLIT`` (e.g. ``glue/sst2/validation``: the last part is
    the split); no ``label_names``: texts alone (rows empty)."""
    spec = PREFIX + name
    parse_tfds(spec)
    texts, rows = [], []
    for ex in iter_examples(spec):
        for key in [text_key, *label_names]:
            if key not in ex:
                raise DataError(f"tfds:{name}: no feature {key!r}; features are {sorted(ex)}{hint}")
        text = text_feature(ex, text_key, spec)  # a number or an array is no text
        texts.append(checked_text(text, f"tfds:{name}", len(texts) + 1, text_key))
        rows.append([_tfds_label(ex[k], f"tfds:{name}: row {len(texts)}", k, label_setting)
                     for k in label_names])
    return texts, rows


def _tfds_label(value: Any, where: str, key: str, label_setting: str = "--label_column") -> int:
    """A tfds label feature's class id: a scalar integer (a ClassLabel, an int); a float
    that is an integer; text of one. A sequence or a fraction is a one-line DataError."""
    if isinstance(value, (list, tuple)):  # an ArrayRecord data source's sequence feature
        value = np.asarray(value)
    if getattr(value, "ndim", 0) != 0:
        raise DataError(f"{where}: label {key!r} is an array of shape {tuple(value.shape)}, not one "
                        f"class id (several 0/1 label features: {label_setting}=a,b,c)")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return _label(value, where, key)


SEVERAL_COLUMNS_HINT = "set finetune.multilabel=true for several 0/1 columns"


def constant_columns(labels: np.ndarray) -> list[int]:
    """The columns of 0/1 labels [N, K] that hold one value in every row."""
    return [j for j in range(labels.shape[1]) if len(np.unique(labels[:, j])) == 1]


def constant_labels(train: Labeled, note: bool = True) -> list[int]:
    """The multi-label columns [N, K] of ``train`` that hold one value in every text (an
    emotion no training tweet has): nothing can be learned for them, so they keep a threshold
    of 0.5 (their train value) rather than one tuned on val's rate. ``note``: say so."""
    constant = constant_columns(train.labels) if train.labels.ndim == 2 else []
    for j in constant if note else ():
        value = int(train.labels[0, j])
        print(f"note: {train.source}: label column {train.label_names[j]!r} is {value} in every "
              f"text: it is predicted {'for every text' if value else 'for no text'}",
              file=sys.stderr, flush=True)
    return constant


def check_labels(labels: np.ndarray, multilabel: bool, num_classes: int, source: str,
                 names: Sequence[str], classes_from: str = "the task",
                 several_columns_hint: str = SEVERAL_COLUMNS_HINT) -> None:
    """Raises DataError naming the file and column unless the labels fit the task;
    ``classes_from`` says where ``num_classes`` came from; ``several_columns_hint``, what to do
    about several label columns given to a single-label task."""
    if multilabel:
        if labels.ndim != 2:
            labels = labels.reshape(len(labels), -1)
        for k, name in enumerate(names):
            bad = sorted(set(np.unique(labels[:, k]).tolist()) - {0, 1})
            if bad:
                raise DataError(f"{source}: label column {name!r} has values {bad[:5]}; "
                                "multi-label columns must be 0 or 1")
        return
    if labels.ndim != 1:
        raise DataError(f"{source}: {len(names)} label columns given ({', '.join(names)}); "
                        f"single-label needs one ({several_columns_hint})")
    bad = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
    if bad:
        raise DataError(f"{source}: label column {names[0]!r} has values {bad[:5]} outside the "
                        f"classes 0..{num_classes - 1} (of {classes_from}); class ids run from 0")


def check_held_out(train: str, val: str | None, test: str | None, names: Sequence[str],
                   chooses: str) -> None:
    """Refuses a test split that is the training file (its score would be the training
    fit's); notes a val split that is (``chooses``, what val picks, is then picked on the
    texts fitted: a smoke test may mean it). ``names``: how the caller names train, val and
    test (``--train``, or ``finetune.train``)."""
    def same(a: str, b: str) -> bool:
        return a == b or (os.path.isfile(a) and os.path.isfile(b) and os.path.samefile(a, b))

    if val and same(train, val):
        from lmscale.messages import for_caller
        print(for_caller(f"note: {names[1]}={val} is the {names[0]} file: {chooses}, and val "
                         f"scores reported, on the texts the classifier is fit on; give held-out "
                         f"texts for a meaningful choice"), file=sys.stderr, flush=True)
    if test and same(train, test):
        raise DataError(f"{names[2]}={test} is the {names[0]} file: its scores would be "
                        f"measured on the texts the classifier was fit on; give held-out texts "
                        f"or leave {names[2]} out")
