"""Prepare a token dataset from text files (or a built-in corpus), for training.

    python -m lmscale.prepare --input='corpus/**/*.txt' --output=data/corpus \\
        [--text_column=NAME | --text_field=NAME] [--txt_mode=file|line] \\
        [--split=98,1,1] [--shard_tokens=N] [--tokenizer=sentiment_discovery|openai] [--overwrite]
        [--shuffle_documents=SEED]   # documents in a random order (sentiment-discovery's)

    # SentencePiece: train one on a sample of the corpus (stored in the dataset), or reuse one
    python -m lmscale.prepare ... --tokenizer=sentencepiece --vocab_size=8000 \\
        [--sp_model_type=bpe|unigram] [--sp_sample_bytes=100000000]
    python -m lmscale.prepare ... --tokenizer=sentencepiece --sp_model=other/tokenizer.model

    # Words (whitespace split, <eos> per line), vocabulary from the training split
    python -m lmscale.prepare ... --tokenizer=word [--word_min_count=1] [--word_vocab_size=0]

``--input`` may repeat or be comma separated; ``python_stdlib`` names the built-in corpus and
``tfds:NAME/SPLIT`` a TensorFlow Datasets corpus (its ``--text_field``, default ``text``).
Bad input prints one ``error: ...`` line on stderr and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags

from lmscale.cli import parse_flags
from lmscale.data.builtin import builtin_paths, is_builtin
from lmscale.data.errors import DataError
from lmscale.data.prepare import check_text_options, prepare_dataset
from lmscale.data.sources import expand_inputs, file_kind, split_inputs
from lmscale.data.spm import MODEL_TYPES, SentencePieceTokenizer, SentencePieceTraining
from lmscale.data.tfds import is_tfds
from lmscale.data.tokenizer import ByteTokenizer, Tokenizer
from lmscale.data.words import WordTraining
from lmscale.early_signals import taken_signals
from lmscale.messages import draws_bar

TOKENIZERS = {"sentiment_discovery": ByteTokenizer.sentiment_discovery, "openai": ByteTokenizer.openai}
SENTENCEPIECE = "sentencepiece"
WORD = "word"

_INPUT = flags.DEFINE_multi_string("input", None, "Text files, globs or folders (repeatable, comma "
                                   "separated), a built-in corpus name (python_stdlib), or "
                                   "tfds:NAME/SPLIT (TensorFlow Datasets: the tfds extra).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the prepared dataset to.")
_TEXT_COLUMN = flags.DEFINE_string("text_column", None, "CSV/TSV column holding the text (default 'text').")
_TEXT_FIELD = flags.DEFINE_string("text_field", None, "JSONL field holding the text (default 'text').")
_TXT_MODE = flags.DEFINE_enum("txt_mode", "file", ["file", "line"],
                              "Plain text: one document per file, or per line (ended by \\n; a "
                              "lone \\r, as old Mac files end lines, does not end one).")
_SPLIT = flags.DEFINE_string("split", "98,1,1", "Shard counts per cycle: train,val,test (paper: 1000,1,1).")
_SHARD_TOKENS = flags.DEFINE_integer("shard_tokens", 2**27, "Upper bound on tokens per shard.")
_TOKENIZER = flags.DEFINE_enum("tokenizer", "sentiment_discovery", sorted([*TOKENIZERS, SENTENCEPIECE, WORD]),
                               "Byte ids: byte+1 with pad 0 (sentiment_discovery) or byte (openai); "
                               "SentencePiece subwords (piece+1, pad 0); or words (<eos> per line).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "SentencePiece pieces to train (ids: one more).")
_SP_MODEL_TYPE = flags.DEFINE_enum("sp_model_type", "bpe", list(MODEL_TYPES), "SentencePiece algorithm.")
_SP_SAMPLE_BYTES = flags.DEFINE_integer("sp_sample_bytes", 100_000_000,
                                        "Bytes of text, spread over the inputs, to train SentencePiece on.")
_SP_MODEL = flags.DEFINE_string("sp_model", None, "An existing SentencePiece .model to encode with "
                                "(instead of training one).")
_WORD_MIN_COUNT = flags.DEFINE_integer("word_min_count", 1, "Words: fewer occurrences in the training "
                                      "split make a word <unk>.")
_WORD_VOCAB_SIZE = flags.DEFINE_integer("word_vocab_size", 0, "Words: most ids (specials included; the "
                                        "most frequent words kept); 0 = no cap.")
_VAL = flags.DEFINE_string("val", None, "Validation text on its own (paths/globs, comma separated; "
                           "e.g. PTB's valid file): --input is then all training text, --split unused.")
_TEST = flags.DEFINE_string("test", None, "Test text on its own (as --val).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing prepared dataset at --output.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars on stderr (when it is a terminal).")
_SHUFFLE = flags.DEFINE_integer("shuffle_documents", None, "Write the documents in a random order drawn "
                                "from this seed (each of train, --val, --test within itself), as "
                                "sentiment-discovery shuffles its reviews; default: input order.",
                                lower_bound=0)


def parse_split(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise DataError(f"--split must be three shard counts 'train,val,test', got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def summary(metadata: dict, output: str) -> str:
    """One paragraph: totals, then tokens/documents/shards per split."""
    def n(count: int, noun: str) -> str:
        return f"{count:,} {noun}{'' if count == 1 else 's'}"
    parts = [f"{name}: {n(s['tokens'], 'token')}, {n(s['documents'], 'document')}, "
             f"{n(len(s['shards']), 'shard')}"
             + (f", {s['unk_tokens'] / s['tokens']:.2%} <unk>" if "unk_tokens" in s else "")
             for name, s in metadata["splits"].items()]
    tok = metadata["tokenizer"]
    vocab = f", SentencePiece vocabulary of {tok['vocab_size']:,} ids" if tok.get("kind") == "sentencepiece" else ""
    vocab = f", word vocabulary of {tok['vocab_size']:,} ids" if tok.get("kind") == WORD else vocab
    tfds = sum(is_tfds(f) for f in metadata["files"])  # tfds:NAME/SPLIT inputs are no files
    files = len(metadata["files"]) - tfds
    read = " and ".join([n(files, "file")] * bool(files or not tfds) + [n(tfds, "TFDS split")] * bool(tfds))
    return (f"Prepared {n(metadata['total_tokens'], 'token')} in {n(metadata['total_documents'], 'document')} "
            f"from {read} into {output} ({'; '.join(parts)}{vocab}).")


def make_tokenizer() -> Tokenizer | SentencePieceTraining:
    """The tokenizer the flags ask for (a training request for a new SentencePiece model)."""
    name = _TOKENIZER.value
    if name != WORD:
        for flag in ("word_min_count", "word_vocab_size"):
            if flags.FLAGS[flag].present:
                raise DataError(f"--{flag} is for --tokenizer=word, not --tokenizer={name}")
    if name != SENTENCEPIECE:  # --tokenizer=word --vocab_size=N too (its cap: --word_vocab_size)
        for flag in ("vocab_size", "sp_model_type", "sp_sample_bytes", "sp_model"):
            if flags.FLAGS[flag].present:
                raise DataError(f"--{flag} is for --tokenizer=sentencepiece, not --tokenizer={name}")
        if name == WORD:
            return WordTraining(min_count=_WORD_MIN_COUNT.value, max_size=_WORD_VOCAB_SIZE.value)
        return TOKENIZERS[name]()
    if _SP_MODEL.value:
        for flag in ("vocab_size", "sp_model_type", "sp_sample_bytes"):
            if flags.FLAGS[flag].present:
                raise DataError(f"--{flag} is for training a SentencePiece model; --sp_model gives one")
        return SentencePieceTokenizer.from_file(_SP_MODEL.value)
    return SentencePieceTraining(vocab_size=_VOCAB_SIZE.value, model_type=_SP_MODEL_TYPE.value,
                                 sample_bytes=_SP_SAMPLE_BYTES.value)


def _check_held_out(val: list[str], test: list[str]) -> None:
    """Refuses a file given to both --val and --test (test text that is also validation's)."""
    key = lambda p: p if is_tfds(p) else os.path.realpath(p)
    shared = sorted({key(p) for p in val} & {key(p) for p in test})
    if shared:
        raise DataError(f"--val and --test both name {shared[0]}"
                        f"{f' (and {len(shared) - 1} more)' if len(shared) > 1 else ''}: the "
                        f"test text must be held out of validation; give each its own files")


def prepare_main() -> str:
    if not _INPUT.value:
        raise DataError("--input is required (text paths/globs or python_stdlib)")
    if not _OUTPUT.value:
        raise DataError("--output is required")
    items = split_inputs(_INPUT.value)  # an existing path with a comma is one item
    inputs = items[0] if len(items) == 1 and is_builtin(items[0]) else items
    tokenizer = make_tokenizer()
    if flags.FLAGS["split"].present and (_VAL.value or _TEST.value):
        raise DataError("--split does not apply with --val/--test: each part is the text given "
                        "for it")
    if _VAL.value and _TEST.value:
        _check_held_out(expand_inputs(_VAL.value, notes=False),
                        expand_inputs(_TEST.value, notes=False))
    if _TEXT_COLUMN.value or _TEXT_FIELD.value or _TXT_MODE.value != "file":
        paths = builtin_paths(inputs) if isinstance(inputs, str) else expand_inputs(inputs, notes=False)
        for extra in (_VAL.value, _TEST.value):
            paths += expand_inputs(extra, notes=False) if extra else []
        check_text_options(paths, _TEXT_COLUMN.value, _TEXT_FIELD.value)
        kinds = sorted({file_kind(p) for p in paths})
        if _TXT_MODE.value != "file" and "txt" not in kinds:
            raise DataError(f"--txt_mode={_TXT_MODE.value} splits plain text files, and the "
                            f"inputs are {'/'.join(kinds)} files (one document per row)")
    return prepare_dataset(inputs, _OUTPUT.value, text_column=_TEXT_COLUMN.value,
                           text_field=_TEXT_FIELD.value, txt_mode=_TXT_MODE.value,
                           split=parse_split(_SPLIT.value), shard_tokens=_SHARD_TOKENS.value,
                           tokenizer=tokenizer, overwrite=_OVERWRITE.value,
                           progress=_PROGRESS.value and draws_bar(sys.stderr),
                           val_inputs=_VAL.value or None, test_inputs=_TEST.value or None,
                           shuffle_seed=_SHUFFLE.value)


_SIGNALLED: list[int] = []  # the signal that stopped the run: its exit status is 128 + it


def _interrupt(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(1)
    from lmscale.distributed import refuse_several_processes
    refuse_several_processes("lmscale.prepare", dict(os.environ))  # each task wrote the output
    from lmscale.data.dataset import TokenDataset
    # SIGTERM (a scheduler), SIGHUP (a closed terminal: it left OUTPUT.tmp-*) and SIGUSR1
    # unwind like Ctrl-C, so the temporary folder is removed either way.
    for sig in taken_signals():
        if sig != signal.SIGINT:
            signal.signal(sig, _interrupt)
    try:
        output = prepare_main()
        print(summary(TokenDataset.open(output).metadata, output))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: nothing written (the output is as it was)", file=sys.stderr)
        sys.exit(128 + (_SIGNALLED[0] if _SIGNALLED else signal.SIGINT))  # 143 after SIGTERM


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
