"""Text files -> a prepared token dataset: shards of token ids split train/val/test.

Byte tokenizers need nothing up front; a SentencePiece tokenizer is either given or
trained first on a bounded sample of the inputs (``SentencePieceTraining``; see
``lmscale.data.sample``) and its model stored in the dataset. Then two streaming passes. Pass 1 tokenizes documents one at a time into one raw temporary
token file (and a file of document start offsets), so the exact token count is known.
Pass 2 cuts the stream into ``cycles * sum(split)`` contiguous shards of near-equal size,
assigns them to splits evenly within each cycle (val/test interleaved with train, as in
the paper's 1000/1/1 shards), and copies each shard's range into its own file.

Everything is written into ``<output>.tmp-<host>-<pid>`` and renamed to ``output`` at the end,
so a failed or interrupted run leaves nothing that looks like a dataset.

Layout of ``output``::

    metadata.json
    tokenizer.model                 (SentencePiece only) the model the ids come from
    <split>/shard_<k:05d>.bin       raw little-endian tokens (np.memmap) of the tokenizer's
                                    token_dtype (uint8/uint16/uint32; metadata "dtype")
    <split>/shard_<k:05d>.docs.npy  int64 shard-local document starts, sorted
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from lmscale.data.builtin import builtin_paths, is_builtin
from lmscale.data.dataset import FORMAT, METADATA, SPLITS, VERSION, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.input_checks import check_contents, is_utf8, per_file
from lmscale.atomic import kernel_path, marked_name, publish, remove_path
from lmscale.folder_lock import writing_into
from lmscale.data.prepare_tmp import make_output_folder, remove_abandoned, temporary_folder
from lmscale.data.sample import sample_texts
from lmscale.data.shuffle import shuffle_documents
from lmscale.data.sources import (TXT_MODES, expand_inputs, file_kind, input_size, iter_pieces,
                                  segments)
from lmscale.data.spm import SentencePieceTokenizer, SentencePieceTraining, train_sentencepiece
from lmscale.data.tfds import check_tfds, is_tfds
from lmscale.data.tokenizer import ByteTokenizer, Tokenizer
from lmscale.data.words import (UNK_ID, WordCounter, WordTokenizer, WordTraining, build_vocabulary,
                                unk_note)

COPY_TOKENS = 1 << 23  # tokens per chunk when copying a shard out of the raw file
DOC_FLUSH = 1 << 16  # document starts buffered before appending them to their file
ENCODE_BYTES = 1 << 20  # bytes of text gathered before encoding and writing them
TOKENS_FILE = "tokens.raw"
DOCS_FILE = "doc_starts.raw"


def assign_splits(split: Sequence[int]) -> list[int]:
    """Split index of each shard of one cycle, spread evenly (largest deficit first).

    E.g. (8, 1, 1) -> [0, 0, 0, 1, 0, 0, 2, 0, 0, 0] and (1000, 1, 1) puts val at 334, test at 668: shard j goes to the split whose
    share of the first j + 1 shards is furthest ahead of what it has; ties go to the
    earlier split. Each split gets exactly its count.
    """
    total = sum(split)
    given = [0] * len(split)
    order = []
    for j in range(total):
        # deficit * total, in integers: (j + 1) * count - given * total
        deficits = [(j + 1) * c - g * total for c, g in zip(split, given)]
        s = max(range(len(split)), key=lambda i: (deficits[i], -i))
        given[s] += 1
        order.append(s)
    return order


def shard_plan(total_tokens: int, split: Sequence[int], shard_tokens: int,
               source: str = "") -> list[tuple[int, int, int]]:
    """``(split index, start, stop)`` of every shard in stream order (``source``: the
    inputs, named by the error for a corpus too small for the split's shards)."""
    per_cycle = sum(split)
    cycles = max(1, math.ceil(total_tokens / (per_cycle * shard_tokens)))
    n = cycles * per_cycle
    if total_tokens < 2 * n:
        fits = [s for s in ("8,1,1", "1,1,1", "1,0,0") if 2 * sum(map(int, s.split(","))) <= total_tokens]
        way = (f"use fewer shards per cycle with --split (data.split), e.g. {fits[0]}"
               f"{', or 1,0,0 (no val/test)' if fits[0] != '1,0,0' else ' (no val/test)'}; or "
               if fits else "")
        raise DataError(f"corpus too small: {total_tokens} tokens for {n} shards ({cycles} "
                        f"cycle(s) of split {tuple(split)}); need at least {2 * n} tokens"
                        f"{f' (text: {source})' if source else ''}: {way}give more text")
    bounds = [i * total_tokens // n for i in range(n + 1)]
    order = assign_splits(split) * cycles
    return [(order[i], bounds[i], bounds[i + 1]) for i in range(n)]


def explicit_plan(part_tokens: Sequence[int], shard_tokens: int) -> list[tuple[int, int, int]]:
    """``(split index, start, stop)`` of every shard when the splits come from their own
    inputs: part s (train, val, test) is its own run of near-equal shards, in that order."""
    plan, start = [], 0
    for s, count in enumerate(part_tokens):
        if count == 0:
            continue
        n = max(1, math.ceil(count / shard_tokens))
        bounds = [start + i * count // n for i in range(n + 1)]
        plan += [(s, bounds[i], bounds[i + 1]) for i in range(n)]
        start += count
    return plan


def _text_inputs(paths: Sequence[str], output: str) -> list[str]:
    """``paths`` less what is not text to read: the output folder and its temporary siblings
    (``OUTPUT.tmp-PID``, ``OUTPUT.trash-*``: a killed run's leftovers were read as text, token
    ids and all); a prepared dataset's files are refused (its metadata.json read as JSONL)."""
    out = os.path.abspath(output)
    parent, base = os.path.dirname(out), os.path.basename(out)
    marked = marked_name(base)  # a long name's temporary siblings begin shortened
    keep, datasets = [], {}
    for path in paths:
        full = os.path.abspath(path)
        rel = os.path.relpath(full, parent)
        top = rel.split(os.sep)[0]
        if not rel.startswith("..") and (top == base or top.startswith(f"{marked}.tmp-")
                                         or top.startswith(f"{marked}.trash-")):
            continue
        folder = os.path.dirname(full)
        if folder not in datasets:
            datasets[folder] = is_dataset(folder)
        if datasets[folder]:
            raise DataError(f"{path} belongs to the prepared dataset {os.path.dirname(path) or '.'}, "
                            f"which is not text: train on it as data.train, or give its text files")
        keep.append(path)
    return keep


def _named(paths: Sequence[str], source: Sequence[str]) -> str:
    """The inputs as an error names them: up to three files, else what was asked for."""
    if 0 < len(paths) <= 3:
        return ", ".join(paths)
    return f"{', '.join(map(str, source))} ({len(paths)} files)"


def check_text_options(paths: Sequence[str], text_column: str | None,
                       text_field: str | None) -> None:
    """Refuses a text column or field given for inputs it cannot apply to (``lmscale.prepare``'s
    flags: ignored, a CSV was read from its column 'text'). Configs are not checked: theirs
    stay set when ``data.train`` is overridden with other files."""
    kinds = sorted({file_kind(p) for p in paths})
    if text_column and "csv" not in kinds:
        hint = (" (a JSONL or tfds field is named by --text_field)"
                if {"jsonl", "tfds"} & set(kinds) else "")
        raise DataError(f"--text_column={text_column} names a CSV/TSV column, and the inputs "
                        f"are {'/'.join(kinds)} files{hint}")
    if text_field and not {"jsonl", "tfds"} & set(kinds):
        hint = " (a CSV/TSV column is named by --text_column)" if "csv" in kinds else ""
        raise DataError(f"--text_field={text_field} names a JSONL (or tfds) field, and the inputs "
                        f"are {'/'.join(kinds)} files{hint}")


def _check_args(split: Sequence[int], shard_tokens: int, txt_mode: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in split)
        ok = len(parts) == 3 and all(int(x) == x for x in split)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(parts) < 0 or parts[0] < 1:
        raise DataError(f"split must be three shard counts (train, val, test) with train >= 1 "
                        f"and val, test >= 0; got {split!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    if txt_mode not in TXT_MODES:
        raise DataError(f"txt_mode must be one of {list(TXT_MODES)}, got {txt_mode!r}")
    return parts  # type: ignore[return-value]


def _check_output(output: str, overwrite: bool) -> None:
    """DataError unless ``output`` is missing, an empty folder, or a prepared dataset with
    ``overwrite`` (replaced when the new one is complete)."""
    if not os.path.lexists(output):
        return
    if is_dataset(output):
        if not overwrite:
            raise DataError(f"{output} already holds a prepared dataset; pass overwrite=True "
                            f"(--overwrite) to replace it")
        return
    if os.path.isdir(output) and not os.listdir(output):
        return
    from lmscale.data.dataset import _read_metadata
    why = ""
    if os.path.isdir(output):
        try:
            _read_metadata(output)
        except DataError as e:  # metadata.json torn or removed: say so, not only "not a dataset"
            why = f" ({e})"
    raise DataError(f"{output} exists and is not a prepared dataset{why}; refusing to replace it")


def _encode(tokenizer: Tokenizer, batch: list[bytes], continues: list[bool]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the segments of ``batch`` concatenated, and each segment's token count
    (``continues``: which segments' documents go on in the next; see ``sources.segments``)."""
    counts = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    if isinstance(tokenizer, ByteTokenizer):  # one token per byte: encode them joined
        ids = np.asarray(tokenizer.encode(b"".join(batch)))
        if ids.size != counts.sum():
            raise DataError(f"tokenizer {tokenizer.to_dict()} made {ids.size} tokens of "
                            f"{counts.sum()} bytes; a byte tokenizer makes one token per byte")
        return ids, counts
    if isinstance(tokenizer, (WordCounter, WordTokenizer)):
        return tokenizer.encode_batch(batch, continues=continues)
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(batch)
    parts = [np.asarray(tokenizer.encode(b)).reshape(-1) for b in batch]
    return np.concatenate(parts), np.array([len(p) for p in parts], dtype=np.int64)


def _tokenize(paths: list[str], tmp: str, tokenizer: Tokenizer, progress: bool,
              path_ends: list[int] | None = None, **source_options: Any) -> tuple[int, int]:
    """Pass 1: all tokens into tmp/tokens.raw, document starts into tmp/doc_starts.raw.

    Segments are gathered into ~ENCODE_BYTES batches and encoded with one tokenizer call;
    a document's start is the number of tokens before its first segment.
    """
    dtype = np.dtype(tokenizer.token_dtype).newbyteorder("<")
    recut = not isinstance(tokenizer, ByteTokenizer)
    total_bytes = sum(input_size(p) for p in paths)
    tokens = documents = buffered = 0
    batch: list[bytes] = []
    begins: list[bool] = []
    continues: list[bool] = []
    invalid: dict[str, int] = {}  # a subword/word tokenizer's segments of invalid UTF-8, per file
    spaces: dict[str, int] = {}  # SentencePiece without byte fallback: segments holding U+2581, per file
    sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)

    def flush() -> None:
        nonlocal tokens, buffered
        if not batch:
            return
        ids, counts = _encode(tokenizer, batch, continues)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= tokenizer.vocab_size):
            raise DataError(f"tokenizer {tokenizer!r} made ids outside [0, {tokenizer.vocab_size})")
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]) + tokens
        doc_f.write(np.asarray(firsts[np.asarray(begins, dtype=bool)], dtype="<i8").tobytes())
        tok_f.write(np.asarray(ids, dtype=dtype).tobytes())
        tokens += int(counts.sum())
        batch.clear()
        begins.clear()
        continues.clear()
        buffered = 0

    with open(os.path.join(tmp, TOKENS_FILE), "wb") as tok_f, \
            open(os.path.join(tmp, DOCS_FILE), "wb") as doc_f, \
            tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc="tokenizing",
                 disable=not progress, leave=False) as bar:
        for path in paths:
            size, read, shown = input_size(path), 0, 0
            pieces = iter_pieces([path], **source_options)
            for data, starts_doc, goes_on in segments(pieces, recut, ENCODE_BYTES):
                if recut and not is_utf8(data):
                    invalid[path] = invalid.get(path, 0) + 1
                if sentencepiece and not tokenizer.keeps_space_symbol and "\u2581".encode() in data:
                    spaces[path] = spaces.get(path, 0) + 1
                batch.append(data)
                begins.append(starts_doc)
                continues.append(goes_on)
                documents += starts_doc
                buffered += len(data)
                read += len(data)
                if buffered >= ENCODE_BYTES or len(batch) >= DOC_FLUSH:
                    flush()
                    step = min(read, size) - shown if size else read - shown
                    bar.update(step)
                    shown += step
            bar.update(max(size - shown, 0) if size else read - shown)
            if path_ends is not None:  # explicit splits: the token count after each path
                flush()
                path_ends.append(tokens)
        flush()
    if invalid:
        print(f"note: invalid UTF-8 in {per_file(invalid)}: the "
              f"{'word' if isinstance(tokenizer, WordCounter) else 'subword'} "
              f"tokenizer reads their invalid bytes as U+FFFD, so the token counts and the bpc "
              f"denominators (bytes) are those of the text with U+FFFD in their place",
              file=sys.stderr, flush=True)
    if spaces:
        print(f"note: the text holds U+2581 (\u2581), SentencePiece's own space symbol, in "
              f"{per_file(spaces)}: it is read as a space, decoded as one and counted as 1 "
              f"byte, not 3", file=sys.stderr, flush=True)
    return tokens, documents


def _write_shards(tmp: str, plan: list[tuple[int, int, int]], names: list[str], documents: int,
                  itemsize: int, progress: bool, remap: np.ndarray | None = None,
                  out_dtype: np.dtype | None = None) -> dict[str, Any]:
    """Pass 2: copies each planned range into its shard files; returns metadata["splits"].

    ``remap`` (word vocabularies): the raw file holds provisional uint32 ids (``itemsize`` 4),
    written as ``remap[id]`` in ``out_dtype``; each split's ``unk_tokens`` counts its <unk>s."""
    starts = np.memmap(os.path.join(tmp, DOCS_FILE), dtype="<i8", mode="r", shape=(documents,))
    splits: dict[str, Any] = {}
    with open(os.path.join(tmp, TOKENS_FILE), "rb") as src:
        for index, (s, start, stop) in enumerate(tqdm(plan, desc="writing shards", unit="shard",
                                                      disable=not progress, leave=False)):
            name = names[s]
            entry = splits.setdefault(name, {"shards": [], "tokens": 0, "documents": 0})
            k = len(entry["shards"])
            os.makedirs(os.path.join(tmp, name), exist_ok=True)
            rel = f"{name}/shard_{k:05d}"
            src.seek(itemsize * start)
            with open(os.path.join(tmp, rel + ".bin"), "wb") as dst:
                left = stop - start
                while left:
                    n = min(left, COPY_TOKENS)
                    chunk = src.read(itemsize * n)
                    if len(chunk) != itemsize * n:
                        raise DataError(f"temporary token file ended early at token {start}")
                    if remap is not None:
                        words = remap[np.frombuffer(chunk, dtype="<u4")]
                        entry["unk_tokens"] = entry.get("unk_tokens", 0) + int(np.sum(words == UNK_ID))
                        chunk = words.astype(np.dtype(out_dtype).newbyteorder("<")).tobytes()
                    dst.write(chunk)
                    left -= n
            lo, hi = np.searchsorted(starts, [start, stop], side="left")
            local = np.asarray(starts[lo:hi], dtype=np.int64) - start
            np.save(os.path.join(tmp, rel + ".docs.npy"), local, allow_pickle=False)
            entry["shards"].append({"file": rel + ".bin", "docs": rel + ".docs.npy", "index": index,
                                    "start": start, "tokens": stop - start, "documents": len(local)})
            entry["tokens"] += stop - start
            entry["documents"] += len(local)
    del starts
    return {n: splits[n] for n in names if n in splits}


def _train_counts(tmp: str, plan: list[tuple[int, int, int]], total: int, vocab_size: int) -> np.ndarray:
    """Occurrences of each provisional (uint32) id in the training split's shards of ``plan``."""
    tokens = np.memmap(os.path.join(tmp, TOKENS_FILE), dtype="<u4", mode="r", shape=(total,))
    counts = np.zeros(vocab_size, np.int64)
    for s, start, stop in plan:
        for lo in range(start, stop, COPY_TOKENS) if s == 0 else ():
            counts += np.bincount(tokens[lo:min(stop, lo + COPY_TOKENS)], minlength=vocab_size)
    del tokens
    return counts


def _check_input(path: str) -> None:
    """A file's contents (not binary), or a tfds split's existence, before anything is read."""
    if is_tfds(path):
        check_tfds(path)
    else:
        check_contents(path)


def prepare_dataset(inputs: str | Sequence[str], output: str, *, text_column: str | None = None,
                    text_field: str | None = None, txt_mode: str = "file",
                    split: Sequence[int] = (98, 1, 1), shard_tokens: int = 2**27,
                    tokenizer: Tokenizer | SentencePieceTraining | WordTraining | None = None,
                    overwrite: bool = False, progress: bool = True,
                    val_inputs: str | Sequence[str] | None = None,
                    test_inputs: str | Sequence[str] | None = None,
                    shuffle_seed: int | None = None) -> str:
    """Tokenizes ``inputs`` (paths/globs/folders, ``tfds:NAME/SPLIT`` or a built-in corpus
    name) into ``output``, with ``tokenizer`` (default: sentiment-discovery bytes), or with
    a SentencePiece model trained first on a sample of the inputs if it is a
    ``SentencePieceTraining``.

    ``split`` = shard counts (train, val, test) per cycle; the stream is cut into
    ``ceil(T / (sum(split) * shard_tokens)) * sum(split)`` near-equal shards. Unless the
    validation / test text is given on its own (``val_inputs``, ``test_inputs``: e.g. PTB's
    or WikiText's files): then ``inputs`` is all training text, ``split`` is not used, and each
    part is cut into shards of at most ``shard_tokens``. ``shuffle_seed``: the documents of
    each part in a random order from it (``lmscale.data.shuffle``). Returns ``output``.
    Raises DataError on bad input, leaving no output and no temporary folder.
    """
    split = _check_args(split, shard_tokens, txt_mode)
    if shuffle_seed is not None and (int(shuffle_seed) != shuffle_seed or shuffle_seed < 0):
        raise DataError(f"shuffle_seed must be an integer >= 0, got {shuffle_seed!r}")
    tokenizer = tokenizer or ByteTokenizer()
    output = kernel_path(os.fspath(output))
    if isinstance(inputs, str) and is_builtin(inputs):
        paths, source = builtin_paths(inputs), [inputs.strip()]
    else:
        paths = expand_inputs(inputs)
        source = [inputs] if isinstance(inputs, str) else [os.fspath(p) for p in inputs]
    paths = _text_inputs(paths, output)
    if not paths:
        raise DataError(f"no input files outside the output folder {output}")
    for path in paths:  # before a tokenizer is trained on binary bytes
        _check_input(path)
    parts = None  # explicit splits: the paths of train, val, test
    if val_inputs or test_inputs:
        held_out = [_text_inputs(expand_inputs(x), output) if x else [] for x in (val_inputs, test_inputs)]
        for path in (p for part in held_out for p in part):
            _check_input(path)
        # A folder or glob of train text often holds the val/test files too (PTB, WikiText):
        # they are held out of training, not read twice.
        apart = {os.path.realpath(p) for part in held_out for p in part}
        train = [p for p in paths if os.path.realpath(p) not in apart]
        if len(train) < len(paths):
            print(f"note: the val/test files are left out of the training inputs "
                  f"({len(paths) - len(train)} of {len(paths)})", file=sys.stderr, flush=True)
        if not train:
            raise DataError(f"no training text: every input file is a val/test file ({', '.join(source)})")
        parts = [train] + held_out
        paths = [p for part in parts for p in part]
        source += [f"{name}: {x}" for name, x in (("val", val_inputs), ("test", test_inputs)) if x]
    remove_abandoned(output)  # a killed prepare's: its temporary folder, an old output moved aside
    _check_output(output, overwrite)
    parent = os.path.dirname(output)
    if parent:
        make_output_folder(parent, output)
    training = tokenizer if isinstance(tokenizer, SentencePieceTraining) else None
    word_training = tokenizer if isinstance(tokenizer, WordTraining) else None
    if word_training is not None:  # provisional ids now; the vocabulary once the splits are known
        tokenizer = WordCounter()
    if training is not None:
        options = dict(text_column=text_column, text_field=text_field, txt_mode=txt_mode)
        tokenizer = train_sentencepiece(sample_texts(paths, training.sample_bytes, **options),
                                        training, source=", ".join(source))
    elif isinstance(tokenizer, SentencePieceTokenizer) and (lossy := tokenizer.lossy_settings()):
        print(f"note: {tokenizer.name}: "
              f"{'; '.join(lossy)}: decoding does not give back the text exactly, and bpc "
              f"counts the bytes of its pieces, not of the text (lmscale trains its own "
              f"without these: --vocab_size instead of --sp_model)", file=sys.stderr, flush=True)
    tmp = temporary_folder(output)
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    make_output_folder(tmp, output)
    try:
        path_ends: list[int] | None = [] if parts else None
        total, documents = _tokenize(paths, tmp, tokenizer, progress, path_ends, text_column=text_column,
                                     text_field=text_field, txt_mode=txt_mode)
        if total == 0:
            raise DataError(f"empty corpus: no text in {', '.join(source)}")
        if parts:
            last = np.cumsum([len(q) for q in parts]) - 1  # each part's last path (train has >= 1)
            ends = [0] + [path_ends[i] for i in last]
            part_tokens = [ends[i + 1] - ends[i] for i in range(3)]
            if part_tokens[0] < 2:
                raise DataError(f"no training text in {source[0]}")
            for name, given, count in (("val", val_inputs, part_tokens[1]),
                                       ("test", test_inputs, part_tokens[2])):
                if given and count == 0:  # a dataset without the split asked for
                    raise DataError(f"no {name} text in {given}")
            plan = explicit_plan(part_tokens, shard_tokens)
        else:
            plan = shard_plan(total, split, shard_tokens, source=_named(paths, source))
        remap, raw_itemsize = None, np.dtype(tokenizer.token_dtype).itemsize
        if shuffle_seed is not None:
            documents = shuffle_documents(os.path.join(tmp, TOKENS_FILE), os.path.join(tmp, DOCS_FILE),
                                          total, raw_itemsize, shuffle_seed, ends[1:] if parts else ())
        if word_training is not None:
            tokenizer, remap = build_vocabulary(tokenizer, _train_counts(tmp, plan, total, tokenizer.vocab_size),
                                                word_training)
        dtype = np.dtype(tokenizer.token_dtype)
        splits = _write_shards(tmp, plan, list(SPLITS), documents, raw_itemsize, progress,
                               remap=remap, out_dtype=dtype)
        if (note := unk_note(splits, word_training)) is not None:
            print(note, file=sys.stderr, flush=True)
        tokenizer.save(tmp)
        os.remove(os.path.join(tmp, TOKENS_FILE))
        os.remove(os.path.join(tmp, DOCS_FILE))
        metadata = {
            "format": FORMAT, "version": VERSION, "tokenizer": tokenizer.to_dict(), "dtype": dtype.name,
            "inputs": source, "files": paths,
            "options": {"text_column": text_column, "text_field": text_field, "txt_mode": txt_mode,
                        "split": None if parts else list(split), "shard_tokens": shard_tokens,
                        "split_inputs": {"val": val_inputs, "test": test_inputs} if parts else None,
                        **({} if shuffle_seed is None else {"shuffle_seed": shuffle_seed}),
                        "tokenizer_training": (training or word_training).to_dict()
                        if (training or word_training) else None},
            "num_shards": len(plan), "cycles": len(plan) // sum(split),
            "splits": splits, "total_tokens": total, "total_documents": documents,
        }
        with open(os.path.join(tmp, METADATA), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=1)
        # Checked again and published under the parent folder's lock: two prepares into one
        # output both passed the check while fsyncing their shards, and the later one replaced
        # the earlier one's output without --overwrite (both said "Prepared ... into OUTPUT").
        with writing_into(parent or ".", "lmscale.prepare"):
            _check_output(output, overwrite)  # it may have appeared meanwhile
            publish(tmp, output)  # an old output (--overwrite) moved aside, then removed
    except OSError as e:
        if e.errno == errno.EFBIG:  # a file-size limit (ulimit -f; FAT32's 4 GiB): was a traceback
            raise DataError(f"{output}: a file outgrew the file-size limit (ulimit -f) or the file "
                            f"system's ({e.filename or tmp}): the tokens of the whole text are one "
                            f"file while preparing; raise the limit or write elsewhere; nothing "
                            f"was written") from None
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = "the disk is full" if e.errno == errno.ENOSPC else "the disk quota is exceeded"
        raise DataError(f"{output}: {full} ({e.filename or tmp}): preparing needs about twice "
                        f"the dataset's size free while it runs (its tokens, then the shards); "
                        f"nothing was written") from None
    finally:
        remove_path(tmp)
    return output
