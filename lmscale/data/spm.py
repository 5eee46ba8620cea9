"""SentencePiece subword tokenizer: ids = piece id + 1, id 0 is padding (as sentiment-discovery).

``train_sentencepiece(texts, options, source=...)`` trains a model in-process from an
iterator over a bounded sample of text (``lmscale.data.sample``), with options chosen so
that ``decode(encode(text)) == text`` exactly for any valid UTF-8 text: identity
normalization, no dummy prefix, whitespace kept as is, byte fallback for characters
outside the vocabulary (so there are no unknown tokens). A literal U+2581 "▁", which
SentencePiece itself reads as its space symbol, is encoded as its three byte-fallback
pieces (text without it is encoded by SentencePiece alone). The model file travels with a
dataset or workdir as ``tokenizer.model``; ``to_dict()`` names it with its SHA-256.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmscale.data.errors import DataError
from lmscale.data.file_tokenizer import FileTokenizer, ids_to_decode, smallest_uint_dtype

MODEL_FILE = "tokenizer.model"
MODEL_TYPES = ("bpe", "unigram")
MIN_VOCAB_SIZE = 260  # 256 byte-fallback pieces + <unk> + a few characters
MAX_SENTENCE_BYTES = 4096  # training sentences: line-aligned chunks of at most this many bytes
# SentencePiece's training threads, its own default, whatever the cores: the threads split the
# sentences, so the unigram model's scores and piece order (the ids) and the model file's
# bytes (its trainer_spec) followed the count; min(cores, 16) trained other tokens on a
# 2-core laptop than on a cluster node. Threads past the cores cost no time (4.7 MB, 1 core).
TRAINING_THREADS = 16
MAX_SPAN_CHARS = 16384  # encoding: paragraphs longer than this are encoded in groups of lines
_PARAGRAPHS = re.compile(r"(\n\n+)")
SPACE_SYMBOL = "\u2581"  # SentencePiece's meta symbol for " "
_SPACE_SYMBOLS = re.compile(f"({SPACE_SYMBOL}+)")


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise DataError("the sentencepiece tokenizer needs the sentencepiece package: "
                        "pip install 'sentencepiece>=0.2.0'") from None
    return sentencepiece


def spans(text: str) -> list[str]:
    """The pieces ``encode`` encodes separately, joined they are ``text``: paragraphs (each
    with the blank lines after it), a paragraph over MAX_SPAN_CHARS cut into groups of lines.

    SentencePiece encodes many short strings much faster than one long one (~4x on 1 MB),
    and a token almost never spans a blank line, so this is the tokenizer's definition of
    encoding; it depends on nothing but the text, so every caller gets the same ids."""
    parts = _PARAGRAPHS.split(text)
    out: list[str] = []
    for i in range(0, len(parts), 2):
        para = parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
        if len(para) <= MAX_SPAN_CHARS:
            if para:
                out.append(para)
            continue
        group: list[str] = []
        size = 0
        for line in para.splitlines(keepends=True):
            if size + len(line) > MAX_SPAN_CHARS and group:
                out.append("".join(group))
                group, size = [], 0
            group.append(line)
            size += len(line)
        if group:
            out.append("".join(group))
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _model_proto(model: bytes) -> Any:
    """A model's settings (its ModelProto: normalizer and trainer specs)."""
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(bytes(model))
    return proto


class SentencePieceTokenizer(FileTokenizer):
    """A loaded SentencePiece model; ``vocab_size`` = pieces + 1 (padding id 0)."""

    pad_id: int | None = 0
    file_name = MODEL_FILE
    kind, file_key, noun = "sentencepiece", "model", "SentencePiece model"

    def __init__(self, model_proto: bytes, *, name: str = "SentencePiece model") -> None:
        spm = _sentencepiece()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=bytes(model_proto))
            pieces = self._sp.get_piece_size()
        except Exception as e:  # the C++ loader raises RuntimeError/OSError on garbage
            raise DataError(f"{name} is not a SentencePiece model ({_first_line(e)})") from None
        if pieces < 1:
            raise DataError(f"{name} is not a SentencePiece model (it has no pieces)")
        self.name = name
        self._set_payload(model_proto)
        self._vocab_size = pieces + 1
        self._byte_lengths: np.ndarray | None = None
        # The byte-fallback ids of a literal "▁" (SentencePiece would read it as a space, and
        # decode it as one); None for a model without byte fallback.
        escape = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode("utf-8")]
        self._space_symbol_ids = escape if all(self._sp.is_byte(i) for i in escape) else None
        # A model that adds a dummy prefix or removes extra whitespace (one trained elsewhere)
        # treats each string's edges specially: encoding it paragraph by paragraph would add a
        # "▁" at each paragraph's start, or drop the space between paragraphs. Such a model
        # encodes each text whole, as SentencePiece alone does.
        norm = _model_proto(model_proto).normalizer_spec
        self._edge_sensitive = bool(norm.add_dummy_prefix or norm.remove_extra_whitespaces)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        """Loads a ``.model`` file; DataError if it is missing or not a SentencePiece model."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"SentencePiece model {path} does not exist")
        with open(path, "rb") as f:
            return cls(f.read(), name=path)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def token_dtype(self) -> type:
        return smallest_uint_dtype(self._vocab_size)

    @property
    def keeps_space_symbol(self) -> bool:
        """Whether a literal "▁" (U+2581) round-trips (as its byte-fallback pieces, 3 bytes);
        False for a model without byte fallback, which reads it as a space."""
        return self._space_symbol_ids is not None

    @property
    def processor(self) -> Any:
        """The underlying ``sentencepiece.SentencePieceProcessor`` (piece ids = our ids - 1)."""
        return self._sp

    def piece(self, token_id: int) -> str:
        """The piece of one of our ids (``"<pad>"`` for 0)."""
        return "<pad>" if token_id == 0 else self._sp.id_to_piece(int(token_id) - 1)

    @staticmethod
    def _text(text: str | bytes) -> str:
        # Invalid UTF-8 becomes U+FFFD: SentencePiece works on Unicode text.
        return text if isinstance(text, str) else bytes(text).decode("utf-8", errors="replace")

    def encode(self, text: str | bytes) -> np.ndarray:
        """Token ids [n] (``token_dtype``) of ``text`` (bytes are read as UTF-8), encoded
        span by span (see ``spans``); each literal "▁" (U+2581) as its byte-fallback pieces,
        so that it decodes as itself and counts its 3 bytes (SentencePiece alone reads it as
        a space)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of all ``texts`` concatenated (``token_dtype``) and each text's token count
        (int64), each text encoded as ``encode`` does: one SentencePiece call for all."""
        escape = self._space_symbol_ids
        split = (lambda t: [t] if t else []) if self._edge_sensitive else spans
        per_text = [self._escaped(split(self._text(t))) if escape else split(self._text(t))
                    for t in texts]
        flat = list(itertools.chain.from_iterable(per_text))
        literal = [escape is not None and s[0] == SPACE_SYMBOL for s in flat]  # runs of "▁"
        encoded = iter(self._sp.encode([s for s, lit in zip(flat, literal) if not lit])
                       if not all(literal) else [])
        pieces = [escape * len(s) if lit else next(encoded) for s, lit in zip(flat, literal)]
        span_counts = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=int(span_counts.sum()))
        owner = np.repeat(np.arange(len(texts)), [len(s) for s in per_text])
        counts = np.bincount(owner, weights=span_counts, minlength=len(texts)).astype(np.int64)
        return (ids + 1).astype(self.token_dtype), counts

    @staticmethod
    def _escaped(parts: list[str]) -> list[str]:
        """``parts`` with each run of "▁" cut out as a part of its own (a text without "▁":
        the same list, so its ids are SentencePiece's)."""
        out: list[str] = []
        for part in parts:
            if SPACE_SYMBOL in part:
                out.extend(p for p in _SPACE_SYMBOLS.split(part) if p)
            else:
                out.append(part)
        return out

    def decode(self, ids: Any) -> str:
        """Text of ``ids``, dropping padding; DataError for ids outside the vocabulary."""
        arr = ids_to_decode(ids, 0, 1, self._vocab_size, "this SentencePiece tokenizer",
                            f"ids are [1, {self._vocab_size - 1}], 0 is padding")
        return self._sp.decode((arr - 1).tolist()) if arr.size else ""

    def byte_lengths(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 bytes each id decodes to (▁ is a space, a byte-fallback
        piece is 1, padding/control/unknown 0), so a text's ids sum to its byte count."""
        if self._byte_lengths is None:
            sp = self._sp
            lengths = np.zeros(self._vocab_size, np.int32)
            for i in range(sp.get_piece_size()):
                if sp.is_byte(i):
                    lengths[i + 1] = 1
                elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                    lengths[i + 1] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
            lengths.setflags(write=False)
            self._byte_lengths = lengths
        return self._byte_lengths

    def lossy_settings(self) -> list[str]:
        """How this model (one trained elsewhere, given as ``--sp_model``) would not give back
        the text it encodes, or count its bytes exactly: lmscale trains with identity
        normalization, no dummy prefix, whitespace kept and byte fallback. Empty when none."""
        proto = _model_proto(self.payload)
        norm, out = proto.normalizer_spec, []
        if norm.name not in ("identity", "") or norm.precompiled_charsmap:
            out.append(f"it normalizes the text ({norm.name})")
        if norm.add_dummy_prefix:
            out.append("it adds a space before each text")
        if norm.remove_extra_whitespaces:
            out.append("it removes extra whitespace")
        if not proto.trainer_spec.byte_fallback:
            out.append("it has no byte fallback (characters outside its vocabulary are <unk>, "
                       "counted as 0 bytes; a literal U+2581 is read as a space)")
        return out

    def unsampled_ids(self) -> tuple[int, ...]:
        """Ids generation never samples: padding and the pieces no text encodes to (unknown,
        control, unused; with byte fallback, prepared text has no unknown piece)."""
        sp = self._sp
        return (0,) + tuple(i + 1 for i in range(sp.get_piece_size())
                            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "sentencepiece", "model": MODEL_FILE, "sha256": self.sha256,
                "vocab_size": self._vocab_size}

    @property
    def model_proto(self) -> bytes:
        """The serialized model (what ``save`` writes)."""
        return self.payload


@dataclass(frozen=True)
class SentencePieceTraining:
    """A request to train a SentencePiece model on (a sample of) the corpus being prepared."""

    vocab_size: int = 8000  # pieces (ids: one more, for padding)
    model_type: str = "bpe"  # "bpe" or "unigram"
    sample_bytes: int = 100_000_000  # at most this much text (spread over the inputs) is used
    option_prefix: str = field(default="--", compare=False)  # how messages name the options

    def __post_init__(self) -> None:
        for name, option in (("vocab_size", "vocab_size"), ("sample_bytes", "sp_sample_bytes")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DataError(f"{self.option_prefix}{option} must be a positive integer, got {v!r}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise DataError(f"{self.option_prefix}vocab_size={self.vocab_size} is too small: a SentencePiece "
                            f"vocabulary needs at least {MIN_VOCAB_SIZE} pieces (256 of them byte fallbacks)")
        if self.model_type not in MODEL_TYPES:
            raise DataError(f"{self.option_prefix}sp_model_type must be one of {list(MODEL_TYPES)}, "
                            f"got {self.model_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "model_type": self.model_type,
                "sample_bytes": self.sample_bytes}


def training_sentences(texts: Iterable[str], max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Cuts texts into line-aligned chunks of at most ``max_bytes`` UTF-8 bytes (newlines
    kept, so pieces may learn them); a longer line is cut at character boundaries."""
    for text in texts:
        chunk: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            n = len(line.encode("utf-8"))
            if size + n > max_bytes and chunk:
                yield "".join(chunk)
                chunk, size = [], 0
            if n > max_bytes:  # one very long line: its bytes cut once, not re-encoded a cut
                data, start = line.encode("utf-8"), 0
                while n - start > max_bytes:
                    head = data[start:start + max_bytes].decode("utf-8", errors="ignore")
                    yield head
                    start += len(head.encode("utf-8"))
                line, n = data[start:].decode("utf-8"), n - start
            if line:
                chunk.append(line)
                size += n
        if chunk:
            yield "".join(chunk)


def train_sentencepiece(texts: Iterable[str], options: SentencePieceTraining, *,
                        source: str) -> SentencePieceTokenizer:
    """Trains on ``texts`` (already a bounded sample; streamed, not held twice) and returns
    the tokenizer. ``source`` names the corpus in error messages."""
    spm = _sentencepiece()
    sample_bytes = 0
    failure: list[BaseException] = []

    def sentences() -> Iterator[str]:
        nonlocal sample_bytes
        try:
            for s in training_sentences(texts):
                sample_bytes += len(s.encode("utf-8"))
                yield s
        except BaseException as e:  # re-raised after training: SentencePiece would swallow it
            failure.append(e)

    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=writer, vocab_size=options.vocab_size,
            model_type=options.model_type, normalization_rule_name="identity",
            add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            split_digits=True, byte_fallback=True, character_coverage=0.9995,
            # The space, "▁" to SentencePiece, is a piece even where it is rare (CJK text): left
            # to the coverage it fell back to the bytes of "▁", decoded as "▁", 3 bytes counted.
            required_chars="\u2581",
            max_sentence_length=2 * MAX_SENTENCE_BYTES, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            num_threads=TRAINING_THREADS, minloglevel=2)
    except RuntimeError as e:
        if failure:
            raise failure[0] from None
        raise DataError(_training_error(str(e), options, sample_bytes, source)) from None
    if failure:
        raise failure[0]
    return SentencePieceTokenizer(writer.getvalue(), name=f"the SentencePiece model trained on {source}")


def _training_error(message: str, options: SentencePieceTraining, sample_bytes: int, source: str) -> str:
    sample = f"the {sample_bytes:,}-byte sample of {source}"
    vocab = f"{options.option_prefix}vocab_size={options.vocab_size}"
    if m := re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message):
        most, prefix = int(m.group(2)), options.option_prefix
        smaller = f"a smaller {prefix}vocab_size or " if most >= MIN_VOCAB_SIZE else ""
        more = (f"a larger {prefix}sp_sample_bytes" if sample_bytes >= 0.9 * options.sample_bytes
                else "more text")  # the sample was cut at its cap: more text would not help
        return (f"{vocab} is too large for {sample}: it supports at most {most} pieces; "
                f"use {smaller}{more}")
    if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        return (f"{vocab} is too small for {sample}: its characters and the byte fallbacks "
                f"need at least {m.group(2)} pieces")
    if sample_bytes == 0:
        return f"no text to train SentencePiece on in {source}"
    detail = re.sub(r"^\S+: src/\S+ ", "", message.strip().splitlines()[0] if message.strip() else "")
    return f"training SentencePiece on {sample} failed: {detail}"
