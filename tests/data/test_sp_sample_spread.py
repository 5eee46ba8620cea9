"""The SentencePiece training sample is spread over a JSONL file (whole records from windows
at evenly spaced offsets) and over a .txt file even for a share under one window's size;
CSV and compressed files give their first documents."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lmscale.data.errors import DataError
from lmscale.data.sample import sample_texts


def halves(n: int, seed: int = 0) -> list[str]:
    """``n`` lines of words: the first half of letters a-m, the second of n-z."""
    rng = np.random.default_rng(seed)
    return [" ".join("".join(rng.choice(list("abcdefghijklm" if i < n // 2 else "nopqrstuvwxyz"), 5))
                     for _ in range(8)) + "\n" for i in range(n)]


def second_half_share(texts: list[str]) -> float:
    letters = "".join(texts).replace(" ", "").replace("\n", "")
    return sum(c >= "n" for c in letters) / len(letters)


def test_jsonl_sample_is_spread_over_the_file_in_whole_records(tmp_path):
    lines = halves(8000)  # 48 bytes of text a record, 8000 records: ~470 kB of JSONL
    p = tmp_path / "shift.jsonl"
    p.write_text("".join(json.dumps({"text": t, "stars": 5}) + "\n" for t in lines))
    texts = list(sample_texts([str(p)], 100_000))
    assert texts == list(sample_texts([str(p)], 100_000))  # deterministic
    assert 90_000 <= sum(len(t.encode()) for t in texts) <= 100_000
    assert set(texts) <= set(lines) and len(set(texts)) == len(texts)  # whole records, none twice
    assert [lines.index(t) for t in texts] == sorted(lines.index(t) for t in texts)  # in file order
    assert 0.4 < second_half_share(texts) < 0.6
    assert lines[0] in texts and max(lines.index(t) for t in texts) > 6700  # 6 windows: the last sixth too


def test_jsonl_stretch_with_little_text_leaves_its_share_to_the_others(tmp_path):
    """Records mostly other fields: every window reads its stretch's records (no record twice),
    here all of them, as the file's text is smaller than the share."""
    lines = halves(3000, seed=1)
    p = tmp_path / "meta.jsonl"
    p.write_text("".join(json.dumps({"meta": "x" * 150, "text": t}) + "\n" for t in lines))
    assert p.stat().st_size > 150_000
    assert list(sample_texts([str(p)], 150_000)) == lines


def test_small_txt_share_is_spread_too(tmp_path):
    """A share under WINDOW_BYTES (1 MiB) used to be one window at offset 0: the file's head."""
    lines = halves(20000, seed=2)  # ~980 kB
    p = tmp_path / "shift.txt"
    p.write_text("".join(lines))
    texts = list(sample_texts([str(p)], 200_000))
    sampled = "".join(texts).splitlines(keepends=True)
    assert 180_000 <= sum(len(t.encode()) for t in texts) <= 200_000
    assert set(sampled) <= set(lines)  # whole lines
    assert 0.4 < second_half_share(texts) < 0.6


def test_a_bad_record_in_the_sample_is_the_readers_error(tmp_path):
    lines = [json.dumps({"text": f"row {i}\n"}) + "\n" for i in range(5000)]
    lines[1700] = '{"text": "cut off\n'  # in the 2nd of 3 windows: invalid JSON
    lines[1701] = json.dumps({"text": None}) + "\n"  # null: skipped, as the reader does
    lines[1702] = "\n"
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(lines))
    with pytest.raises(DataError, match=r"bad\.jsonl:1701: invalid JSON"):
        list(sample_texts([str(p)], 64_000))
    lines[1700] = lines[1699]
    p.write_text("".join(lines))
    assert "row 4990\n" in list(sample_texts([str(p)], 64_000))


def test_csv_and_compressed_jsonl_give_their_first_documents(tmp_path):
    lines = halves(4000, seed=3)
    c = tmp_path / "rows.csv"
    c.write_text("text\n" + "".join(f'"{t}"\n' for t in lines))
    z = tmp_path / "rows.jsonl.gz"
    z.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in lines).encode()))
    for path in (c, z):
        texts = list(sample_texts([str(path)], 30_000))
        assert texts == lines[:len(texts)] and second_half_share(texts) == 0


def test_a_mistyped_field_is_the_readers_error_with_the_keys(tmp_path):
    """Records past the first without the field are skipped; if the first lacks it too, the
    field is mistyped: the reader's error naming the keys, not "no text to train on"."""
    p = tmp_path / "body.jsonl"
    p.write_text("".join(json.dumps({"body": f"row {i}\n"}) + "\n" for i in range(5000)))
    with pytest.raises(DataError, match=r"body\.jsonl:1: no field 'text'; keys are \['body'\]"):
        list(sample_texts([str(p)], 64_000))


def test_long_lines_still_fill_the_share(tmp_path):
    """Windows cut at line ends: with 10-30 KB lines each window lost most of its bytes, and
    the sample of a 2 MB share was 54 % of it; what a window leaves goes to the next ones."""
    import random
    rng = random.Random(0)
    p = tmp_path / "long.txt"
    with open(p, "w") as f:
        for i in range(600):
            f.write(f"w{i} " * rng.randint(2500, 7500) + "\n")
    share = 2_000_000
    got = sum(len(t.encode()) for t in sample_texts([str(p)], share, txt_mode="line"))
    assert 0.9 * share <= got <= share
    # Near the whole file, windows that take over unread budget stay in their own stretch:
    # no line is read twice.
    near = int(0.95 * p.stat().st_size)
    lines = "".join(sample_texts([str(p)], near, txt_mode="line")).splitlines()
    assert len(set(lines)) == len(lines)


def test_a_windowed_txt_sample_keeps_the_files_first_and_last_lines(tmp_path):
    """The first window starts at the file's start (its first line is whole, not skipped as a
    partial one) and a window that reaches the file's end keeps its last line, newline or not."""
    lines = halves(2000, seed=4)
    lines[0], lines[-1] = "first line of the file\n", "last line without a newline"
    p = tmp_path / "edges.txt"
    p.write_text("".join(lines))
    sampled = "".join(sample_texts([str(p)], p.stat().st_size - 10)).splitlines(keepends=True)
    assert sampled[0] == lines[0] and sampled[-1] == lines[-1]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_first_document_larger_than_the_share_is_cut_to_fit(tmp_path, kind):
    """One document longer than the file's whole share gives the share's bytes of it, not
    nothing (a CSV read from its head; a JSONL window's first record)."""
    text = "".join(halves(400, seed=5))  # ~20 kB
    p = tmp_path / f"big.{kind}"
    if kind == "csv":
        p.write_text('text\n"' + text + '"\n')
    else:
        p.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "short"}) + "\n")
    got = "".join(sample_texts([str(p)], 5_000))
    assert len(got.encode()) == 5_000 and text.startswith(got)


def test_window_count_keeps_windows_at_most_window_bytes():
    from lmscale.data.sample import MIN_WINDOWS, WINDOW_BYTES, _window_count
    share = (MIN_WINDOWS + 1) * WINDOW_BYTES + 1
    assert _window_count(share) == MIN_WINDOWS + 2  # ceil: none longer than WINDOW_BYTES
    assert _window_count(WINDOW_BYTES // 2) == min(MIN_WINDOWS, WINDOW_BYTES // 2 // (1 << 14))
