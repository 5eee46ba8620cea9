"""expand_inputs, iter_documents and the built-in corpus."""

from __future__ import annotations

import csv
import json
import os
import re
import sysconfig

import pytest

from lmscale.data import sources
from lmscale.data.builtin import BUILTIN_CORPORA, builtin_paths, is_builtin
from lmscale.data.errors import DataError
from lmscale.data.sources import expand_inputs, iter_documents


def test_expand_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    for name in ["a/x.txt", "a/deep/y.txt", "b.txt", "c.csv"]:
        (tmp_path / name).write_text("t")
    t = str(tmp_path)
    folder = expand_inputs(f"{t}/a")
    assert folder == [f"{t}/a/deep/y.txt", f"{t}/a/x.txt"]
    assert expand_inputs(f"{t}/**/*.txt") == [f"{t}/a/deep/y.txt", f"{t}/a/x.txt", f"{t}/b.txt"]
    both = expand_inputs([f"{t}/b.txt,{t}/*.txt", f"{t}/c.csv"])
    assert both == [f"{t}/b.txt", f"{t}/c.csv"]  # sorted, de-duplicated
    with pytest.raises(DataError, match=r"no such file or directory: .*nope\.txt"):
        expand_inputs([f"{t}/b.txt", f"{t}/nope.txt"])
    with pytest.raises(DataError, match=r"pattern .*\*\.jsonl matched no files"):
        expand_inputs(f"{t}/*.jsonl")
    with pytest.raises(DataError):
        expand_inputs("")


def test_folders_skip_hidden_files_and_folders(tmp_path, capfd):
    (tmp_path / "a" / ".git" / "objects").mkdir(parents=True)
    (tmp_path / "a" / ".git" / "objects" / "ab").write_bytes(b"\x00blob")
    for name in ["a/.DS_Store", "a/x.txt", "a/.notes.txt"]:
        (tmp_path / name).write_text("t")
    t = str(tmp_path)
    assert expand_inputs(f"{t}/a") == [f"{t}/a/x.txt"]
    err = capfd.readouterr().err
    assert "note: skipped 3 hidden file(s)/folder(s)" in err and f"{t}/a/.git" in err, err
    assert expand_inputs(f"{t}/a/.notes.txt") == [f"{t}/a/.notes.txt"]  # named: read
    assert expand_inputs(f"{t}/a", notes=False) == [f"{t}/a/x.txt"]
    assert capfd.readouterr().err == ""
    (tmp_path / "h" / ".hidden").mkdir(parents=True)
    (tmp_path / "h" / ".hidden" / "y.txt").write_text("t")
    with pytest.raises(DataError, match=r"h holds no files but hidden ones"):
        expand_inputs(f"{t}/h")


def test_existing_paths_with_commas_and_glob_characters_are_literal(tmp_path):
    (tmp_path / "dir, v2").mkdir()
    (tmp_path / "dir, v2" / "x.txt").write_text("in the comma folder")
    (tmp_path / "review[1].txt").write_text("one review")
    (tmp_path / "b.txt").write_text("b")
    t = str(tmp_path)
    assert expand_inputs(f"{t}/dir, v2") == [f"{t}/dir, v2/x.txt"]
    assert expand_inputs([f"{t}/review[1].txt", f"{t}/dir, v2"]) == [f"{t}/dir, v2/x.txt",
                                                                    f"{t}/review[1].txt"]
    assert expand_inputs(f"{t}/review[1].txt,{t}/b.txt") == [f"{t}/b.txt", f"{t}/review[1].txt"]
    assert sources.split_inputs([f"{t}/dir, v2", f"{t}/b.txt,{t}/c"]) == [
        f"{t}/dir, v2", f"{t}/b.txt", f"{t}/c"]
    # Among other items too (it was split: ".../dir" and "v2").
    assert sources.split_inputs(f"{t}/b.txt,{t}/dir, v2,{t}/review[1].txt") == [
        f"{t}/b.txt", f"{t}/dir, v2", f"{t}/review[1].txt"]


def test_txt_file_and_line_modes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\n\xff\nlast")
    (tmp_path / "b.py").write_bytes(b"print(1)\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    paths = [str(tmp_path / n) for n in ["a.txt", "b.py", "empty.txt"]]
    assert list(iter_documents(paths)) == [b"one\ntwo\n\xff\nlast", b"print(1)\n"]
    assert list(iter_documents(paths, txt_mode="line")) == [b"one\n", b"two\n", b"\xff\n", b"last",
                                                           b"print(1)\n"]
    with pytest.raises(DataError, match="txt_mode"):
        list(iter_documents(paths, txt_mode="para"))


def test_big_txt_file_streams_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4)
    (tmp_path / "a.txt").write_bytes(b"0123456789")
    pieces = list(sources.iter_pieces([str(tmp_path / "a.txt")]))
    assert pieces == [(b"0123", True), (b"4567", False), (b"89", False)]
    assert list(iter_documents([str(tmp_path / "a.txt")])) == [b"0123456789"]


def test_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "a,b"}) + "\n\n" + json.dumps({"text": "é\n", "x": 1}) + "\n")
    assert list(iter_documents([str(p)])) == [b"a,b", "é\n".encode()]
    q = tmp_path / "e.jsonl"
    q.write_text(json.dumps({"body": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n")
    assert list(iter_documents([str(q)], text_field="body")) == [b"x"]  # line 2 skipped, noted
    with pytest.raises(DataError, match=r"e\.jsonl:1: no field 'text'; keys are \['body'\]"):
        list(iter_documents([str(q)]))  # the first record without it: a mistyped field
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        list(iter_documents([str(bad)]))
    mac = tmp_path / "mac.jsonl"  # records ending with CR alone: one line, "Extra data"
    mac.write_bytes(b'{"text": "one"}\r{"text": "two"}\r')
    with pytest.raises(DataError, match=r"mac\.jsonl:1: invalid JSON \(Extra data.*\); its "
                                        r"records end with a carriage return alone"):
        list(iter_documents([str(mac)]))


@pytest.mark.parametrize("line", [
    b'{"text": "one"} {"text": "two"}\r\n',  # CRLF ends: two records on one line, not CRs
    b'{"text": \r "one",}\r{"text": "two"}',  # a carriage return, but another error
])
def test_the_carriage_return_hint_is_only_for_records_that_end_with_one(line):
    from lmscale.data.errors import cr_lines_hint
    with pytest.raises(ValueError) as error:
        json.loads(line)
    assert cr_lines_hint(line, error.value) == cr_lines_hint(line.decode(), error.value) == ""


@pytest.mark.parametrize("record, message", [
    ('["a list"]', "expected a JSON object, got an array"),
    ('"a string"', "expected a JSON object, got a string"),
    ('{"text": 5}', "field 'text' is a number, not a string"),
    ('{"text": ["a", "b"]}', "field 'text' is an array, not a string"),
    ('null', "expected a JSON object, got null"),
    ('{"text": true}', "field 'text' is a boolean, not a string"),
    ('{"text": 1.5}', "field 'text' is a number, not a string"),
    ('{"text": {"a": "b"}}', "field 'text' is an object, not a string"),
])
def test_jsonl_record_of_the_wrong_shape_names_its_line(tmp_path, record, message):
    """A record that is no object, or whose text is no string: the file and line, from the
    reader and from the SentencePiece sample alike (a record past the first, whose array
    start is the reader's own line)."""
    from lmscale.data.sample import sample_texts
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps({"text": "a first good record"}) + "\n" + record + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(f'{p}:2: {message}')}$"):
        list(iter_documents([str(p)]))
    with pytest.raises(DataError, match=f"^{re.escape(f'{p}:2: {message}')}$"):
        list(sample_texts([str(p)], 1 << 20))


def test_jsonl_lone_surrogate_is_one_error_naming_its_line(tmp_path):
    """A JSON "\\ud83d" without its pair (a tweet cut mid-emoji) has no UTF-8: one DataError
    naming the file and line, from the reader and from the SentencePiece sample's windows,
    not a UnicodeEncodeError traceback."""
    from lmscale.data.sample import sample_texts
    p = tmp_path / "t.jsonl"
    lines = [json.dumps({"text": f"record {i} \u4e2d\u6587 \U0001F600 filler"}) for i in range(400)]
    lines[200] = '{"text": "cut tweet \\ud83d"}'
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:201: field 'text' has '\\ud83d' at character 10, "
                                        r"a lone UTF-16 surrogate") as e:
        list(iter_documents([str(p)]))
    str(e.value).encode("utf-8")  # the message itself is printable as UTF-8
    with pytest.raises(DataError, match=r"t\.jsonl:201: .* lone UTF-16 surrogate"):
        list(sample_texts([str(p)], p.stat().st_size // 2))  # windows over the whole file


def test_csv_quoted_fields(tmp_path):
    p = tmp_path / "d.csv"
    rows = [{"id": "1", "body": 'a, "quoted" b'}, {"id": "2", "body": "multi\nline, text"},
            {"id": "3", "body": ""}]
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "body"])
        w.writeheader()
        w.writerows(rows)
    assert list(iter_documents([str(p)], text_column="body")) == [b'a, "quoted" b', b"multi\nline, text"]
    with pytest.raises(DataError, match=r"d\.csv: no column 'text'; columns are \['id', 'body'\]"):
        list(iter_documents([str(p)]))
    t = tmp_path / "d.tsv"
    t.write_text("text\tx\nhello, world\t1\n")
    assert list(iter_documents([str(t)])) == [b"hello, world"]


def test_missing_file():
    with pytest.raises(DataError, match="no such file or directory: /nonexistent/x.txt"):
        list(iter_documents(["/nonexistent/x.txt"]))


def test_builtin_python_stdlib():
    assert "python_stdlib" in BUILTIN_CORPORA
    assert is_builtin("python_stdlib") and is_builtin("builtin:python_stdlib")
    assert not is_builtin("python_stdlib2") and not is_builtin(["python_stdlib"])
    paths = builtin_paths("python_stdlib")
    assert paths == sorted(paths) == builtin_paths("builtin:python_stdlib")
    stdlib = sysconfig.get_paths()["stdlib"]
    assert all(os.path.dirname(p) == stdlib and p.endswith(".py") for p in paths)
    assert 100 < len(paths) < 400
    assert any(p.endswith(os.sep + "os.py") for p in paths)
    with pytest.raises(DataError, match="python_stdlib"):
        builtin_paths("wikipedia")


def test_csv_with_byte_order_mark(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("text,label\nhello,1\n".encode("utf-8-sig"))
    assert list(iter_documents([str(p)])) == [b"hello"]


@pytest.mark.parametrize("txt_mode,want", [("file", [b"hello\nworld\n"]),
                                           ("line", [b"hello\n", b"world\n"])])
def test_txt_byte_order_mark_is_not_text(tmp_path, txt_mode, want):
    """As in CSV and JSONL files: the UTF-8 BOM some editors write is dropped, only at the start."""
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfhello\nworld\n")
    assert list(iter_documents([str(p)], txt_mode=txt_mode)) == want
    q = tmp_path / "inner.txt"
    q.write_bytes(b"a\xef\xbb\xbfb")  # not at the start: kept
    assert list(iter_documents([str(q)])) == [b"a\xef\xbb\xbfb"]


def test_tokenizer_sample_of_a_large_txt_leaves_out_its_byte_order_mark(tmp_path):
    from lmscale.data.sample import sample_texts
    p = tmp_path / "big.txt"
    p.write_bytes(b"\xef\xbb\xbf" + b"the cat sat on the mat.\n" * 2000)
    texts = list(sample_texts([str(p)], 4000))  # a window sample: the file is larger
    assert texts and texts[0].startswith("the cat") and "\ufeff" not in "".join(texts)


def test_a_prepared_dataset_without_its_metadata_is_not_read_as_text(tmp_path):
    """An incomplete copy of a dataset (metadata.json left behind) was prepared as text: its
    binary shards were tokenized and trained on, silently."""
    from lmscale.data.prepare import prepare_dataset
    (tmp_path / "t.txt").write_text("some text to prepare. " * 400)
    out = prepare_dataset(str(tmp_path / "t.txt"), str(tmp_path / "ds"), split=(8, 1, 1),
                          shard_tokens=1024, progress=False)
    os.remove(os.path.join(out, "metadata.json"))
    for given in (out, os.path.join(out, "train")):
        with pytest.raises(DataError, match=r"holds token shards of a prepared lmscale dataset .* "
                                            r"but no readable metadata.json above them"):
            expand_inputs(given)


def test_segments_of_a_document_in_pieces_are_cut_after_a_newline():
    """A subword/word tokenizer sees a document read in pieces cut after its newlines (a
    line whole, its line end with it), the cut's ``continues`` True."""
    from lmscale.data.sources import segments
    pieces = [(b"one\ntw", True), (b"o\nthree", False), (b"x", True)]
    assert list(segments(pieces, True, 100)) == [
        (b"one\n", True, True), (b"two\nthree", False, False), (b"x", True, False)]
    assert list(segments(pieces, False, 100)) == [
        (b"one\ntw", True, False), (b"o\nthree", False, False), (b"x", True, False)]


def test_a_json_integer_past_pythons_digit_limit_is_invalid_json_at_its_line(tmp_path):
    """json raises a ValueError, not a JSONDecodeError, for it: prepare's traceback."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "id": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON \(Exceeds the limit"):
        list(sources.iter_pieces([str(path)]))


def test_a_long_list_of_files_is_split_in_linear_lookups(tmp_path, monkeypatch):
    # A list of N files looked up every run of its pieces, ~N^2 / 2 lookups of runs ~N long
    # (2,000 files: 55 s); a run is looked up only while it may still name a path.
    names = [f"review_{i:05d}.txt" for i in range(300)]
    for name in names:
        (tmp_path / name).write_text("t")
    (tmp_path / "dir, v2").mkdir()
    looked = []
    exists = sources._exists
    monkeypatch.setattr(sources, "_exists", lambda item: looked.append(item) or exists(item))
    t = str(tmp_path)
    listed = [f"{t}/{n}" for n in names] + [f"{t}/dir, v2"]
    assert sources.split_inputs(",".join(listed)) == listed
    assert len(looked) <= 2 * len(listed), len(looked)
    monkeypatch.chdir(tmp_path)  # relative names: runs grow within one folder
    looked.clear()
    assert sources.split_inputs(",".join(names + ["dir, v2"])) == names + ["dir, v2"]
    assert len(looked) <= 20 * len(names), len(looked)


def test_the_longest_run_of_pieces_that_exists_is_one_item(tmp_path):
    """Runs are tried growing: "a, b" and "a, b, c" both folders, the longer is the item."""
    (tmp_path / "a, b").mkdir()
    (tmp_path / "a, b, c").mkdir()
    t = str(tmp_path)
    assert sources.split_inputs(f"{t}/a, b, c,{t}/a, b") == [f"{t}/a, b, c", f"{t}/a, b"]
