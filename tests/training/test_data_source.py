"""training/data_source: WORKDIR/data is prepared again when its text changes under the same
paths, except under a resumed run, which goes on with the data its steps were counted on."""

from __future__ import annotations

import json
import os

from lmscale.data.dataset import TokenDataset
from lmscale.training.data_source import resolve_dataset
from lmscale.training.loop import train
from tests.conftest import tiny_config, write_corpus


def _tokens(path: str) -> int:
    ds = TokenDataset.open(path)
    return sum(ds.split(name).num_tokens for name in ds.split_names)


def test_changed_text_is_prepared_again_for_a_fresh_run(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", files=2)
    data = tiny_config(corpus).data
    target = resolve_dataset(data, str(tmp_path / "run"), progress=False)
    before = _tokens(target)
    recorded = json.loads((tmp_path / "run" / "data_request.json").read_text())["sources"]
    assert [os.path.basename(p) for p, _, _ in recorded] == ["doc0.txt", "doc1.txt"]
    assert resolve_dataset(data, str(tmp_path / "run"), progress=False) == target
    assert "changed" not in capsys.readouterr().err  # unchanged: reused, nothing said
    added = "a new line of text that was not there before.\n" * 50
    with open(tmp_path / "corpus" / "doc1.txt", "a") as f:
        f.write(added)
    resolve_dataset(data, str(tmp_path / "run"), progress=False)
    err = capsys.readouterr().err
    assert "doc1.txt was modified" in err and "preparing it again" in err, err
    assert _tokens(target) == before + len(added)
    more = "one more file.\n" * 40
    (tmp_path / "corpus" / "doc2.txt").write_text(more)  # a new file in the glob
    resolve_dataset(data, str(tmp_path / "run"), progress=False)
    assert "doc2.txt is new" in capsys.readouterr().err
    assert _tokens(target) == before + len(added) + len(more)


def test_a_resumed_run_keeps_its_prepared_data_and_says_the_text_changed(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", files=2)
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 4, "checkpoint.every": 4}), workdir)
    prepared = _tokens(os.path.join(workdir, "data"))
    with open(tmp_path / "corpus" / "doc0.txt", "a") as f:
        f.write("text added after the run started.\n" * 30)
    capsys.readouterr()
    train(tiny_config(corpus, **{"train.steps": 8, "checkpoint.every": 4}), workdir)
    err = capsys.readouterr().err
    assert "doc0.txt was modified" in err and "this resumed run goes on with the prepared data" in err
    assert _tokens(os.path.join(workdir, "data")) == prepared


def test_gzip_text_in_a_folder_named_with_a_comma(tmp_path, capsys):
    """A folder 'corpus, v2' is one path; its hidden files are skipped (said in a note); its
    .txt.gz is read decompressed, and a change to it is noticed (its size and time)."""
    import gzip
    folder = tmp_path / "corpus, v2"
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "ab12").write_bytes(b"\x00\x01 git object")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    text = "the cat sat on the mat.\n" * 200
    (folder / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
    data = tiny_config(str(folder)).data
    target = resolve_dataset(data, str(tmp_path / "run"), progress=False)
    err = capsys.readouterr().err
    assert "skipped 2 hidden file(s)/folder(s)" in err and ".DS_Store" in err, err
    assert _tokens(target) == len(text)
    recorded = json.loads((tmp_path / "run" / "data_request.json").read_text())["sources"]
    assert [os.path.basename(p) for p, _, _ in recorded] == ["a.txt.gz"]
    more = text + "a dog ran to the big red house.\n" * 50
    (folder / "a.txt.gz").write_bytes(gzip.compress(more.encode()))
    resolve_dataset(data, str(tmp_path / "run"), progress=False)
    assert "a.txt.gz was modified" in capsys.readouterr().err
    assert _tokens(target) == len(more)


def test_preparation_settings_with_a_prepared_dataset_are_noted_and_do_not_block_a_resume(
        tmp_path, capsys):
    """data.split / data.tokenizer given with a prepared dataset are not used (its own are): a
    note names them, and resuming without them is not refused over them."""
    from lmscale.data.prepare import prepare_dataset
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. a dog ran to the big red house.\n" * 300)
    ds = prepare_dataset([str(text)], str(tmp_path / "ds"), split=(8, 1, 1), progress=False)
    workdir = str(tmp_path / "run")
    train(tiny_config(ds, **{"train.steps": 4, "checkpoint.every": 4, "data.split": "1,0,0",
                             "data.tokenizer": "word", "data.vocab_size": 300}), workdir)
    err = capsys.readouterr().err
    assert (f"note: data.train {ds} is a prepared dataset, with its own tokenizer and splits: "
            f"data.tokenizer='word', data.split='1,0,0', data.vocab_size=300 not used") in err, err
    train(tiny_config(ds, **{"train.steps": 6, "checkpoint.every": 4}), workdir)  # split 8,1,1: its own
    assert "not used" not in capsys.readouterr().err
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))


def test_a_missing_corpus_names_its_setting_and_where_such_a_corpus_comes_from(tmp_path,
                                                                              corpus):
    """configs/awd_lstm_word.py on a machine without awd-lstm-lm's files said only "no such
    file or directory: data/penn/train.txt": neither the setting nor where to get it."""
    import pytest

    from lmscale.data.errors import DataError
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    missing = str(tmp_path / "penn" / "train.txt")
    with pytest.raises(DataError) as error:
        train(tiny_config(missing), str(tmp_path / "run"))
    assert str(error.value) == (  # called from Python: the field, not the flag
        f"data.train={missing!r}: no such file or directory: {missing} (the config file's "
        f"docstring says where its corpus comes from; config.data.train=PATHS names another)")
    with pytest.raises(DataError, match=r"^data.val='.*valid.txt': no such file"):
        train(tiny_config(corpus, **{"data.val": str(tmp_path / "valid.txt")}),
              str(tmp_path / "run2"))


def test_a_missing_corpus_whose_path_ends_in_a_parenthesis_names_its_setting(tmp_path):
    """A folder such as "penn (old)" ends as a hint that was already said does: it was left
    without the setting that names it."""
    import ml_collections

    from lmscale.data.errors import DataError
    from lmscale.training.data_source import _missing_corpus
    missing = str(tmp_path / "penn (old)")
    data = ml_collections.ConfigDict({"train": missing, "val": "", "test": ""})
    said = _missing_corpus(DataError(f"no such file or directory: {missing}"), data)
    assert str(said).startswith(f"data.train={missing!r}: no such file or directory: "), said
    hinted = DataError(f"no such file or directory: {missing}/a.txt (did you mean b.txt?)")
    assert _missing_corpus(hinted, data) is hinted  # a hint already said: as it was


def test_settings_of_another_tokenizer_are_noted(tmp_path, capsys):
    """data.vocab_size=500 with the word tokenizer (whose cap is data.word_vocab_size) was
    ignored without a word: 2,891 word ids, and config.json recorded vocab_size 500."""
    corpus = write_corpus(tmp_path / "corpus")
    data = tiny_config(corpus, **{"data.tokenizer": "word", "data.vocab_size": 500}).data
    target = resolve_dataset(data, str(tmp_path / "run"), progress=False)
    assert TokenDataset.open(target).tokenizer.vocab_size != 500
    assert ("note: data.vocab_size=500 not used: settings of another tokenizer than "
            "data.tokenizer='word'") in capsys.readouterr().err
    data = tiny_config(corpus, **{"data.word_vocab_size": 50, "data.sp_model_type": "unigram"}).data
    resolve_dataset(data, str(tmp_path / "bytes"), progress=False)
    assert ("note: data.sp_model_type='unigram', data.word_vocab_size=50 not used"
            in capsys.readouterr().err)
    resolve_dataset(tiny_config(corpus).data, str(tmp_path / "plain"), progress=False)
    assert "not used" not in capsys.readouterr().err
