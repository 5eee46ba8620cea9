"""CSV rows as every reader takes them: the header checked, a row with another number of
fields than the header named by its line, an empty file an error (or no rows, for a corpus)."""

from __future__ import annotations

import csv

import pytest

from lmscale.data.csv_rows import csv_rows
from lmscale.data.errors import DataError
from lmscale.data.sources import iter_pieces
from lmscale.finetuning.predict import read_texts
from lmscale.transfer.labeled import load_labeled


def test_rows_with_their_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('text,label\n"two\nlines, quoted",1\nplain,0\n')
    assert list(csv_rows(str(path), ["text"])) == [
        (3, {"text": "two\nlines, quoted", "label": "1"}), (4, {"text": "plain", "label": "0"})]


@pytest.mark.parametrize("body, message", [
    ("text,label\nA moving, tender film,1\n",
     "a.csv:2: 3 fields, and the header has 2 (a comma inside a text must be quoted)"),
    ("text,label\nfine,1\nshort\n", "a.csv:3: 1 fields, and the header has 2"),
    ("words,label\nfine,1\n", "a.csv: no column 'text'; columns are ['words', 'label']"),
])
def test_every_reader_names_the_fault(tmp_path, body, message):
    """Labeled texts (transfer, fine-tuning), texts to classify, and a corpus."""
    path = tmp_path / "a.csv"
    path.write_text(body)
    for read in (lambda: load_labeled(str(path), text_column="text", label_column="label"),
                 lambda: read_texts(str(path), "text"),
                 lambda: list(iter_pieces([str(path)], text_column="text"))):
        with pytest.raises(DataError) as e:
            read()
        assert message in str(e.value)


def test_an_empty_file_is_named_so_and_a_corpus_may_hold_one(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("")
    with pytest.raises(DataError, match="a.csv is empty: expected a header row naming the "
                                        r"columns \['text', 'label'\], then one row per text"):
        load_labeled(str(path), text_column="text", label_column="label")
    with pytest.raises(DataError, match="a.csv is empty"):
        read_texts(str(path), "text")
    assert list(iter_pieces([str(path)], text_column="text")) == []


def test_tab_separated_says_tab(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("text\tlabel\nfine\tfilm\t1\n")
    with pytest.raises(DataError, match=r"a.tsv:2: 3 fields, and the header has 2 \(a "
                                        r"tab-separated file has no quoting: a text may hold "
                                        r"no tab"):
        list(csv_rows(str(path), ["text"], "\t"))


def test_a_tab_separated_file_has_no_quoting(tmp_path):
    """A text starting with a double quote merged the rows up to the next quote into one
    text (labels shifted, no error), and quotes around a word were dropped: a .tsv file was
    read with CSV's quoting rules."""
    path = tmp_path / "x.tsv"
    path.write_text('sentence\tlabel\n"Great movie, said nobody\t1\nfine film\t1\n'
                    'awful "really"\t0\n"Great" is not the word\t0\nok\t1\n')
    data = load_labeled(str(path))
    assert data.texts == ['"Great movie, said nobody', "fine film", 'awful "really"',
                          '"Great" is not the word', "ok"]
    assert data.labels.tolist() == [1, 1, 0, 0, 1]
    assert read_texts(str(path), "sentence") == data.texts
    assert [line for line, _ in csv_rows(str(path), ["sentence"], "\t")] == [2, 3, 4, 5, 6]
    # Written by Python's csv (as pandas' to_csv(sep="\t")): a field holding a quote is
    # quoted whole with its quotes doubled; read back as the text (it kept the quoting).
    with open(tmp_path / "w.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["sentence", "label"], ['She said "great movie"', 1],
                                                 ['"quoted"', 0], ["plain", 1]])
        f.write('"Hello"\t1\n""\t0\n')  # quoted whole by its author, and an empty quotation
    assert (tmp_path / "w.tsv").read_text().splitlines()[1] == '"She said ""great movie"""\t1'
    assert load_labeled(str(tmp_path / "w.tsv")).texts == ['She said "great movie"', '"quoted"', "plain",
                                                           '"Hello"', '""']
    with open(tmp_path / "c.csv", "w", newline="") as f:  # a .csv keeps CSV's quoting
        csv.writer(f).writerows([["sentence", "label"], ['a, "b"\nc', 1]])
    assert load_labeled(str(tmp_path / "c.csv")).texts == ['a, "b"\nc']


def test_a_tsv_text_in_quotes_with_a_lone_quote_inside_is_kept_as_written(tmp_path):
    """A field quoted whole whose inner quotes are not all doubled was not written by a CSV
    writer: it is the text as written (unquoting it dropped its outer quotes and a doubled one)."""
    path = tmp_path / "q.tsv"
    path.write_text('sentence\tlabel\n"a""b" c "d"\t1\n')
    assert load_labeled(str(path)).texts == ['"a""b" c "d"']


def test_a_one_column_tsv_written_by_a_csv_writer_reads_its_empty_text_back_empty(tmp_path):
    """Python's csv (as pandas' to_csv(sep="\t")) writes a row of one empty field as "": read
    as a text of two quotes, a corpus gained it as a document and classify scored it."""
    with open(tmp_path / "t.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["text"], ["fine"], [""], ['"quoted"']])
    assert (tmp_path / "t.tsv").read_text().splitlines()[2] == '""'
    rows = [row["text"] for _, row in csv_rows(str(tmp_path / "t.tsv"), ["text"], "\t")]
    assert rows == ["fine", "", '"quoted"']
    with pytest.raises(DataError, match=r"t.tsv:3"):  # an empty text to classify, as in a .csv
        read_texts(str(tmp_path / "t.tsv"), "text")


def test_a_column_named_twice_is_refused_by_every_reader(tmp_path):
    """csv.DictReader keeps the last of two equal names: the labels (or texts) of the other
    column were read, silently."""
    path = tmp_path / "a.csv"
    path.write_text("label,text,label\n1,good,0\n0,bad,1\n")
    message = ("a.csv: the header names the column 'label' 2 times (columns: ['label', 'text', "
               "'label'])")
    for read in (lambda: load_labeled(str(path), text_column="text", label_column="label"),
                 lambda: list(csv_rows(str(path), ["label"]))):
        with pytest.raises(DataError) as e:
            read()
        assert message in str(e.value)
    path.write_text("text,text\ngood film,bad film\n")
    for read in (lambda: read_texts(str(path), "text"),
                 lambda: list(iter_pieces([str(path)], text_column="text"))):
        with pytest.raises(DataError, match="names the column 'text' 2 times"):
            read()
    # A repeated column nothing reads is no one's concern.
    path.write_text("text,note,note\nfine,a,b\n")
    assert read_texts(str(path), "text") == ["fine"]


@pytest.mark.parametrize("suffix, body", [
    (".csv.gz", "label,text\n" + "".join(f"{i % 2},text number {i * 7919 % 10007}\n"
                                        for i in range(4000))),
    (".jsonl.gz", "".join(f'{{"text": "text number {i * 7919 % 10007}", "label": {i % 2}}}\n'
                          for i in range(4000)))])
def test_a_damaged_compressed_file_is_one_line_for_labeled_texts_and_texts_to_classify(
        tmp_path, suffix, body):
    """Transfer, fine-tuning and classify ended in a traceback (EOFError, BadGzipFile) where
    prepare said which file it could not read."""
    import gzip
    data = gzip.compress(body.encode())
    cut, fake = tmp_path / f"cut{suffix}", tmp_path / f"fake{suffix}"
    cut.write_bytes(data[:len(data) // 2])
    fake.write_text(body[:200])  # not compressed at all
    for path, why in ((cut, "Compressed file ended"), (fake, "Not a gzipped file")):
        for read in (lambda: load_labeled(str(path), text_column="text", label_column="label"),
                     lambda: read_texts(str(path), "text")):
            with pytest.raises(DataError, match=f"{path.name}: cannot read it as a .gz file "
                                                f"\\({why}"):
                read()


def test_a_byte_order_mark_starts_a_jsonl_file_as_it_starts_a_csv_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "fine", "label": 1}\n{"text": "bad", "label": 0}\n')
    data = load_labeled(str(path), text_column="text", label_column="label")
    assert data.texts == ["fine", "bad"] and data.labels.tolist() == [1, 0]
    assert read_texts(str(path), "text") == ["fine", "bad"]
    path.write_bytes(b'{"text": "caf\xe9", "label": 1}\n')  # latin-1: named as the CSV reader does
    with pytest.raises(DataError, match=r"a.jsonl:1: not valid UTF-8 \(byte 0xe9 at byte 13"):
        load_labeled(str(path), text_column="text", label_column="label")


def test_tsv_text_quoted_past_its_line_is_said(tmp_path):
    """pandas' to_csv(sep="\\t") quotes a text holding a newline; read one row a line, its
    first line is a short row: the hint named a missing tab, not the newline."""
    f = tmp_path / "t.tsv"
    f.write_text('sentence\tlabel\n"line1\nline2"\t1\nbad\t0\n')
    with pytest.raises(DataError, match=r"t.tsv:2: 1 fields, and the header has 2 \(a quoted text "
                                        r"going on past this line\?"):
        list(csv_rows(str(f), ["sentence", "label"], "\t"))
    short = tmp_path / "s.tsv"
    short.write_text('sentence\tlabel\n"quoted"\n')
    with pytest.raises(DataError, match="an empty one as a tab with nothing after it"):
        list(csv_rows(str(short), ["sentence", "label"], "\t"))
