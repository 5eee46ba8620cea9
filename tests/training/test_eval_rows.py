"""An evaluation's result is a function of its rows, not of its step length: a split too
small for ``rows x (seq_len + 1)`` tokens keeps its rows (shorter steps), as README's
"reads the split as eval_batch_size rows" says; before, it silently dropped to fewer rows,
so the same weights scored differently (other targets counted) under another --seq_len."""

from __future__ import annotations

import pytest

from lmscale.training.loop import train
from tests.conftest import tiny_config


def test_eval_result_does_not_depend_on_seq_len_for_a_small_split(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 2}), workdir)
    from lmscale.training.evaluate_trained import evaluate_data
    from lmscale.training.restore import load_trained
    lm = load_trained(workdir)
    text = tmp_path / "held_out.txt"
    text.write_text("the cat sat on the mat and the dog ran to the big red house.\n" * 4)
    n = len(lm.tokenizer.encode(text.read_text()))
    rows = 3
    base = evaluate_data(lm, str(text), batch_size=rows, seq_len=16, max_steps=0)
    assert base["tokens"] == rows * (n // rows - 1)
    # n // rows - 1 is the longest step that fits each row; longer ones took fewer rows
    for seq_len in (n // rows - 1, n // rows, n // 2 - 1):
        got = evaluate_data(lm, str(text), batch_size=rows, seq_len=seq_len, max_steps=0)
        assert got["tokens"] == base["tokens"], seq_len
        assert got["loss"] == pytest.approx(base["loss"], rel=1e-5)


def test_a_transformer_keeps_full_steps_in_fewer_rows(tmp_path, corpus):
    """Its context is the step: shorter steps would score every target with less context."""
    workdir = str(tmp_path / "tf")
    train(tiny_config(corpus, **{"train.steps": 2, "model.kind": "transformer", "model.layers": 1,
                                 "model.d_model": 16, "model.heads": 2, "model.d_ff": 32,
                                 "model.max_len": 16}), workdir)
    from lmscale.training.evaluate_trained import evaluate_data
    from lmscale.training.restore import load_trained
    lm = load_trained(workdir)
    text = tmp_path / "held_out.txt"
    text.write_text("the cat sat on the mat and the dog ran to the big red house.\n")
    n = len(lm.tokenizer.encode(text.read_text()))
    got = evaluate_data(lm, str(text), batch_size=8, seq_len=16, max_steps=0)
    rows = n // 17  # full 16-token steps: the most rows that still get one each
    assert rows < 8 and got["tokens"] == rows * (n // rows - 1)
    assert got["tokens"] != 8 * (n // 8 - 1)  # not the carried kinds' 8 rows of shorter steps


def test_a_small_validation_split_read_as_many_rows_is_said(tmp_path, corpus, capfd):
    """Rows kept at train.eval_batch_size on a small split leave each row's first token
    unscored: a note gives the share and the way to score more (said once, at the start)."""
    from lmscale.training.loop import train
    workdir = str(tmp_path / "many")
    train(tiny_config(corpus, **{"train.steps": 2, "train.eval_batch_size": 128}), workdir)
    err = capfd.readouterr().err
    assert err.count("note: validation reads ") == 1, err
    assert "as 128 rows (train.eval_batch_size), and a row's first token is not scored" in err
    train(tiny_config(corpus, **{"train.steps": 2, "train.eval_batch_size": 2}),
          str(tmp_path / "few"))
    assert "note: validation reads " not in capfd.readouterr().err
