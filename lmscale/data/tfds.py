"""TensorFlow Datasets inputs, ``tfds:NAME/SPLIT`` (the optional extra ``lmscale[tfds]``).

Used by data preparation (a text feature per example, streamed) and by
``lmscale.transfer`` (labeled examples).
"""

from __future__ import annotations

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
    """The ``tensorflow_datasets`` module, or a one-line DataError saying how to install it."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise DataError("tfds: data needs the optional extra: pip install 'lmscale[tfds]' "
                        "(from a clone: pip install -e \".[tfds]\")") from None
    return tensorflow_datasets


def iter_examples(spec: str) -> Iterator[dict[str, Any]]:
    """The examples of ``tfds:NAME/SPLIT`` as dicts of NumPy values, streamed."""
    dataset_name, split = parse_tfds(spec)
    tfds = import_tfds()
    yield from tfds.as_numpy(tfds.load(dataset_name, split=split))


def text_feature(example: dict[str, Any], key: str, spec: str) -> str:
    """The text feature ``key`` of one example (bytes are decoded as UTF-8)."""
    if key not in example:
        raise DataError(f"{spec}: no feature {key!r}; features are {sorted(example)}")
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
