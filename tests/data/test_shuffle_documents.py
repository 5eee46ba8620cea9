"""Documents shuffled while preparing (``shuffle_seed``, ``data.shuffle_documents``), and the
state reset every N documents (``data.reset_every_documents``): sentiment-discovery's
"internally shuffled" sets, read in shards of 100 reviews with the state reset at each."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmscale.config import ConfigError, validate
from lmscale.data import shuffle
from lmscale.data.dataset import TokenDataset
from lmscale.data.prepare import prepare_dataset
from lmscale.data.stream import document_resets
from lmscale.training.data_source import train_batcher
from tests.conftest import tiny_config
from tests.data.helpers import make_docs, write_txt_files


def _documents(dataset: TokenDataset, split: str) -> list[bytes]:
    """The split's documents, as token bytes, in stream order."""
    data = dataset.split(split)
    docs = []
    for shard, starts in zip(data.shards, data.doc_starts):
        tokens = np.asarray(shard)
        bounds = list(starts) + [len(tokens)]
        if bounds[0] != 0:  # a shard that starts inside a document: its continuation
            docs.append(None)
        docs += [tokens[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])]
    return docs


@pytest.mark.parametrize("bucket_tokens", [shuffle.BUCKET_TOKENS, 97])  # one bucket; many
def test_the_documents_are_the_same_in_a_seeded_random_order(tmp_path, monkeypatch, bucket_tokens):
    monkeypatch.setattr(shuffle, "BUCKET_TOKENS", bucket_tokens)
    monkeypatch.setattr(shuffle, "CHUNK_TOKENS", 300)
    texts = make_docs(300, seed=2, min_len=3, max_len=60)
    write_txt_files(tmp_path / "in", texts)
    kw = dict(split=(1, 0, 0), shard_tokens=10**6, progress=False)
    plain = TokenDataset.open(prepare_dataset(str(tmp_path / "in"), str(tmp_path / "a"), **kw))
    runs = [TokenDataset.open(prepare_dataset(str(tmp_path / "in"), str(tmp_path / name),
                                              shuffle_seed=seed, **kw))
            for name, seed in (("b", 5), ("c", 5), ("d", 6))]
    original = _documents(plain, "train")
    first, again, other = (_documents(d, "train") for d in runs)
    assert len(original) == 300 and sorted(first) == sorted(original)  # every document, whole
    assert first != original and first == again and other != first  # seeded, random
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["options"]["shuffle_seed"] == 5 and meta["total_documents"] == 300
    # no bucket files left behind
    assert not [f for f in os.listdir(tmp_path) if "bucket" in f]


def test_explicit_splits_are_shuffled_each_within_itself(tmp_path):
    parts = {}
    for name, seed in (("train", 1), ("val", 2), ("test", 3)):
        (tmp_path / f"{name}.txt").write_text(
            "".join(f"{name} {t.decode().replace(chr(10), ' ')}\n"
                    for t in make_docs(40, seed=seed, min_len=3, max_len=20)))
        parts[name] = str(tmp_path / f"{name}.txt")
    kw = dict(txt_mode="line", shard_tokens=10**6, progress=False, val_inputs=parts["val"],
              test_inputs=parts["test"])
    plain = TokenDataset.open(prepare_dataset(parts["train"], str(tmp_path / "a"), **kw))
    mixed = TokenDataset.open(prepare_dataset(parts["train"], str(tmp_path / "b"),
                                              shuffle_seed=0, **kw))
    for split in ("train", "val", "test"):
        a, b = _documents(plain, split), _documents(mixed, split)
        assert sorted(a) == sorted(b) and a != b, split


def test_a_run_prepares_shuffled_and_resets_every_n_documents(tmp_path):
    write_txt_files(tmp_path / "in", make_docs(200, seed=0, min_len=5, max_len=40))
    config = tiny_config(str(tmp_path / "in"), **{"data.shuffle_documents": True,
                                                  "data.reset_every_documents": 3})
    validate(config)
    from lmscale.training.data_source import resolve_dataset
    path = resolve_dataset(config.data, str(tmp_path / "run"), progress=False, seed=7)
    assert json.loads((tmp_path / "run" / "data_request.json").read_text())["shuffle_documents"] == 7
    dataset = TokenDataset.open(path)
    assert json.loads((tmp_path / "run" / "data" / "metadata.json").read_text())[
        "options"]["shuffle_seed"] == 7
    batcher = train_batcher(dataset, config)
    assert batcher.reset_every == 3 == document_resets(config.data)
    bad = tiny_config("x", **{"data.reset_on_documents": True, "data.reset_every_documents": 3})
    with pytest.raises(ConfigError, match="data.reset_on_documents resets at every document"):
        validate(bad)


def test_words_and_the_cli(tmp_path):
    """Word ids (provisional while preparing, the vocabulary from the shuffled training
    split: the same words), and ``python -m lmscale.prepare --shuffle_documents=SEED``."""
    from lmscale.data.words import WordTraining
    from tests.data.test_cli import run
    lines = "".join(f"line {i} of words {i % 7} and {i % 3}\n" for i in range(120))
    (tmp_path / "w.txt").write_text(lines)
    kw = dict(split=(1, 0, 0), shard_tokens=10**6, progress=False, txt_mode="line")
    plain, mixed = (TokenDataset.open(prepare_dataset(str(tmp_path / "w.txt"), str(tmp_path / n),
                                                      tokenizer=WordTraining(), shuffle_seed=s,
                                                      **kw))
                    for n, s in (("a", None), ("b", 1)))
    assert plain.tokenizer.to_dict() == mixed.tokenizer.to_dict()
    a, b = _documents(plain, "train"), _documents(mixed, "train")
    assert sorted(a) == sorted(b) and a != b
    proc = run("--input", str(tmp_path / "w.txt"), "--output", str(tmp_path / "c"),
               "--txt_mode=line", "--split=1,0,0", "--shuffle_documents=1", "--tokenizer=word")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _documents(TokenDataset.open(str(tmp_path / "c")), "train") == b
