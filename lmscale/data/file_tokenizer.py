"""The base of the tokenizers defined by the bytes of one file (``FileTokenizer``: the
SentencePiece and word tokenizers), and the smallest unsigned dtype that holds a vocabulary's
ids (shards are stored in it). Shared by ``tokenizer`` (the byte tokenizer and
``tokenizer_from_dict``), ``spm`` and ``words``, which import it, not each other."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from lmscale.atomic import atomic_write, within_folder
from lmscale.data.errors import DataError


def write_file_once(path: str, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` atomically (a temporary file renamed), unless the file
    already holds exactly it: how a tokenizer's model/vocabulary file is saved with a run."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == payload:
                return
        import sys  # another file in its place (hand-replaced, damaged): replaced, said so
        print(f"note: {path} differed from the run's tokenizer; written again from its own copy",
              file=sys.stderr)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(payload)


class FileTokenizer:
    """Base of the tokenizers defined by the bytes of one file (a SentencePiece model, a word
    vocabulary): ``save`` writes them as ``file_name`` beside a run, and two tokenizers are
    equal when their bytes are (``sha256``)."""

    file_name: str  # the file ``save`` writes into a directory
    kind: str  # its "kind" in a tokenizer description (``to_dict``)
    file_key: str  # the description's key naming the file
    noun: str  # what the file is, for messages ("SentencePiece model")

    def _set_payload(self, payload: bytes) -> None:
        self.payload = bytes(payload)
        self.sha256 = hashlib.sha256(self.payload).hexdigest()

    def save(self, directory: str) -> None:
        """Writes ``directory/<file_name>`` (atomically; kept if already identical)."""
        write_file_once(os.path.join(directory, self.file_name), self.payload)

    @classmethod
    def from_file(cls, path: str) -> "FileTokenizer":
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | None) -> "FileTokenizer":
        """Loads ``base_dir/<d[file_key]>`` (a description from ``to_dict``) and checks its
        SHA-256 and vocabulary size against the description's; DataError names the file."""
        unknown = set(d) - {"kind", cls.file_key, "sha256", "vocab_size"}
        if unknown:
            raise DataError(f"unknown keys {sorted(unknown)} in {cls.kind} tokenizer description")
        name = d.get(cls.file_key)
        if not within_folder(name):  # a file inside the folder
            raise DataError(f"{cls.kind} tokenizer description needs a relative file name in "
                            f"{cls.file_key!r}, got {name!r}")
        if base_dir is None:
            raise DataError(f"{cls.kind} tokenizer: the folder holding {name} is not known (base_dir)")
        path = os.path.join(base_dir, name)
        if not os.path.isfile(path):
            raise DataError(f"{cls.noun} {path} is missing")
        tok = cls.from_file(path)
        if d.get("sha256") is not None and d["sha256"] != tok.sha256:
            raise DataError(f"{cls.noun} {path} has SHA-256 {tok.sha256[:12]}…, the description "
                            f"says {str(d['sha256'])[:12]}…: the file was changed or replaced")
        if d.get("vocab_size") is not None and d["vocab_size"] != tok.vocab_size:
            raise DataError(f"{cls.noun} {path} has {tok.vocab_size} ids, the description says "
                            f"{d['vocab_size']}")
        return tok

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def smallest_uint_dtype(vocab_size: int) -> type:
    """The smallest unsigned NumPy dtype holding ids ``[0, vocab_size)``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= int(np.iinfo(dtype).max) + 1:
            return dtype
    raise DataError(f"vocabulary of {vocab_size} ids does not fit in uint32")


def ids_to_decode(ids: Any, pad_id: int | None, first: int, vocab_size: int,
                  tokenizer: str, ids_are: str) -> np.ndarray:
    """``ids`` (any integer array-like) as flat int64 without ``pad_id``; DataError for ids
    that are not integers or fall outside ``[first, vocab_size)``: "token id N out of range
    for TOKENIZER (IDS_ARE)"."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"token ids must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1).astype(np.int64)
    if pad_id is not None:
        arr = arr[arr != pad_id]
    bad = (arr < first) | (arr >= vocab_size)
    if bad.any():
        raise DataError(f"token id {int(arr[bad][0])} out of range for {tokenizer} ({ids_are})")
    return arr
