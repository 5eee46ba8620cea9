"""A run prepared from raw text (WORKDIR/data) resumes when data.train names that text under
another path: spelled relative instead of absolute, or a copy on another machine. A resume
reads WORKDIR/data, never the text; it was refused because the strings differed."""

from __future__ import annotations

import os
import shutil

import pytest

from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.loop import train
from tests.conftest import tiny_config, write_corpus


@pytest.fixture
def trained(tmp_path):
    """A 4-step run on two text files given by absolute paths (checkpoints at 2 and 4)."""
    write_corpus(tmp_path / "cluster", files=2)
    files = ",".join(str(tmp_path / "cluster" / f"doc{i}.txt") for i in range(2))
    workdir = str(tmp_path / "run")
    train(tiny_config(files, **{"train.steps": 4, "checkpoint.every": 2}), workdir)
    return tmp_path, workdir


def test_the_same_text_spelled_relative_resumes(trained, monkeypatch, capsys):
    tmp_path, workdir = trained
    monkeypatch.chdir(tmp_path / "cluster")
    capsys.readouterr()
    result = train(tiny_config("doc0.txt,doc1.txt", **{"train.steps": 6, "checkpoint.every": 2}),
                   workdir)
    assert result["train"]["step"] == 6
    err = capsys.readouterr().err
    assert "note: data.train='doc0.txt,doc1.txt' names the text" in err
    assert f"the resumed run goes on with {os.path.join(workdir, 'data')}" in err


def test_a_copy_of_the_text_elsewhere_resumes_and_another_text_is_refused(trained):
    tmp_path, workdir = trained
    shutil.copytree(tmp_path / "cluster", tmp_path / "laptop")  # new times, same names and sizes
    shutil.rmtree(tmp_path / "cluster")  # the old path is gone
    copy = ",".join(str(tmp_path / "laptop" / f"doc{i}.txt") for i in range(2))
    result = train(tiny_config(copy, **{"train.steps": 6, "checkpoint.every": 2}), workdir)
    assert result["train"]["step"] == 6
    with open(tmp_path / "laptop" / "doc1.txt", "a") as f:
        f.write("one more line of other text.\n")  # changed where it now lies: said, as in place
    result = train(tiny_config(copy, **{"train.steps": 8, "checkpoint.every": 2}), workdir)
    assert result["train"]["step"] == 8
    only_one = str(tmp_path / "laptop" / "doc0.txt")  # another text
    with pytest.raises(CheckpointMismatchError, match="differ from it in names or sizes.*give "
                                                      r"the old value \(it need not exist"):
        train(tiny_config(only_one, **{"train.steps": 10, "checkpoint.every": 2}), workdir)
