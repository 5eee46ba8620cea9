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


@pytest.mark.parametrize("buckets", [False, True])  # one bucket (the part in memory); many
def test_the_documents_are_the_same_in_a_seeded_random_order(tmp_path, monkeypatch, buckets):
    read = []
    if buckets:  # ~96 buckets, scattered 300 tokens at a time, copied 50 at a time
        monkeypatch.setattr(shuffle, "BUCKET_TOKENS", 97)
        monkeypatch.setattr(shuffle, "CHUNK_TOKENS", 300)
        monkeypatch.setattr(shuffle, "GATHER_TOKENS", 50)
        real = shuffle._bucket_documents
        monkeypatch.setattr(shuffle, "_bucket_documents", lambda *a: read.append(1) or real(*a))
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
    assert (len(read) > 50) == buckets  # the bucket files were (or were not) used
    assert not [f for f in os.listdir(tmp_path) if "bucket" in f]  # none left behind


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
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.data_source import resolve_dataset
    write_txt_files(tmp_path / "in", make_docs(200, seed=0, min_len=5, max_len=40))
    plain = tiny_config(str(tmp_path / "in"))
    config = tiny_config(str(tmp_path / "in"), **{"data.shuffle_documents": True,
                                                  "data.reset_every_documents": 3})
    validate(config)
    run = tmp_path / "run"
    resolve_dataset(plain.data, str(run), progress=False)
    # turned on while resuming: refused (it trained on the unshuffled text), not ignored
    with pytest.raises(CheckpointMismatchError, match="data.shuffle_documents=False; resuming it "
                                                      "with data.shuffle_documents=True"):
        resolve_dataset(config.data, str(run), progress=False, resuming=True)
    path = resolve_dataset(config.data, str(run), progress=False)  # a new run: prepared again
    assert json.loads((run / "data_request.json").read_text())["shuffle_documents"] is True
    dataset = TokenDataset.open(path)
    meta = json.loads((run / "data" / "metadata.json").read_text())
    assert meta["options"]["shuffle_seed"] == 0  # one order for every run, whatever config.seed
    batcher = train_batcher(dataset, config)
    assert batcher.reset_every == 3 == document_resets(config.data)
    bad = tiny_config("x", **{"data.reset_on_documents": True, "data.reset_every_documents": 3})
    with pytest.raises(ConfigError, match="data.reset_on_documents resets at every document"):
        validate(bad)


def test_edge_cases_keep_every_document(tmp_path):
    """Zero-length documents (one at the very end), a document longer than a bucket and than
    a copy, an empty part, and a negative seed refused."""
    docs = [np.arange(n, dtype="<u2") + 7 * i for i, n in enumerate([3, 0, 5, 400, 2, 0])]
    tokens = np.concatenate(docs)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    for bucket_tokens in (None, 50):
        (tmp_path / "t.raw").write_bytes(tokens.tobytes())
        (tmp_path / "d.raw").write_bytes(starts.astype("<i8").tobytes())
        n = shuffle.shuffle_documents(str(tmp_path / "t.raw"), str(tmp_path / "d.raw"), len(tokens),
                                      2, 3, part_ends=(8, 8, len(tokens)), bucket_tokens=bucket_tokens)
        got_t = np.fromfile(tmp_path / "t.raw", "<u2")
        got_s = np.fromfile(tmp_path / "d.raw", "<i8")
        assert n == len(got_s) == 6
        pieces = np.split(got_t, got_s[1:])
        for ours, theirs in ((pieces[:3], docs[:3]), (pieces[3:], docs[3:])):  # each part within
            assert sorted(p.tobytes() for p in ours) == sorted(d.tobytes() for d in theirs)
    with pytest.raises(Exception, match="shuffle_seed must be an integer >= 0"):
        prepare_dataset(str(tmp_path / "t.raw"), str(tmp_path / "x"), shuffle_seed=-1)


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


def test_eval_of_text_files_reads_their_documents_as_the_run_did(tmp_path):
    """``evaluate_data`` on .txt files prepared them one document a file whatever the run's
    ``data.txt_mode``, so a line-mode run's resets (every N-th line) were not its own there."""
    import dataclasses

    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    text = tmp_path / "lines.txt"
    text.write_text("".join(f"line {i} of a short text\n" for i in range(300)))
    lm = random_lm(hidden=16)
    config = lm.config.copy_and_resolve_references()
    config.data.txt_mode, config.data.reset_every_documents = "line", 3
    config.train.eval_batch_size, config.train.seq_len = 2, 32
    lm = dataclasses.replace(lm, config=config)
    prepared = {mode: prepare_dataset(str(text), str(tmp_path / mode), txt_mode=mode,
                                      split=(1, 0, 0), shard_tokens=2**40, tokenizer=lm.tokenizer,
                                      progress=False) for mode in ("line", "file")}
    got = evaluate_data(lm, str(text), max_steps=0)
    as_lines, as_file = (evaluate_data(lm, prepared[m], split="train", max_steps=0)
                         for m in ("line", "file"))
    assert got == as_lines and got["loss"] != as_file["loss"]
    # a run on a folder prepared apart: its config holds no txt_mode (the default, "file");
    # the folder's record says how its text was read
    config = config.copy_and_resolve_references()
    config.data.txt_mode, config.data.train = "file", prepared["line"]
    apart = dataclasses.replace(lm, config=config)
    assert evaluate_data(apart, str(text), max_steps=0) == as_lines


def test_a_prepared_dataset_in_input_order_is_warned_and_the_run_records_its_order(tmp_path, capsys):
    """data.train a prepared folder: config.json said shuffle_documents=true for a run that read
    the documents in their input order (one note among others said it unused)."""
    from lmscale.config import load_config
    from lmscale.training.loop import train
    write_txt_files(tmp_path / "in", make_docs(200, seed=0, min_len=20, max_len=60))
    for name, seed in (("plain", None), ("mixed", 4)):
        path = prepare_dataset(str(tmp_path / "in"), str(tmp_path / name), split=(8, 1, 0),
                               shard_tokens=2000, progress=False, shuffle_seed=seed)
        config = tiny_config(path, **{"data.shuffle_documents": True, "train.steps": 2,
                                      "train.eval_every": 0, "data.split": "8,1,0"})
        capsys.readouterr()
        train(config, str(tmp_path / f"run_{name}"))
        warned = "data.shuffle_documents asks for the documents in a random order" in \
            capsys.readouterr().err
        assert warned == (seed is None)
        _, derived = load_config(str(tmp_path / f"run_{name}" / "config.json"))
        assert derived["dataset_shuffle_seed"] == seed


@pytest.mark.parametrize("bucket_tokens", [None, 50_000])  # one bucket; many
def test_a_disk_that_fills_while_shuffling_is_the_disk_full_error(small_disk, tmp_path,
                                                                  monkeypatch, bucket_tokens):
    """numpy's tofile raised a bare OSError ('N requested and M written', no errno) past
    prepare's disk-full message, and could cut a bucket file short without a word."""
    from lmscale.data.errors import DataError
    if bucket_tokens:
        monkeypatch.setattr(shuffle, "BUCKET_TOKENS", bucket_tokens)
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i} of the text to shuffle.\n" for i in range(20_000)))
    with pytest.raises(DataError, match=r"ds: the disk is full"):  # ~640 KB: tokens fit once
        prepare_dataset(str(text), str(small_disk / "ds"), txt_mode="line", split=(1, 0, 0),
                        shard_tokens=2**40, progress=False, shuffle_seed=0)
    assert os.listdir(small_disk) == []  # nothing left


def test_a_request_recorded_with_a_seed_reads_as_its_order(tmp_path):
    """A few commits recorded data.shuffle_documents as config.seed (an integer): 0 read as
    off (False == 0), so a shuffled workdir resumed unshuffled silently."""
    from lmscale.training.checkpoints import CheckpointMismatchError
    from lmscale.training.data_source import resolve_dataset
    write_txt_files(tmp_path / "in", make_docs(60, seed=0, min_len=5, max_len=40))
    on = tiny_config(str(tmp_path / "in"), **{"data.shuffle_documents": True})
    off = tiny_config(str(tmp_path / "in"))
    run = tmp_path / "run"
    resolve_dataset(on.data, str(run), progress=False)
    request = json.loads((run / "data_request.json").read_text())
    for recorded, accepted in ((0, on), (1, None)):
        (run / "data_request.json").write_text(json.dumps({**request, "shuffle_documents": recorded}))
        for config in (on, off):
            if config is accepted:
                resolve_dataset(config.data, str(run), progress=False, resuming=True)
            else:
                with pytest.raises(CheckpointMismatchError, match="data.shuffle_documents"):
                    resolve_dataset(config.data, str(run), progress=False, resuming=True)


def test_the_scatter_keeps_the_corpus_out_of_memory(tmp_path):
    """Shuffling a 192 MB token file in buckets keeps the process's peak RSS near one chunk's
    size: read through its memory map, every page stayed resident until the end (a 1 GB
    corpus peaked at 1.9 GB of RSS, what a scheduler's memory limit counts)."""
    import subprocess
    import sys

    from tests.conftest import REPO
    total = 96 * 2**20  # uint16 tokens
    path, docs = tmp_path / "tokens.raw", tmp_path / "docs.raw"
    with open(path, "wb") as f:
        for i in range(24):
            f.write(np.full(4 * 2**20, i, "<u2").tobytes())
    np.arange(0, total, 1000, dtype="<i8").tofile(docs)
    script = ("import resource, sys\nfrom lmscale.data import shuffle\n"
              "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"shuffle.shuffle_documents({str(path)!r}, {str(docs)!r}, {total}, 2, 0, "
              "bucket_tokens=2**24)\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grew_mb = int(proc.stdout.strip())
    assert grew_mb < 96, f"peak RSS grew {grew_mb} MB shuffling 192 MB of tokens"
    assert os.path.getsize(path) == 2 * total


def _shuffled_order(tmp_path, lengths, seed, part_ends=(), bucket_tokens=None):
    """The input index of each document ``shuffle_documents`` writes (document i: ``i`` as
    every one of its uint16 tokens), in output order."""
    tokens = np.concatenate([np.full(n, i, "<u2") for i, n in enumerate(lengths)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype("<i8")
    tok, docs = str(tmp_path / "tokens.raw"), str(tmp_path / "docs.raw")
    tokens.tofile(tok)
    starts.tofile(docs)
    n = shuffle.shuffle_documents(tok, docs, len(tokens), 2, seed, part_ends, bucket_tokens)
    out, new_starts = np.fromfile(tok, "<u2"), np.fromfile(docs, "<i8")
    assert n == len(lengths) and len(new_starts) == n
    return [int(out[s]) for s in new_starts]


def test_each_bucket_is_permuted_not_only_scattered(tmp_path):
    """Two buckets: scattered alone, each bucket's documents kept their input order (the
    output two increasing runs); permuted, any order of two documents is as likely."""
    lengths = [3 + i % 5 for i in range(40)]
    order = _shuffled_order(tmp_path, lengths, 1, bucket_tokens=sum(lengths) // 2)
    assert sorted(order) == list(range(40))
    assert sum(a > b for a, b in zip(order, order[1:])) > 5  # descents: ~20 if random


def test_parts_are_shuffled_with_their_own_draws(tmp_path):
    """Two parts (train, val) of as many documents are not permuted alike: each part's
    generator is seeded with the part's index too."""
    lengths = [4] * 24
    order = _shuffled_order(tmp_path, lengths, 3, part_ends=(48, 96))
    first, second = order[:12], [i - 12 for i in order[12:]]
    assert sorted(first) == sorted(second) == list(range(12)) and first != second
