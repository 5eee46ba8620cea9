"""From ``config.data`` to a prepared dataset and the training and validation streams.

``data.train`` may name a prepared dataset folder, raw text paths/globs, or a built-in
corpus; the latter two are prepared once into WORKDIR/data (re-prepared only when the
request changes), so re-running the same command reuses them. In a multi-process run
(WORKDIR on a filesystem all processes share) process 0 prepares while the others wait,
then all open the same folder.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections

from lmscale.atomic import write_json
from lmscale.config import parse_split
from lmscale.data.builtin import is_builtin
from lmscale.data.dataset import TokenDataset, dataset_metadata, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.sources import split_inputs
from lmscale.data.stream import StreamBatcher, document_resets
from lmscale.data.spm import SentencePieceTokenizer, SentencePieceTraining
from lmscale.data.tokenizer import ByteTokenizer, Tokenizer, tokenizer_from_dict
from lmscale.data.words import WordTraining

TOKENIZERS = {"sentiment_discovery": ByteTokenizer.sentiment_discovery, "openai": ByteTokenizer.openai}
SENTENCEPIECE = "sentencepiece"
WORD = "word"


def make_tokenizer(data: ml_collections.ConfigDict | str
                   ) -> Tokenizer | SentencePieceTraining | WordTraining:
    """The tokenizer ``data.tokenizer`` names: a byte tokenizer, the SentencePiece model at
    ``data.sp_model``, or (``data.sp_model`` empty) a request to train one while preparing;
    for "word", a request to build the vocabulary from the training split while preparing."""
    name = data if isinstance(data, str) else str(data.tokenizer)
    if name in TOKENIZERS:
        return TOKENIZERS[name]()
    if name == WORD:
        if isinstance(data, str):
            return WordTraining(option_prefix="data.word_")
        return WordTraining(min_count=data.word_min_count, max_size=data.word_vocab_size,
                            option_prefix="data.word_")
    if name != SENTENCEPIECE:
        raise DataError(f"data.tokenizer must be one of {sorted([*TOKENIZERS, SENTENCEPIECE, WORD])}, "
                        f"got {name!r}")
    if isinstance(data, str):
        raise DataError("data.tokenizer='sentencepiece' needs the data config (data.vocab_size, data.sp_model)")
    if data.sp_model:
        return SentencePieceTokenizer.from_file(data.sp_model)
    return SentencePieceTraining(vocab_size=data.vocab_size, model_type=data.sp_model_type,
                                 sample_bytes=data.sp_sample_bytes, option_prefix="data.")


def one_byte_tokens(data: ml_collections.ConfigDict) -> bool:
    """Whether each token of ``data.tokenizer`` is one byte of text (the byte tokenizers):
    then chars/s is tokens/s; a subword or word token's bytes are known only from text."""
    return str(data.tokenizer) in TOKENIZERS


def vocab_size_of(data: ml_collections.ConfigDict) -> int:
    """The vocabulary (ids, padding included) the run's tokenizer will have, without
    preparing data: a prepared ``data.train``'s own tokenizer; bytes 257 (sentiment_discovery)
    or 256 (openai); sentencepiece ``data.vocab_size + 1``, or ``data.sp_model``'s."""
    spec = str(data.train)
    metadata = dataset_metadata(spec)
    if metadata is not None:
        return tokenizer_from_dict(metadata.get("tokenizer"), base_dir=spec).vocab_size
    tokenizer = make_tokenizer(data)
    if isinstance(tokenizer, WordTraining):
        if not tokenizer.max_size:
            raise DataError("data.tokenizer='word': the vocabulary size is known once the data is "
                            "prepared; prepare it (lmscale.prepare --tokenizer=word) and pass the "
                            "folder as data.train, or set data.word_vocab_size")
        return tokenizer.max_size
    if isinstance(tokenizer, SentencePieceTraining):
        return tokenizer.vocab_size + 1
    return tokenizer.vocab_size


# data.shuffle_documents' order: one for every run (not config.seed), so that runs of other
# seeds read the same documents in the same order and validate on the same text.
SHUFFLE_SEED = 0


def _recorded_shuffle(value: Any) -> Any:
    """A record's shuffle_documents: absent (before 2026-12-05) is off; an integer (a seed,
    recorded for a few commits of 2026-12-05) is on when it is ``SHUFFLE_SEED``, else that
    seed's own order."""
    if value is None or isinstance(value, bool):
        return bool(value)
    return True if value == SHUFFLE_SEED else f"seed {value}"


def _request(data: ml_collections.ConfigDict) -> dict:
    """What WORKDIR/data was prepared from (data_request.json): re-prepared when it changes."""
    request = {"inputs": str(data.train), "text_column": data.text_column, "text_field": data.text_field,
               "txt_mode": data.txt_mode, "split": data.split, "shard_tokens": data.shard_tokens,
               "tokenizer": data.tokenizer}
    if data.tokenizer == SENTENCEPIECE:  # byte requests stay as before, so old workdirs match
        if data.sp_model:
            request["sp_model"] = {"path": data.sp_model, "sha256": make_tokenizer(data).sha256}
        else:
            request.update(vocab_size=data.vocab_size, sp_model_type=data.sp_model_type,
                           sp_sample_bytes=data.sp_sample_bytes)
    if data.tokenizer == WORD:
        request.update(word_min_count=data.word_min_count, word_vocab_size=data.word_vocab_size)
    if data.val or data.test:  # splits given as their own text
        request.update(val=data.val, test=data.test)
    # Recorded on or off (a record without it: off), so turning it either way re-prepares.
    request["shuffle_documents"] = bool(data.get("shuffle_documents", False))
    return request


def _same_request_value(key: str, recorded: object, now: object) -> bool:
    """Whether a data_request.json value is what the run asks for now: a SentencePiece model
    file by its contents (the same file moved or copied elsewhere prepares the same data)."""
    if key == "sp_model" and isinstance(recorded, dict) and isinstance(now, dict):
        return recorded.get("sha256") == now.get("sha256")
    return recorded == now


def sp_model_note(data: ml_collections.ConfigDict) -> str | None:
    """A note naming the SentencePiece training settings given with ``data.sp_model`` (the
    model file defines the vocabulary: they are not used; config.json records them as given)."""
    if data.tokenizer != SENTENCEPIECE or not data.sp_model:
        return None
    from lmscale.config import default_config
    default = default_config().data
    moved = [f"data.{k}={data[k]!r}" for k in ("vocab_size", "sp_model_type", "sp_sample_bytes")
             if data[k] != default[k]]
    if not moved:
        return None
    return (f"note: {', '.join(moved)} not used: data.sp_model={data.sp_model!r} is the "
            f"tokenizer (these train one)")


# The data.* settings of one tokenizer's training (lmscale.prepare refuses them with another)
TOKENIZER_SETTINGS = {SENTENCEPIECE: ("vocab_size", "sp_model_type", "sp_sample_bytes"),
                      WORD: ("word_min_count", "word_vocab_size")}


def other_tokenizer_note(data: ml_collections.ConfigDict) -> str | None:
    """A note naming the settings of another tokenizer than ``data.tokenizer`` moved from their
    defaults (``data.vocab_size`` with the word tokenizer, whose cap is data.word_vocab_size:
    not used; config.json records them as given, so a config can be rerun with another)."""
    from lmscale.config import default_config
    default = default_config().data
    moved = [f"data.{k}={data[k]!r}" for name, keys in TOKENIZER_SETTINGS.items()
             if data.tokenizer != name for k in keys if data[k] != default[k]]
    if not moved:
        return None
    return (f"note: {', '.join(moved)} not used: settings of another tokenizer than "
            f"data.tokenizer={data.tokenizer!r}")


def text_sources(data: ml_collections.ConfigDict) -> list[list] | None:
    """[path, bytes, mtime_ns] of each text file ``data.train`` / ``val`` / ``test`` name (a
    file edited under the same path changes them), or None where they cannot be read (a
    built-in corpus, or text moved away since it was prepared)."""
    from lmscale.data.sources import expand_inputs
    from lmscale.data.tfds import is_tfds
    if is_builtin(str(data.train)):
        return None
    out = []
    try:
        for spec in (str(data.train), data.val, data.test):
            for path in (expand_inputs(spec, notes=False) if spec else []):
                if not is_tfds(path):
                    st = os.stat(path)
                    out.append([path, st.st_size, st.st_mtime_ns])
    except (DataError, OSError):
        return None
    return out


def same_text_files(workdir: str, data: ml_collections.ConfigDict) -> bool:
    """Whether ``data.train`` / ``val`` / ``test`` name text files with the names and sizes
    WORKDIR/data was prepared from (its data_request.json's sources, in order): the run's
    text under another path (moved to another machine, or a relative path spelled from
    elsewhere). A resume reads WORKDIR/data, not the text; False where either is unknown."""
    try:
        with open(os.path.join(workdir, "data_request.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("sources")
    except (OSError, ValueError, AttributeError):
        return False
    now = text_sources(data)
    key = lambda sources: [(os.path.basename(p), n) for p, n, _ in sources]
    return bool(recorded) and now is not None and key(recorded) == key(now)


def changed_sources(old: list[list], new: list[list]) -> str:
    """What differs between two ``text_sources`` lists, in words (the first few files)."""
    was, now = {p: (n, t) for p, n, t in old}, {p: (n, t) for p, n, t in new}
    said = [f"{p} is new" for p in now if p not in was]
    said += [f"{p} is gone" for p in was if p not in now]
    for p in now:
        if p in was and now[p] != was[p]:
            said.append(f"{p} was modified ({was[p][0]} -> {now[p][0]} bytes)"
                        if now[p][0] != was[p][0] else f"{p} was modified (same size, newer time)")
    return "; ".join(said[:3]) + (f"; and {len(said) - 3} more" if len(said) > 3 else "")


# The data.* fields that say how text is prepared: a prepared dataset has its own.
PREPARE_FIELDS = ("tokenizer", "split", "vocab_size", "sp_model", "sp_model_type", "sp_sample_bytes",
                  "word_min_count", "word_vocab_size", "text_column", "text_field", "txt_mode",
                  "shard_tokens", "val", "test", "shuffle_documents")


def _prepared_with(metadata: dict) -> dict:
    """What a prepared dataset's metadata says of the ``PREPARE_FIELDS`` (those it records)."""
    options = metadata.get("options") or {}
    training = options.get("tokenizer_training") or {}
    kind = (metadata.get("tokenizer") or {}).get("kind")
    names = [n for n, make in TOKENIZERS.items() if make().to_dict() == metadata.get("tokenizer")]
    out = {"tokenizer": names[0] if names else kind,
           "split": ",".join(map(str, options["split"])) if options.get("split") else None,
           "text_column": options.get("text_column") or "", "text_field": options.get("text_field") or "",
           "txt_mode": options.get("txt_mode"), "shard_tokens": options.get("shard_tokens"),
           "shuffle_documents": options.get("shuffle_seed") is not None}
    if kind == SENTENCEPIECE:
        out.update(vocab_size=training.get("vocab_size"), sp_model_type=training.get("model_type"),
                   sp_sample_bytes=training.get("sample_bytes"))
    if kind == WORD:
        out.update(word_min_count=training.get("min_count"), word_vocab_size=training.get("max_size"))
    return out


def _note_unused(data: ml_collections.ConfigDict, spec: str) -> None:
    """One note naming the data.* preparation settings given (other than their default and
    than the dataset's own) that do not apply to the prepared dataset ``spec``."""
    from lmscale.config import default_config
    default = default_config().data
    metadata = dataset_metadata(spec)
    try:
        own = _prepared_with(metadata) if metadata is not None else {}
    except AttributeError:  # options of another shape than prepare writes
        own = {}
    same = lambda key, value: str(value).replace(" ", "") == str(own.get(key)).replace(" ", "")
    unused = [f"data.{k}={data[k]!r}" for k in PREPARE_FIELDS
              if data[k] != default[k] and not same(k, data[k])]
    if unused:
        print(f"note: data.train {spec} is a prepared dataset, with its own tokenizer and "
              f"splits: {', '.join(unused)} not used (settings for preparing text)",
              file=sys.stderr, flush=True)
    if data.get("shuffle_documents") and own and not own.get("shuffle_documents"):
        print(f"warning: data.shuffle_documents asks for the documents in a random order, and "
              f"{spec} holds them in the order of its input: prepare it again with "
              f"lmscale.prepare ... --shuffle_documents=SEED (this run reads them in order)",
              file=sys.stderr, flush=True)


def resolve_dataset(data: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
                    resuming: bool = False) -> str:
    """Returns the folder of a prepared dataset for ``data.train``, preparing it if needed.

    The text files' sizes and times are recorded with it (WORKDIR/data_request.json): text
    changed under the same paths is prepared again, unless ``resuming`` (a run with
    checkpoints goes on with the data its steps were counted on; a note says so).
    With several processes only process 0 checks and prepares; the others wait for it at a
    barrier and fail with a pointer to process 0's error if it could not prepare.
    """
    spec = str(data.train)
    prepared = is_dataset(spec)
    if jax.process_count() > 1:  # each process sees its own filesystem: one branch for all
        _check_every_process_sees(spec, prepared)
    if prepared:
        if jax.process_index() == 0:
            _note_unused(data, spec)
        return spec
    if jax.process_count() == 1:
        return _prepare_in_workdir(data, workdir, progress, resuming)
    from lmscale.distributed import process_0_says
    target, failure = None, None
    if jax.process_index() == 0:
        try:
            target = _prepare_in_workdir(data, workdir, progress, resuming)
        except Exception as e:  # re-raised below, once the others know
            failure = e
    # A collective: every process waits here until process 0 is done.
    ok = process_0_says(failure is None)
    if failure is not None:
        raise failure
    if not ok:
        raise DataError(f"process 0 could not prepare {spec!r} into {workdir}/data; see its error")
    target = target or os.path.join(workdir, "data")
    if not is_dataset(target):
        raise DataError(f"process 0 prepared the dataset into {target}, which this process "
                        f"({jax.process_index()}) cannot see: the workdir must be on a filesystem "
                        f"shared by all processes")
    return target


def _check_every_process_sees(spec: str, prepared: bool) -> None:
    """Raises on every process when ``data.train`` is a prepared dataset on some processes and
    not on others (a folder missing on one host: process 0 went on to train, the others to
    wait for it to prepare, and the run hung in two different collectives)."""
    from lmscale.distributed import processes_that_differ
    differ = processes_that_differ(str(prepared))
    if differ:
        others = ", ".join(map(str, differ))
        on_0 = prepared if jax.process_index() not in differ else not prepared  # process 0's
        where = "on process 0 but not on" if on_0 else "not on process 0 but on"
        raise DataError(f"data.train={spec!r} is a prepared dataset {where} process"
                        f"{'es' if len(differ) > 1 else ''} {others}: every process must see the "
                        f"same data (a filesystem shared by all hosts, or the same copy on each)")


def _prepare_in_workdir(data: ml_collections.ConfigDict, workdir: str, progress: bool,
                        resuming: bool = False) -> str:
    """Prepares ``data.train`` (text or a built-in corpus) into WORKDIR/data unless it is there
    (prepared with the same settings from the same files; see ``resolve_dataset``)."""
    spec = str(data.train)
    target = os.path.join(workdir, "data")
    for note in (sp_model_note(data), other_tokenizer_note(data)):
        if note:
            print(note, file=sys.stderr, flush=True)
    request, sources = _request(data), text_sources(data)
    request_path = os.path.join(workdir, "data_request.json")
    if is_dataset(target) and os.path.exists(request_path):
        recorded = _read_request(request_path, target)
        old_sources = recorded.pop("sources", None)  # absent before 2026-12-04: not compared
        recorded["shuffle_documents"] = _recorded_shuffle(recorded.get("shuffle_documents"))
        moved = [k for k in sorted(recorded) if not _same_request_value(k, recorded[k], request.get(k))]
        if resuming and not moved:  # keys only a newer lmscale records, or the same sp_model
            recorded = request  # file moved: the same request
        paths = {"inputs": "data.train", "val": "data.val", "test": "data.test"}
        if resuming and moved and set(moved) <= set(paths) and same_text_files(workdir, data):
            print(f"note: {', '.join(f'{paths[k]}={request.get(k)!r}' for k in moved)} names "
                  f"the text {target} was prepared from ({', '.join(repr(recorded.get(k)) for k in moved)}) "
                  f"under another path: the same file names and sizes; the resumed run goes on "
                  f"with {target}", file=sys.stderr, flush=True)
            if jax.process_index() == 0:  # where its text is now (later changes: said there)
                write_json(request_path, {**request, "sources": sources}, indent=2)
            return target
        if moved and resuming:  # refused before the run's data is replaced
            key = moved[0]
            from lmscale.training.checkpoints import CheckpointMismatchError
            name = "data.train" if key == "inputs" else f"data.{key}"
            raise CheckpointMismatchError(
                f"{workdir} was trained on {target}, prepared with {name}={recorded.get(key)!r}; "
                f"resuming it with {name}={request.get(key)!r} would prepare it again, and the "
                f"recorded steps were counted on the other: refused; use the same value, a new "
                f"--workdir, or --config.resume=false to start afresh (the old run is archived)")
        if recorded == request:
            if old_sources is None or sources is None or old_sources == sources:
                return target
            changed = (f"note: the text changed since {target} was prepared from it "
                       f"({changed_sources(old_sources, sources)}); ")
            if resuming:
                print(f"{changed}this resumed run goes on with the prepared data, which its "
                      f"steps were counted on. To train on the new text, start afresh "
                      f"(--config.resume=false) or use another workdir", file=sys.stderr,
                      flush=True)
                return target
            print(f"{changed}preparing it again", file=sys.stderr, flush=True)
    if not is_builtin(spec) and not spec.strip():
        raise DataError("data.train is empty: give a prepared dataset, text paths/globs or 'python_stdlib'")
    try:
        prepare_dataset(spec if is_builtin(spec) else split_inputs(spec),
                        target, text_column=data.text_column or None,
                        text_field=data.text_field or None,
                        txt_mode=data.txt_mode, split=parse_split(data.split),
                        shard_tokens=data.shard_tokens, tokenizer=make_tokenizer(data),
                        overwrite=True, progress=progress,
                        val_inputs=split_inputs(data.val) or None,
                        test_inputs=split_inputs(data.test) or None,
                        shuffle_seed=SHUFFLE_SEED if data.get("shuffle_documents") else None)
    except DataError as e:
        raise _missing_corpus(e, data) from None
    if sources is not None:
        request["sources"] = sources
    write_json(request_path, request, indent=2)  # all or nothing: a torn record stops every resume
    return target


def _missing_corpus(error: DataError, data: ml_collections.ConfigDict) -> DataError:
    """A missing text file named by ``data.train`` / ``val`` / ``test``, said with the setting
    that names it and where such a corpus comes from (a GPU or paper config names one the
    user fetches: "no such file or directory: data/penn/train.txt" said neither)."""
    prefix = "no such file or directory: "
    text = str(error)
    if not text.startswith(prefix):
        return error
    missing = text[len(prefix):]  # a path with a fetch hint after it matches no setting: kept
    for name, value in (("data.train", data.train), ("data.val", data.val),
                        ("data.test", data.test)):
        if missing in split_inputs(str(value or "")):
            return DataError(f"{name}={str(value)!r}: {text} (the config file's docstring says "
                             f"where its corpus comes from; --config.{name}=PATHS names another)")
    return error


def _read_request(path: str, target: str) -> dict:
    """data_request.json (how ``target`` was prepared); DataError naming it when it is not a
    JSON object (torn by a full disk or a kill, emptied, edited)."""
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        reason = f"not valid JSON: {e}"
    else:
        if isinstance(recorded, dict):
            return recorded
        reason = f"a JSON {type(recorded).__name__}, not an object"
    raise DataError(f"{path} is unreadable ({reason}); it records how {target} was prepared: "
                    f"delete it to have the data prepared again and the file written anew")


def train_batcher(dataset: TokenDataset, config: ml_collections.ConfigDict) -> StreamBatcher:
    """The training stream: fixed ``train.seq_len`` columns, or variable-length BPTT
    (``train.variable_bptt``: lengths drawn per step, see ``lmscale.data.variable_bptt``)."""
    if config.train.variable_bptt:
        from lmscale.config_values import bptt_max
        from lmscale.data.variable_bptt import VariableBPTTBatcher
        return VariableBPTTBatcher(dataset.split("train"), config.train.batch_size, config.train.seq_len,
                                   max_len=bptt_max(config.train), bucket=config.train.bptt_bucket,
                                   reset_on_documents=document_resets(config.data),
                                   shuffle_shards=config.data.shuffle_shards, seed=config.seed)
    from lmscale.config import step_width  # seq_len x grad_accum_steps: k segments per row
    return StreamBatcher(dataset.split("train"), config.train.batch_size, step_width(config.train),
                         reset_on_documents=document_resets(config.data),
                         shuffle_shards=config.data.shuffle_shards, seed=config.seed)
