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
