"""Word-level tokenizer (AWD-LSTM / WikiText style): whitespace split, ``<eos>`` per line.

Encoding: every line of the text (ended by ``\\n``) becomes its whitespace-separated words
followed by ``<eos>`` — an empty line is just ``<eos>`` — as salesforce/awd-lstm-lm's data.py
reads PTB and WikiText. Documents (``encode_batch``: what preparation encodes) end with an
``<eos>`` even without a final newline (awd: the last line of a file), so CSV/JSONL texts are
separated; ``encode`` (a prompt) gives the words after the last newline without one. Ids: 0 = ``<pad>``,
1 = ``<unk>``, 2 = ``<eos>``, then the words by descending count in the training split
(ties: first occurrence), so an adaptive softmax's frequency clusters are contiguous id
ranges. A word counted fewer than ``min_count`` times in the training split, past the
``max_size`` most frequent ids, or absent from it is ``<unk>`` (a literal ``<unk>`` in the
text, as in PTB, is too).

The vocabulary is built at prepare time from the training split only (``WordTraining``,
then ``WordCounter`` for the provisional ids of pass 1 and ``build_vocabulary`` once the
split plan is known) and travels with the dataset / workdir as ``vocab.json``.

Bytes per id (``byte_lengths``, for bits per UTF-8 byte): a word counts its UTF-8 bytes
plus one separator (the space after it, or the newline that ends its line); ``<eos>``
counts 0 (the newline is the last word's separator); ``<unk>`` counts the mean of that over
the training occurrences it replaced (a fraction: rounding it to a whole byte moved a split's
bpc by up to 0.5 byte per ``<unk>``, 1 % on Tiny Shakespeare; over all words when it replaced
none; a vocabulary prepared before that holds the rounded mean, and keeps it). So
a line of single-spaced words scores exactly its bytes; an empty line's newline is not
counted. ``decode`` joins words with spaces and writes ``<eos>`` as a newline.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmscale.data.errors import DataError
from lmscale.data.file_tokenizer import FileTokenizer, ids_to_decode, smallest_uint_dtype

VOCAB_FILE = "vocab.json"
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


def split_words(text: str | bytes, close: bool = True) -> list[str]:
    """Words of ``text`` with ``<eos>`` after each line a newline ends, and (``close``) after
    the text's last words if no newline follows them (see the module doc)."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8", errors="replace")
    lines = text.split("\n")
    out: list[str] = []
    for line in lines[:-1]:
        out.extend(line.split())
        out.append(EOS)
    last = lines[-1].split()  # after the last newline
    out.extend(last)
    if close and last:
        out.append(EOS)
    return out


def _split_all(texts: Sequence[str | bytes], continues: Sequence[bool] | None) -> list[list[str]]:
    """``split_words`` of each text, closed unless ``continues`` says its document goes on."""
    if continues is None:
        return [split_words(t) for t in texts]
    if len(continues) != len(texts):
        raise DataError(f"continues has {len(continues)} flags for {len(texts)} texts")
    return [split_words(t, close=not c) for t, c in zip(texts, continues)]


class WordTokenizer(FileTokenizer):
    """A fixed word vocabulary; ``vocab_size`` = words + the 3 special ids."""

    pad_id: int | None = PAD_ID
    file_name = VOCAB_FILE
    kind, file_key, noun = "word", "vocab", "word vocabulary"

    def __init__(self, words: Sequence[str], *, unk_bytes: float, min_count: int = 1,
                 max_size: int = 0) -> None:
        words = list(words)
        if tuple(words[:3]) != SPECIALS:
            raise DataError(f"word vocabulary must start with {list(SPECIALS)}, got {words[:3]}")
        if len(words) <= len(SPECIALS):
            raise DataError("empty word vocabulary: it has no word besides <pad>, <unk> and <eos>")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            raise DataError("word vocabulary has duplicate words")
        if isinstance(unk_bytes, bool) or not isinstance(unk_bytes, (int, float)) or not unk_bytes > 0:
            raise DataError(f"word vocabulary: unk_bytes must be a positive number, got {unk_bytes!r}")
        self.unk_bytes = unk_bytes  # as recorded: an older vocab.json's int keeps its sha256
        self.min_count, self.max_size = int(min_count), int(max_size)
        self.document = {"words": words, "unk_bytes": self.unk_bytes, "min_count": self.min_count,
                         "max_size": self.max_size}
        self._set_payload(json.dumps(self.document, ensure_ascii=False).encode("utf-8"))
        self._byte_lengths: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str) -> "WordTokenizer":
        if not os.path.isfile(path):
            raise DataError(f"word vocabulary {path} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            return cls(d["words"], unk_bytes=d["unk_bytes"], min_count=d.get("min_count", 1),
                       max_size=d.get("max_size", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a word vocabulary ({type(e).__name__}: {e})") from None

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def token_dtype(self) -> type:
        return smallest_uint_dtype(self.vocab_size)

    def encode(self, text: str | bytes) -> np.ndarray:
        """Ids [n] (``token_dtype``) of ``text``: its words and an ``<eos>`` per line ended by a
        newline (a prompt: none after its last words)."""
        return self._ids([split_words(text, close=False)])[0]

    def text_byte_lengths(self, text: str) -> np.ndarray:
        """int64 [len(encode(text))]: the UTF-8 bytes of ``text`` each token stands for (a word
        with the whitespace before it, ``<eos>`` its newline; the last token also the trailing
        whitespace), summing to the text's bytes, so a per-token trace covers the text as it
        is written (``byte_lengths`` gives a vocabulary's typical lengths instead)."""
        ends = [m.end() for m in re.finditer(r"\n|[^\s]+", text)]
        if not ends:
            return np.zeros(0, np.int64)
        ends[-1] = len(text)
        starts = [0, *ends[:-1]]
        return np.array([len(text[a:b].encode("utf-8")) for a, b in zip(starts, ends)], np.int64)

    def unknown_words(self, text: str | bytes) -> list[str]:
        """The words of ``text`` outside the vocabulary (each once, in order): read as <unk>."""
        seen = dict.fromkeys(w for w in split_words(text, close=False)
                             if w not in self.index and w != UNK)
        return list(seen)

    def encode_batch(self, texts: Sequence[str | bytes], continues: Sequence[bool] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Ids of all ``texts`` (documents, each closed by an ``<eos>``) concatenated, and each
        text's token count (int64). ``continues[i]``: text i is a piece of a document that goes
        on in text i + 1 (cut before a space), not closed."""
        return self._ids(_split_all(texts, continues))

    def _ids(self, words: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        get = self.index.get
        parts = [[get(w, UNK_ID) for w in ws] for ws in words]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        ids = np.fromiter((i for p in parts for i in p), dtype=np.int64, count=int(counts.sum()))
        ids[ids == PAD_ID] = UNK_ID  # a literal "<pad>" in the text is no padding
        return ids.astype(self.token_dtype), counts

    def decode(self, ids: Any) -> str:
        """Words joined by spaces, ``<eos>`` as a newline; padding dropped."""
        arr = ids_to_decode(ids, PAD_ID, 0, self.vocab_size, "this word tokenizer",
                            f"ids are [0, {self.vocab_size - 1}]")
        lines, line = [], []
        for i in arr.tolist():
            if i == EOS_ID:
                lines.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.words[i])
        return "".join(lines) + " ".join(line)

    def byte_lengths(self) -> np.ndarray:
        """float32 [vocab_size]: word bytes + 1 separator; <eos> and <pad> 0; <unk> its mean
        (a fraction)."""
        if self._byte_lengths is None:
            lengths = np.array([len(w.encode("utf-8")) + 1 for w in self.words], np.float32)
            lengths[PAD_ID] = lengths[EOS_ID] = 0
            lengths[UNK_ID] = self.unk_bytes
            lengths.setflags(write=False)
            self._byte_lengths = lengths
        return self._byte_lengths

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "word", "vocab": VOCAB_FILE, "sha256": self.sha256, "vocab_size": self.vocab_size}


@dataclass(frozen=True)
class WordTraining:
    """A request to build a word vocabulary from the training split of the corpus being prepared."""

    min_count: int = 1  # a word seen fewer times in the training split is <unk>
    max_size: int = 0  # most ids in the vocabulary, the 3 specials included; 0 = no cap
    option_prefix: str = field(default="--word_", compare=False)  # how messages name the options

    def __post_init__(self) -> None:
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise DataError(f"{self.option_prefix}min_count must be a positive integer, got {self.min_count!r}")
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size < 0 \
                or 0 < self.max_size <= len(SPECIALS):
            raise DataError(f"{self.option_prefix}vocab_size must be 0 (no cap) or more than "
                            f"{len(SPECIALS)} (the special ids), got {self.max_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "word", "min_count": self.min_count, "max_size": self.max_size}


class WordCounter:
    """Pass 1 of preparation: provisional ids (order of first occurrence, every distinct
    word) so that the stream can be cut into splits before the vocabulary is chosen."""

    token_dtype = np.uint32
    pad_id: int | None = None

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    @property
    def vocab_size(self) -> int:
        return max(len(self.index), 1)

    def encode_batch(self, texts: Sequence[str | bytes], continues: Sequence[bool] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Provisional ids, as ``WordTokenizer.encode_batch``."""
        index = self.index
        parts = []
        for words in _split_all(texts, continues):
            ids = []
            for w in words:
                i = index.get(w)
                if i is None:
                    i = index[w] = len(index)
                ids.append(i)
            parts.append(ids)
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        flat = np.fromiter((i for p in parts for i in p), dtype=np.int64, count=int(counts.sum()))
        return flat.astype(np.uint32), counts

    def __repr__(self) -> str:
        return f"WordCounter({len(self.index)} words)"


def build_vocabulary(counter: WordCounter, train_counts: np.ndarray, training: WordTraining
                     ) -> tuple[WordTokenizer, np.ndarray]:
    """The vocabulary from the training split's counts of the provisional ids.

    ``train_counts`` int [provisional ids]: occurrences in the training split. Returns
    (tokenizer, remap) with ``remap[provisional id] = final id``.
    """
    words = list(counter.index)
    counts = np.zeros(len(words), np.int64)
    counts[:len(train_counts)] = train_counts[:len(words)]
    special = np.array([w in SPECIALS for w in words], dtype=bool)
    keep = (counts >= training.min_count) & ~special
    order = np.flatnonzero(keep)
    order = order[np.argsort(-counts[order], kind="stable")]  # by count, ties by first occurrence
    if training.max_size:
        order = order[:training.max_size - len(SPECIALS)]
    if order.size == 0:
        raise DataError(f"empty word vocabulary: no word occurs {training.option_prefix}min_count="
                        f"{training.min_count} times in the training split ({int(counts.sum())} "
                        f"tokens, {len(words)} distinct words)")
    remap = np.full(len(words), UNK_ID, np.int64)
    remap[order] = np.arange(len(SPECIALS), len(SPECIALS) + order.size)
    if EOS in counter.index:
        remap[counter.index[EOS]] = EOS_ID
    sizes = np.array([len(w.encode("utf-8")) + 1 for w in words], np.int64)
    unk = (remap == UNK_ID) & (counts > 0)
    pool = unk if counts[unk].sum() else ~special & (counts > 0)
    total = counts[pool].sum()
    unk_bytes = round(float((sizes[pool] * counts[pool]).sum()) / total, 6) if total else 1.0
    tokenizer = WordTokenizer([*SPECIALS, *(words[i] for i in order)], unk_bytes=max(unk_bytes, 1.0),
                              min_count=training.min_count, max_size=training.max_size)
    return tokenizer, remap


def unk_note(splits: dict[str, Any], training: WordTraining | None) -> str | None:
    """A note where the training split holds no <unk> and val or test do: their words outside
    the vocabulary are scored as a class the model never saw as a target (awd-lstm-lm's
    corpora are <unk>-ed in every split; a raw corpus at min_count=1 is not)."""
    if training is None or "train" not in splits or splits["train"].get("unk_tokens", 0):
        return None
    held = {n: s["unk_tokens"] / s["tokens"] for n, s in splits.items()
            if n != "train" and s.get("unk_tokens") and s["tokens"]}
    if not held:
        return None
    shares = "; ".join(f"{share:.2%} of {n}'s tokens" for n, share in held.items())
    return (f"note: the training split holds no <unk>, while <unk> (a word not in the "
            f"vocabulary) is {shares}: the model never learns to predict <unk>, so those "
            f"tokens score high loss; {training.option_prefix}min_count=2 (or more) makes the "
            f"rarest training words <unk>, as WikiText's corpora are")


UNKNOWN_NOTE_SHARE = 0.02  # a share of words outside the vocabulary worth a note


def _unk_count(ids: Sequence[Any]) -> tuple[int, int]:
    """(<unk> tokens, tokens) of token arrays ``ids``."""
    return (sum(int(np.count_nonzero(np.asarray(x) == UNK_ID)) for x in ids),
            sum(len(x) for x in ids))


def unknown_words_note(tokenizer: Any, texts: Sequence[str | bytes], ids: Sequence[np.ndarray],
                       what: str = "the texts") -> str | None:
    """A note where at least ``UNKNOWN_NOTE_SHARE`` of the words a word model read in
    ``texts`` (as ``ids``) are outside its vocabulary: read as <unk>, they carry no meaning to
    featurize or classify (SST's raw sentences against a vocabulary of lower-cased, split text
    lose nearly half). A literal "<unk>" in the text (WikiText's) is no unknown word. None for
    other tokenizers, except a SentencePiece model without byte fallback (one trained
    elsewhere), whose <unk> is noted alike."""
    from lmscale.data.spm import SentencePieceTokenizer
    if isinstance(tokenizer, SentencePieceTokenizer) and ids:
        return _sentencepiece_unknown_note(tokenizer, texts, ids, what)
    if not isinstance(tokenizer, WordTokenizer) or not ids:
        return None
    unk, total = _unk_count(ids)
    unknown = unk - sum(w == UNK for t in texts for w in split_words(t, close=False))  # literal
    if not total or unknown < UNKNOWN_NOTE_SHARE * total:
        return None
    examples: list[str] = []
    for t in texts:
        examples += [w for w in tokenizer.unknown_words(t) if w not in examples][:8 - len(examples)]
        if len(examples) >= 8:
            break
    return (f"note: {unknown / total:.1%} of the {total:,} tokens of {what} are words outside "
            f"the model's vocabulary (e.g. {', '.join(map(repr, examples))}), each read as "
            f"<unk>: a word model reads text split as its training corpus was (punctuation "
            f"apart, the same case)")


def _sentencepiece_unknown_note(tokenizer: Any, texts: Sequence[str | bytes],
                                ids: Sequence[np.ndarray], what: str) -> str | None:
    """``unknown_words_note`` for a SentencePiece model: None with byte fallback (no text
    is unknown to it)."""
    sp = tokenizer.processor
    if tokenizer.keeps_space_symbol:
        return None
    unk_id = sp.unk_id() + 1
    unk = sum(int(np.count_nonzero(np.asarray(x) == unk_id)) for x in ids)
    total = sum(len(x) for x in ids)
    if not total or unk < UNKNOWN_NOTE_SHARE * total:
        return None
    examples: list[str] = []
    for t in texts:
        t = t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace")
        for p in sp.encode(t, return_type="proto").pieces:
            s = p.surface.strip()[:20]
            if p.id == sp.unk_id() and s and s not in examples:
                examples.append(s)
        if len(examples) >= 8:
            break
    return (f"note: {unk / total:.1%} of the {total:,} tokens of {what} are <unk>: text outside "
            f"the SentencePiece model's vocabulary (e.g. {', '.join(map(repr, examples[:8]))}; "
            f"it has no byte fallback), which carries no meaning to the model and counts 0 bytes")


def unk_tokens_note(tokenizer: Any, shards: Sequence[Any], what: str,
                    trained: float | None = None) -> str | None:
    """A note where at least ``UNKNOWN_NOTE_SHARE`` of the tokens a word model scores in
    ``shards`` (token arrays) are <unk>: each is scored as one token, the probability of any
    word outside the vocabulary, so a perplexity depends on how many there are (eval of a
    user's text said nothing of them). ``trained``: the training split's <unk> share, said
    beside it (WikiText's test text is as <unk>-ed as its training text). None for other
    tokenizers."""
    if not isinstance(tokenizer, WordTokenizer):
        return None
    unk, total = _unk_count(shards)
    if not total or unk < UNKNOWN_NOTE_SHARE * total:
        return None
    beside = f"; the model's training split: {trained:.1%}" if trained is not None else ""
    return (f"note: {unk / total:.1%} of the {total:,} tokens of {what} are <unk> (words outside "
            f"the model's vocabulary, or <unk> in the text{beside}), each scored as one token: "
            f"the probability of any unknown word")
