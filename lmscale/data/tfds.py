"""TensorFlow Datasets inputs, ``tfds:NAME/SPLIT`` (the optional extra ``lmscale[tfds]``).

Used by data preparation (a text feature per example, streamed) and by
``lmscale.transfer`` (labeled examples).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from lmscale.data.errors import DataError

PREFIX = "tfds:"


def is_tfds(spec: Any) -> bool:
    """Whether ``spec`` is a ``tfds:NAME/SPLIT`` input."""
    return isinstance(spec, str) and spec.strip().startswith(PREFIX)


def parse_tfds(spec: str) -> tuple[str, str]:
    """``tfds:NAME/SPLIT`` -> (NAME, SPLIT); the last ``/`` part is the split."""
    name = spec.strip()[len(PREFIX):] if is_tfds(spec) else spec
    dataset_name, _, split = name.rpartition("/")
    if not dataset_name or not split:
        raise DataError(f"{PREFIX}{name}: expected tfds:NAME/SPLIT, e.g. tfds:glue/sst2/validation")
    return dataset_name, split


def import_tfds() -> Any:
    """The ``tensorflow_datasets`` module, or a one-line DataError saying how to install it.
    TensorFlow's C++ INFO/WARNING lines (its CPU-feature banner) are off unless
    ``TF_CPP_MIN_LOG_LEVEL`` is set (TFDS's own INFO lines: the tools' absl level, WARNING)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF 2.21 prints its oneDNN banner anyway
    try:
        import tensorflow_datasets
    except ImportError:
        raise DataError("tfds: data needs the optional extra: pip install 'lmscale[tfds]' "
                        "(from a clone: pip install -e \".[tfds]\")") from None
    return tensorflow_datasets


def _first_line(error: BaseException) -> str:
    """The error's first line, with the lines after it where it ends in a colon (a list it
    introduces) and TFDS's "Did you mean" line, joined by "; "."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    said = lines[:4] if lines[0].endswith(":") else lines[:1]
    said += [line for line in lines[len(said):] if line.startswith("Did you mean")]
    return "; ".join(said)


def _data_dir(tfds: Any) -> str:
    """Where TFDS looks for prepared data: TFDS_DATA_DIR as it was when TFDS was imported."""
    return str(tfds.core.constants.DATA_DIR)


def _builder(spec: str, dataset_name: str, tfds: Any) -> Any:
    """The builder of ``NAME[/CONFIG][:VERSION]``, prepared (downloaded by TFDS if it is a
    catalog data set not yet on disk); one-line DataErrors for a name, config or version
    that is not there and for a failed download."""
    try:
        builder = tfds.builder(dataset_name)
    except tfds.core.registered.DatasetNotFoundError:
        data_dir = _data_dir(tfds)
        base = dataset_name.split("/")[0].split(":")[0]
        folder = os.path.join(data_dir, base)
        there = sorted(f for f in os.listdir(folder) if not f.startswith(".")) if os.path.isdir(folder) else []
        found = (f"; {folder} holds {', '.join(there)} (configs or versions: NAME/CONFIG:VERSION)"
                 if there else "")
        raise DataError(f"{spec}: TensorFlow Datasets has no data set {dataset_name!r} (not in its "
                        f"catalog, nor prepared under {data_dir}, set by TFDS_DATA_DIR){found}") from None
    except Exception as e:  # a catalog builder that fails to load (a missing dependency)
        raise DataError(f"{spec}: TensorFlow Datasets cannot load {dataset_name!r}: "
                        f"{_first_line(e)}") from None
    if not builder.is_prepared():
        print(f"note: {spec}: downloading and preparing {dataset_name} into {_data_dir(tfds)} "
              "(TensorFlow Datasets; once)", file=sys.stderr, flush=True)
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise DataError(f"{spec}: TensorFlow Datasets could not download and prepare "
                            f"{dataset_name!r}: {type(e).__name__}: {_first_line(e)} (without "
                            f"internet: `tfds build {dataset_name} --data_dir=DIR` on a machine "
                            f"with it, then copy DIR here and set TFDS_DATA_DIR to it)") from None
    return builder


def _split_size(spec: str, builder: Any, split: str) -> int:
    """Examples in ``split`` (slices and ``a+b`` included); DataError for an unknown or
    malformed split, or one with no examples."""
    names = sorted(builder.info.splits)
    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
        known = f"unknown split {split!r}" if "Unknown split" in str(e) else (
            f"bad split {split!r} ({_first_line(e).split(' See format')[0]})")
        raise DataError(f"{spec}: {known}; the splits are {', '.join(names)} (slices: "
                        "train[:10%], train[100:200], train+test)") from None
    if not size:
        raise DataError(f"{spec}: split {split!r} has no examples (the splits are "
                        f"{', '.join(f'{n} ({builder.info.splits[n].num_examples})' for n in names)})")
    return size


def check_tfds(spec: str) -> tuple[Any, Any, str]:
    """That ``tfds:NAME/SPLIT`` names a data set and a split with examples (one-line
    DataErrors; prepare asks before any input is read: a bad --val split was said after the
    training text was tokenized); returns (the tfds module, the builder, the split)."""
    dataset_name, split = parse_tfds(spec)
    tfds = import_tfds()
    builder = _builder(spec, dataset_name, tfds)
    _split_size(spec, builder, split)
    return tfds, builder, split


def iter_examples(spec: str) -> Iterator[dict[str, Any]]:
    """The examples of ``tfds:NAME/SPLIT`` as dicts of NumPy values, streamed: ArrayRecord
    data through a data source (no TensorFlow), TFRecord data through tf.data."""
    tfds, builder, split = check_tfds(spec)
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        yield from batched_reads(builder.as_data_source(split=split))
        return
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError(f"{spec}: this data set is stored as {builder.info.file_format.value} files, "
                        "which TensorFlow Datasets reads with TensorFlow: pip install tensorflow-cpu "
                        "(or tensorflow)") from None
    yield from tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))


def class_label_names(spec: str, key: str) -> list[str] | None:
    """The class names of ``tfds:NAME/SPLIT``'s feature ``key`` where it is a ClassLabel
    (sst2's label: ["negative", "positive"], class id i named names[i]), else None."""
    tfds, builder, _ = check_tfds(spec)
    feature = builder.info.features[key] if key in builder.info.features else None
    if isinstance(feature, tfds.features.ClassLabel) and feature.num_classes:
        return [str(n) for n in feature.names]
    return None


def batched_reads(source: Any, size: int = 1024) -> Iterator[Any]:
    """The records of a TFDS data source in order, read ``size`` at a time (one by one, a
    57 MB ArrayRecord corpus took 30 s to read against 3 s for the same text as JSONL)."""
    for start in range(0, len(source), size):
        yield from source.__getitems__(list(range(start, min(start + size, len(source)))))


def text_feature(example: dict[str, Any], key: str, spec: str) -> str:
    """The text feature ``key`` of one example (bytes are decoded as UTF-8)."""
    if key not in example:
        raise DataError(f"{spec}: no feature {key!r}; features are {sorted(example)} (the "
                        f"text's: --text_field, or data.text_field)")
    value = example[key]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise DataError(f"{spec}: feature {key!r} is a {type(value).__name__}, not text")
    return value


def iter_text(examples: Iterator[dict[str, Any]], key: str, spec: str) -> Iterator[bytes]:
    """The non-empty texts of feature ``key`` of ``examples``, as UTF-8 bytes."""
    for example in examples:
        text = text_feature(example, key, spec)
        if text:
            yield text.encode("utf-8")
