"""Tokenizers: text <-> token ids, with the id mapping kept explicit.

Every tokenizer has the same interface (what data preparation, training, eval, transfer
and generation use): ``vocab_size``, ``pad_id`` (int or None), ``token_dtype`` (the
smallest unsigned dtype holding every id: shards are stored in it), ``encode(text) -> ids``,
``decode(ids) -> str``, ``byte_lengths() -> [vocab_size]`` (UTF-8 bytes of text each
id stands for, 0 for padding/control ids: bits per character are counted per byte with
it, so they compare across tokenizers; int32, or float32 for a word vocabulary, whose
``<unk>`` stands for its mean), ``to_dict()`` (JSON description) and
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

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lmscale.data.errors import DataError
from lmscale.data.file_tokenizer import ids_to_decode, smallest_uint_dtype
from lmscale.data.spm import SentencePieceTokenizer
from lmscale.data.words import WordTokenizer


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
        arr = ids_to_decode(ids, self.pad_id, self.offset, self.vocab_size, "byte tokenizer",
                            f"byte ids are [{self.offset}, {self.vocab_size - 1}]")
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
        return SentencePieceTokenizer.from_dict(d, base_dir)
    if kind == "word":
        return WordTokenizer.from_dict(d, base_dir)
    raise DataError(f"unknown tokenizer kind {kind!r} (known: 'byte', 'sentencepiece', 'word')")
