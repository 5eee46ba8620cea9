"""Evaluating a trained run on data: loss and bits per character of a split of a prepared
dataset, or of text files tokenized as the run's own text was.

``lmscale.eval`` and the notebook API call ``evaluate_data``; ``run_dataset`` finds the run's
own prepared dataset (its validation split) where it still is.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any

import jax

from lmscale.atomic import temporary_folder
from lmscale.config import ConfigError
from lmscale.data.dataset import TokenDataset, dataset_metadata, is_dataset
from lmscale.data.errors import DataError
from lmscale.data.prepare import prepare_dataset
from lmscale.data.sources import split_inputs
from lmscale.training.evaluate import eval_settings, evaluate_split
from lmscale.training.restore import TrainedLM
from lmscale.training.steps import make_eval_step


def run_dataset(lm: TrainedLM) -> str:
    """The prepared dataset the run trained on (where its validation split is): the recorded
    path if its files are the ones recorded (``dataset_fingerprint``), else the workdir's own
    ``data/`` if they are (a run copied or moved: the recorded path is the original's, whose
    data may since be another run's); FileNotFoundError naming what was found otherwise."""
    from lmscale.data.dataset import has_fingerprint
    path, recorded = lm.derived.get("dataset"), lm.derived.get("dataset_fingerprint")
    own = os.path.join(lm.workdir, "data")
    candidates = [p for p in dict.fromkeys([path, own]) if p and is_dataset(p)]
    if not recorded:  # a run recorded before fingerprints: the recorded path as it is
        candidates = [path] if path and is_dataset(path) else []
    for candidate in candidates:
        if not recorded or has_fingerprint(candidate, recorded):
            return candidate
    damage = [why for why in map(_dataset_damage, dict.fromkeys(p for p in (path, own) if p))
              if why]  # a shard gone or cut, a torn metadata.json: named, not "prepared again?"
    if damage:
        raise FileNotFoundError(f"{lm.workdir}: the dataset it trained on is damaged: "
                                f"{'; '.join(damage)}; restore it, or pass --data")
    if candidates:
        raise FileNotFoundError(f"{lm.workdir}: the dataset it trained on is no longer at "
                                f"{' or '.join(candidates)} (the files there differ from the ones "
                                f"it recorded: prepared again?); pass --data")
    raise FileNotFoundError(f"{lm.workdir} records no prepared training dataset "
                            f"({path or 'none, e.g. an imported model'}); pass --data")


def _dataset_damage(path: str) -> str | None:
    """What is wrong with the prepared dataset at ``path`` (a shard missing or of another size,
    metadata.json missing or unreadable), or None where it opens (or is no dataset folder)."""
    if not os.path.isdir(path) or not os.listdir(path):
        return None
    try:
        TokenDataset.open(path)
    except (DataError, OSError) as e:
        return str(e)
    return None


def evaluate_data(lm: TrainedLM, data: str, *, split: str = "val", batch_size: int | None = None,
                  seq_len: int | None = None, max_steps: int | None = None,
                  text_column: str | None = None, text_field: str | None = None
                  ) -> dict[str, float]:
    """Loss and BPC of ``lm`` on a split of a prepared dataset, or on text files (paths/globs).

    Settings left None are the run's own (``train.eval_batch_size``, ``train.seq_len``,
    ``train.eval_steps``; text files are read as the run's own text was prepared,
    ``_text_options``; its document resets always), so a run's validation split gives
    exactly the BPC its training logged (read ``lm`` in the run's ``precision.compute``, as
    ``lmscale.eval`` does).
    """
    settings = eval_settings(lm.config)
    for key, value in (("batch_size", batch_size), ("seq_len", seq_len), ("max_steps", max_steps)):
        if value is not None:
            if key != "max_steps" and value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value}")
            settings[key] = value
    max_len = lm.model().max_len  # the interface's: any kind that reads a bounded length
    if max_len and settings["seq_len"] > max_len:
        raise ConfigError(f"seq_len {settings['seq_len']} is longer than the {lm.config.model.kind} "
                          f"model's max_len={max_len}: evaluate with a seq_len of at most {max_len}")
    text_column, text_field, txt_mode = _text_options(lm, text_column, text_field)
    if is_dataset(data):
        dataset = TokenDataset.open(data)
        if dataset.tokenizer.to_dict() != lm.tokenizer.to_dict():
            raise DataError(f"{data} was prepared with the tokenizer {dataset.tokenizer.to_dict()}"
                            f"; the model reads {lm.tokenizer.to_dict()}: pass the text files "
                            f"themselves (--data=PATHS), which are tokenized as the model reads")
        return _evaluate(lm, dataset.split(split), settings)
    with temporary_folder("lmscale-eval") as tmp:  # the text's tokens, 2 bytes a byte
        try:
            path = prepare_dataset(split_inputs(data), os.path.join(tmp, "data"),
                                   text_column=text_column, text_field=text_field,
                                   split=(1, 0, 0), txt_mode=txt_mode, shard_tokens=2**40,
                                   tokenizer=lm.tokenizer, progress=False)
        except DataError as e:  # said in prepare's words (shards, a split of 1,0,0): eval's here
            if "the disk is full" in str(e):  # the temporary folder's disk, not the user's
                raise DataError(f"{e}; the text files are tokenized into a temporary folder "
                                f"({tempfile.gettempdir()}, TMPDIR): set TMPDIR to a folder "
                                f"with room, or prepare them once (python -m lmscale.prepare "
                                f"--input=... --output=DIR) and evaluate --data=DIR") from None
            found = re.match(r"corpus too small: (\d+) tokens", str(e))
            if not found:
                raise
            raise DataError(f"{data} holds {found.group(1)} token(s) for this model's tokenizer: "
                            f"scoring needs at least 2 (one to predict the next from)") from None
        text = TokenDataset.open(path).split("train")
        text.label = f"the text of {data}"  # the one split of the text is no split of the user's
        if seq_len is None and text.num_tokens < settings["seq_len"] + 1:
            # shorter than one of the run's sequences: read whole, as LM.score reads a text
            # (it was refused, "too few for one sequence", with no way out for a transformer)
            settings["seq_len"] = text.num_tokens - 1
        if batch_size is None:
            # rows of one of the run's sequences at least (a short text in one): the run's
            # eval_batch_size rows cut a recurrent model's reading of a text of fewer than
            # rows x (seq_len + 1) tokens into as many short rows (``eval_stream``), each row's
            # first token unscored and the rest read with little context (34 bytes: 17 rows of
            # 2, half of them scored, each from one byte: 3.88 bpc where LM.score said 2.07).
            # The run's own seq_len, not --seq_len: the rows, and so the result, do not change
            # with --seq_len.
            settings["batch_size"] = max(1, min(settings["batch_size"], text.num_tokens
                                                // (lm.config.train.seq_len + 1)))
        from lmscale.data.words import WordTokenizer, unk_tokens_note
        # the training split's share: its dataset opened and fingerprinted for word models only
        trained = _trained_unk_share(lm) if isinstance(lm.tokenizer, WordTokenizer) else None
        if (note := unk_tokens_note(lm.tokenizer, text.shards, data, trained)
                ) and jax.process_index() == 0:
            print(note, file=sys.stderr, flush=True)
        return _evaluate(lm, text, settings)


def _trained_unk_share(lm: TrainedLM) -> float | None:
    """The <unk> share of the run's training split (its prepared dataset's record), or None
    where that dataset is gone or recorded none (a run prepared before it was counted)."""
    try:
        train = TokenDataset.open(run_dataset(lm)).metadata["splits"]["train"]
    except (FileNotFoundError, KeyError, DataError, OSError):
        return None
    return train["unk_tokens"] / train["tokens"] if "unk_tokens" in train and train["tokens"] else None


def _text_options(lm: TrainedLM, text_column: str | None, text_field: str | None
                  ) -> tuple[str | None, str | None, str]:
    """(CSV column, JSONL field, .txt mode) the run's own text was prepared with: its prepared
    dataset's record (``derived.dataset``, or ``data.train`` when that is a folder prepared
    apart, whose settings the config does not hold), else its config's; given ones win."""
    data, options = lm.config.data, {}
    for path in (lm.derived.get("dataset"), str(data.train)):
        metadata = dataset_metadata(path) if path else None
        if metadata is not None:
            options = metadata.get("options") or {}
            break
    return (text_column or options.get("text_column") or data.get("text_column") or None,
            text_field or options.get("text_field") or data.get("text_field") or None,
            options.get("txt_mode") or data.get("txt_mode", "file"))


def _evaluate(lm: TrainedLM, split: Any, settings: dict[str, Any]) -> dict[str, float]:
    from lmscale.training.metrics import add_perplexity
    eval_step = jax.jit(make_eval_step(lm.graphdef, lm.tokenizer.byte_lengths()))
    result = evaluate_split(eval_step, lm.params, lm.model().initial_carry, split, lm.mesh, **settings)
    if result["tokens"] and not result["chars"]:  # bpc was bits per token, "chars": 0
        raise DataError(f"{split.described}: its {result['tokens']} scored token(s) are all line "
                        f"ends (<eos>), which stand for no byte of the text: bits per character "
                        f"is undefined; give text with words after the first")
    return add_perplexity(result, lm.tokenizer.to_dict().get("kind") == "word")
