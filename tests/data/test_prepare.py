"""prepare_dataset: round trips per format, shard plan and split assignment, atomic failure."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from lmscale.data import prepare as prepare_lib
from lmscale.data.errors import DataError
from lmscale.data.prepare import assign_splits, prepare_dataset, shard_plan
from lmscale.data.tokenizer import ByteTokenizer

from tests.data.helpers import expected_starts, leftovers, make_docs, read_stream, stream_entries, write_txt_files

TOK = ByteTokenizer()


def check_round_trip(out, docs: list[bytes], tok: ByteTokenizer = TOK) -> dict:
    """The dataset's stream decodes to the documents joined; document starts match."""
    tokens, starts = read_stream(out)
    assert tok.decode_bytes(tokens) == b"".join(docs)
    np.testing.assert_array_equal(starts, expected_starts(docs))
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["total_tokens"] == len(tokens) == sum(s["tokens"] for s in meta["splits"].values())
    assert meta["total_documents"] == sum(1 for d in docs if d)
    assert meta["total_documents"] == sum(s["documents"] for s in meta["splits"].values())
    for e in stream_entries(out):
        assert len(np.load(os.path.join(out, e["docs"]))) == e["documents"]
    return meta


def test_txt_file_mode_round_trip(tmp_path):
    docs = make_docs(40, seed=1) + [b""] + make_docs(5, seed=2)
    write_txt_files(tmp_path / "in", docs)
    out = prepare_dataset(str(tmp_path / "in" / "*.txt"), str(tmp_path / "out"), split=(8, 1, 1),
                          shard_tokens=50, progress=False)
    assert out == str(tmp_path / "out")
    meta = check_round_trip(out, docs)
    assert meta["format"] == "lmscale-tokens" and meta["version"] == 1 and meta["dtype"] == "uint16"
    assert meta["tokenizer"] == TOK.to_dict()
    assert all(len(s["shards"]) > 1 for s in meta["splits"].values())  # several cycles
    assert not os.path.exists(os.path.join(out, "tokens.raw"))
    assert leftovers(tmp_path / "out") == ["out"]


@pytest.mark.parametrize("encode_bytes, doc_flush", [(1 << 20, 1 << 16), (1, 1), (100, 3)])
def test_txt_line_mode_round_trip(tmp_path, monkeypatch, encode_bytes, doc_flush):
    monkeypatch.setattr(prepare_lib, "ENCODE_BYTES", encode_bytes)
    monkeypatch.setattr(prepare_lib, "DOC_FLUSH", doc_flush)
    lines = [d.replace(b"\n", b" ") + b"\n" for d in make_docs(200, seed=3)] + [b"no newline at end"]
    (tmp_path / "a.txt").write_bytes(b"".join(lines))
    out = prepare_dataset([str(tmp_path / "a.txt")], str(tmp_path / "out"), txt_mode="line",
                          split=(3, 1, 1), shard_tokens=1000, progress=False)
    check_round_trip(out, lines)


@pytest.mark.parametrize("encode_bytes", [1, 5, 1 << 20])
def test_whole_file_read_in_pieces_is_one_document(tmp_path, monkeypatch, encode_bytes):
    from lmscale.data import sources
    monkeypatch.setattr(sources, "CHUNK_BYTES", 7)
    monkeypatch.setattr(prepare_lib, "ENCODE_BYTES", encode_bytes)
    monkeypatch.setattr(prepare_lib, "DOC_FLUSH", 2)
    docs = make_docs(6, seed=4, min_len=20)
    write_txt_files(tmp_path / "in", docs)
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(2, 1, 0), progress=False)
    check_round_trip(out, docs)


def test_jsonl_round_trip(tmp_path):
    docs = make_docs(50, seed=5)
    with open(tmp_path / "d.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"id": 1, "body": d.decode()}) + "\n")
    out = prepare_dataset(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), text_field="body",
                          split=(4, 1, 1), shard_tokens=100, progress=False)
    check_round_trip(out, docs)


def test_csv_round_trip_with_quotes_commas_newlines(tmp_path):
    docs = [b'a, "quoted", b', b"two\nlines, and, commas", "ünïcode → ok".encode()] + make_docs(30, seed=6)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "sentence"])
        for i, d in enumerate(docs):
            w.writerow([i % 2, d.decode()])
    out = prepare_dataset(str(tmp_path / "d.csv"), str(tmp_path / "out"), text_column="sentence",
                          split=(2, 1, 1), shard_tokens=200, progress=False)
    check_round_trip(out, docs)


def test_openai_tokenizer(tmp_path):
    docs = make_docs(10, seed=7)
    write_txt_files(tmp_path / "in", docs)
    tok = ByteTokenizer.openai()
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(1, 0, 0),
                          tokenizer=tok, progress=False)
    meta = check_round_trip(out, docs, tok)
    assert meta["tokenizer"] == {"kind": "byte", "offset": 0, "pad_id": None}
    assert meta["dtype"] == "uint8"  # 256 ids: the smallest dtype holding them
    assert all(os.path.getsize(os.path.join(out, e["file"])) == e["tokens"] for e in stream_entries(out))
    tokens, _ = read_stream(out)
    np.testing.assert_array_equal(tokens, np.frombuffer(b"".join(docs), np.uint8))


def test_assign_splits_spread_evenly():
    assert assign_splits((8, 1, 1)) == [0, 0, 0, 1, 0, 0, 2, 0, 0, 0]
    assert assign_splits((3, 0, 0)) == [0, 0, 0]
    for split in [(98, 1, 1), (1000, 1, 1), (5, 3, 2), (1, 1, 1), (2, 0, 1)]:
        order = assign_splits(split)
        assert [order.count(s) for s in range(3)] == list(split)
    order = assign_splits((1000, 1, 1))
    assert 0 < order.index(1) < order.index(2) < 1000  # val, test inside the train stream


def test_split_counts_and_sizes(tmp_path):
    docs = make_docs(30, seed=8)
    write_txt_files(tmp_path / "in", docs)
    total = sum(len(d) for d in docs)
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(8, 1, 1),
                          shard_tokens=total, progress=False)
    meta = check_round_trip(out, docs)
    assert meta["num_shards"] == 10 and meta["cycles"] == 1
    assert [len(meta["splits"][s]["shards"]) for s in ("train", "val", "test")] == [8, 1, 1]
    entries = stream_entries(out)
    sizes = [e["tokens"] for e in entries]
    assert max(sizes) - min(sizes) <= 1
    assert [e["split"] for e in entries] == ["train"] * 3 + ["val"] + ["train"] * 2 + ["test"] + ["train"] * 3
    assert [e["file"] for e in entries if e["split"] == "train"] == [
        f"train/shard_{k:05d}.bin" for k in range(8)]


def test_cycles_when_shards_are_small(tmp_path):
    docs = make_docs(30, seed=9)
    write_txt_files(tmp_path / "in", docs)
    total = sum(len(d) for d in docs)
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(3, 1, 1),
                          shard_tokens=40, progress=False)
    meta = check_round_trip(out, docs)
    cycles = -(-total // (5 * 40))
    assert meta["cycles"] == cycles and meta["num_shards"] == 5 * cycles
    entries = stream_entries(out)
    assert [e["split"] for e in entries] == ["train", "val", "train", "test", "train"] * cycles
    assert max(e["tokens"] for e in entries) <= 40
    for name in ("train", "val", "test"):
        s = meta["splits"][name]
        assert len(s["shards"]) == {"train": 3, "val": 1, "test": 1}[name] * cycles
        assert s["tokens"] == sum(e["tokens"] for e in s["shards"])


def test_zero_val_test_and_single_shard(tmp_path):
    docs = make_docs(10, seed=10)
    write_txt_files(tmp_path / "in", docs)
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(1, 0, 0),
                          shard_tokens=2**40, progress=False)
    meta = check_round_trip(out, docs)
    assert list(meta["splits"]) == ["train"] and meta["num_shards"] == 1


def test_shard_plan():
    plan = shard_plan(103, (8, 1, 1), 1000)
    sizes = [b - a for _, a, b in plan]
    assert sorted(sizes) == [10] * 7 + [11] * 3
    assert plan[0][1] == 0 and plan[-1][2] == 103
    assert all(plan[i][2] == plan[i + 1][1] for i in range(len(plan) - 1))
    with pytest.raises(DataError, match="corpus too small: 19 tokens for 10 shards"):
        shard_plan(19, (8, 1, 1), 1000)


def test_python_stdlib_builtin(tmp_path):
    from lmscale.data.builtin import builtin_paths
    out = prepare_dataset("python_stdlib", str(tmp_path / "std"), progress=False)
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    paths = builtin_paths("python_stdlib")
    assert meta["total_tokens"] == sum(os.path.getsize(p) for p in paths)
    assert meta["inputs"] == ["python_stdlib"] and meta["files"] == paths
    assert [len(meta["splits"][s]["shards"]) for s in ("train", "val", "test")] == [98, 1, 1]


def test_progress_bar_runs(tmp_path, capsys):
    docs = make_docs(20, seed=11)
    write_txt_files(tmp_path / "in", docs)
    out = prepare_dataset(str(tmp_path / "in"), str(tmp_path / "out"), split=(2, 1, 1), progress=True)
    check_round_trip(out, docs)
    assert capsys.readouterr().out == ""  # bars go to stderr only


def test_output_inside_inputs_is_not_read(tmp_path):
    docs = make_docs(20, seed=12)
    write_txt_files(tmp_path / "in", docs)
    out = str(tmp_path / "in" / "prepared")
    prepare_dataset(str(tmp_path / "in"), out, split=(2, 1, 1), progress=False)
    prepare_dataset(str(tmp_path / "in"), out, split=(2, 1, 1), progress=False, overwrite=True)
    check_round_trip(out, docs)


def test_output_appearing_before_publish_is_refused(tmp_path, monkeypatch):
    """Two prepares into one output: the second to finish must not replace the first's without
    --overwrite (both passed the existence check while fsyncing their shards, and both said
    "Prepared ... into OUTPUT"): the output is checked and published under its parent's lock."""
    import fcntl

    from lmscale.data import prepare as prep_mod
    text = tmp_path / "a.txt"
    text.write_text("hello world\n" * 200)
    out = str(tmp_path / "out")
    real_publish = prep_mod.publish
    seen = {}

    def racing_publish(tmp, path):
        # the parent folder is locked while the output is checked and published
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen["locked"] = True
        return real_publish(tmp, path)

    monkeypatch.setattr(prep_mod, "publish", racing_publish)
    prep_mod.prepare_dataset(str(text), out, split=(8, 1, 1), shard_tokens=200, progress=False)
    assert seen["locked"]
    monkeypatch.undo()
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        prep_mod.prepare_dataset(str(text), out, split=(9, 1, 1), shard_tokens=100, progress=False)
    assert not [e for e in os.listdir(tmp_path) if ".tmp-" in e]
