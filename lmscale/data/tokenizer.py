"""Tokenizers: text <-> token ids, with the id mapping kept explicit.

Every tokenizer has the same interface (what data preparation, training, eval, transfer
and generation use): ``vocab_size``, ``pad_id`` (int or None), ``token_dtype`` (the
smallest unsigned dtype holding every id: shards are stored in it), ``encode(text) -> ids``,
``decode(ids) -> str``, ``byte_lengths() -> int32 [vocab_size]`` (UTF-8 bytes of text each
id stands for, 0 for padding/control ids: bits per character are counted per byte with
it, so they compare across tokenizers), ``to_dict()`` (JSON description) and
``save(directory)`` (writes any files the description refers to, e.g. a model file, into
``directory``); ``tokenizer_from_dict(d, base_dir)`` rebuilds one, reading those files from
``base_dir``.

Two mappings are in use for byte-level mLSTMs:

* sentiment-discovery (NVIDIA): id = byte + 1, id 0 is padding, vocabulary 257 (default);
* OpenAI's released model: id = byte, no padding, vocabulary 256.

Subwords: ``lmscale.data.spm.SentencePieceTokenizer`` (id = piece + 1, id 0 is padding).
Words: ``lmscale.data.words.WordTokenizer`` (0 padding, 1 ``<unk>``, 2 ``<eos>``, then words).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lmscale.atomic import atomic_write
from lmscale.data.errors import DataError


def write_file_once(path: str, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` atomically (a temporary file renamed), unless the file
    already holds exactly it: how a tokenizer's model/vocabulary file is saved with a run."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == payload:
                return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(payload)


class FileTokenizer:
    """Base of the tokenizers defined by the bytes of one file (a SentencePiece model, a word
    vocabulary): ``save`` writes them as ``file_name`` beside a run, and two tokenizers are
    equal when their bytes are (``sha256``)."""

    file_name: str  # the file ``save`` writes into a directory

    def _set_payload(self, payload: bytes) -> None:
        self.payload = bytes(payload)
        self.sha256 = hashlib.sha256(self.payload).hexdigest()

    def save(self, directory: str) -> None:
        """Writes ``directory/<file_name>`` (atomically; kept if already identical)."""
        write_file_once(os.path.join(directory, self.file_name), self.payload)

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


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer provides (see the module docstring)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int | None: ...
    @property
    def token_dtype(self) -> type: ...
    def encode(self, text: str | bytes) -> np.ndarray: ...
    def decode(self, ids: Any) -> str: ...
    def byte_lengths(self) -> np.ndarray: ...
    def to_dict(self) -> dict[str, Any]: ...
    def save(self, directory: str) -> None: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """Maps bytes to ids ``byte + offset``; ``pad_id`` (if any) is never a byte's id."""

    offset: int = 1
    pad_id: int | None = 0

    def __post_init__(self) -> None:
        if not isinstance(self.offset, int) or not 0 <= self.offset <= 256:
            raise DataError(f"byte tokenizer offset must be an int in [0, 256], got {self.offset!r}")
        if self.pad_id is not None:
            if not isinstance(self.pad_id, int) or not 0 <= self.pad_id < self.vocab_size:
                raise DataError(f"byte tokenizer pad_id must be in [0, {self.vocab_size}), got {self.pad_id!r}")
            if self.offset <= self.pad_id:
                raise DataError(f"byte tokenizer pad_id {self.pad_id} collides with byte ids "
                                f"[{self.offset}, {self.offset + 255}]")

    @classmethod
    def sentiment_discovery(cls) -> "ByteTokenizer":
        """id = byte + 1, pad = 0, vocabulary 257."""
        return cls(offset=1, pad_id=0)

    @classmethod
    def openai(cls) -> "ByteTokenizer":
        """id = byte, no padding, vocabulary 256."""
        return cls(offset=0, pad_id=None)

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    @property
    def token_dtype(self) -> type:
        """uint16 for 257 ids, uint8 for OpenAI's 256 (``encode`` still returns uint16)."""
        return smallest_uint_dtype(self.vocab_size)

    def byte_lengths(self) -> np.ndarray:
        """int32 [vocab_size]: 1 for each byte id, 0 for padding."""
        lengths = np.zeros(self.vocab_size, np.int32)
        lengths[self.offset:] = 1
        return lengths

    def save(self, directory: str) -> None:
        """Nothing to write: the description is the whole tokenizer."""

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids [len(bytes)] uint16 of ``text`` (a str is encoded as UTF-8)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        if self.offset:
            ids += np.uint16(self.offset)
        return ids

    def decode_bytes(self, ids: Any) -> bytes:
        """The bytes of ``ids`` (any int array-like), dropping pad ids."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return b""
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"token ids must be integers, got dtype {arr.dtype}")
        arr = arr.reshape(-1).astype(np.int64)
        if self.pad_id is not None:
            arr = arr[arr != self.pad_id]
        bad = (arr < self.offset) | (arr >= self.vocab_size)
        if bad.any():
            raise DataError(f"token id {int(arr[bad][0])} out of range for byte tokenizer "
                            f"(byte ids are [{self.offset}, {self.vocab_size - 1}])")
        return (arr - self.offset).astype(np.uint8).tobytes()

    def decode(self, ids: Any) -> str:
        """Text of ``ids``; invalid UTF-8 is replaced (never an error for a byte model)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; see ``tokenizer_from_dict``."""
        return {"kind": "byte", "offset": self.offset, "pad_id": self.pad_id}


def tokenizer_from_dict(d: dict[str, Any], base_dir: str | None = None) -> Tokenizer:
    """Rebuilds a tokenizer from ``to_dict()`` output (kinds: "byte", "sentencepiece", "word"); files
    it names are read from ``base_dir`` (the dataset or workdir the description came from)."""
    if not isinstance(d, dict):
        raise DataError(f"tokenizer description must be a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind == "byte":
        unknown = set(d) - {"kind", "offset", "pad_id"}
        if unknown:
            raise DataError(f"unknown keys {sorted(unknown)} in byte tokenizer description")
        return ByteTokenizer(offset=d.get("offset", 1), pad_id=d.get("pad_id", 0))
    if kind == "sentencepiece":
        from lmscale.data.spm import SentencePieceTokenizer
        return SentencePieceTokenizer.from_dict(d, base_dir)
    if kind == "word":
        from lmscale.data.words import WordTokenizer
        return WordTokenizer.from_dict(d, base_dir)
    raise DataError(f"unknown tokenizer kind {kind!r} (known: 'byte', 'sentencepiece', 'word')")
