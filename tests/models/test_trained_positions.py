"""A transformer's learned positions past train.seq_len: training never reaches them (a
position counts from the window's start or the last reset), so a run says so, featurizing and
generation say when they read them, and scoring reads windows of the trained length."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmscale.api import LM
from lmscale.config import default_config
from lmscale.generation import generate
from lmscale.models.registry import trained_length, trained_length_note
from lmscale.training.loop import train
from lmscale.training.restore import load_trained
from lmscale.transfer.featurize import featurize
from tests.conftest import write_corpus
from tests.transfer.conftest import random_transformer_lm


def _config(**train):
    c = default_config()
    c.model.kind, c.model.max_len = "transformer", 64
    c.train.seq_len = 16
    for key, value in train.items():
        c.train[key] = value
    return c


def test_the_trained_length_of_each_kind_and_setting():
    assert trained_length(_config()) == 16
    assert trained_length(_config(variable_bptt=True, bptt_max=40)) == 40
    # the longest drawn length: bptt_max (seq_len + 15 = 31) rounded down to a bucket of 5
    assert trained_length(_config(variable_bptt=True)) == 30  # was 31: position 30 untrained
    assert trained_length(_config(variable_bptt=True, bptt_max=44, bptt_bucket=4)) == 44
    assert trained_length_note(_config(variable_bptt=True, bptt_max=47)).startswith(
        "note: model.max_len=64 is longer than the 45 tokens")
    assert trained_length(_config(seq_len=64)) is None  # every position trained
    sinusoidal = _config()
    sinusoidal.model.positions = "sinusoidal"  # computed at every length, trained at 16
    assert trained_length(sinusoidal) == 16  # was None: score read untrained windows, unsaid
    recurrent = _config()
    recurrent.model.kind = "mlstm"
    assert trained_length(recurrent) is None and trained_length_note(recurrent) is None
    assert trained_length_note(_config()) == (
        "note: model.max_len=64 is longer than the 16 tokens this run trains on "
        "(train.seq_len=16): its positions 16..63 are never trained, and featurizing "
        "or generating past 16 tokens reads them (scoring reads windows of 16); set "
        "model.max_len=16, or train.seq_len=64")


def test_training_leaves_the_positions_past_seq_len_as_drawn_and_says_so(tmp_path, capsys):
    """The claim the notes rest on, on a real run (with and without document resets)."""
    config = default_config()
    config.data.train, config.data.split = write_corpus(tmp_path / "text", lines=200), "8,1,1"
    m = config.model
    m.kind, m.layers, m.d_model, m.heads, m.d_ff, m.max_len = "transformer", 1, 16, 2, 32, 24
    config.train.seq_len, config.train.batch_size, config.train.steps = 8, 4, 6
    config.train.eval_every, config.train.progress_bar = 0, False
    config.checkpoint.every = 3
    config.lock()
    train(config, str(tmp_path / "run"))
    assert "its positions 8..23 are never trained" in capsys.readouterr().err
    tables = [np.asarray(jax.device_get(load_trained(str(tmp_path / "run"), step).params[
        "position_embedding"][...])) for step in (3, 6)]
    assert not np.allclose(tables[0][:8], tables[1][:8])  # trained
    np.testing.assert_array_equal(tables[0][8:], tables[1][8:])  # never reached


def _lm_trained_at(seq_len: int):
    lm = random_transformer_lm(max_len=64)
    lm.config.train.seq_len = seq_len
    return lm


def test_featurize_and_generate_say_when_they_read_untrained_positions(capsys):
    lm = _lm_trained_at(16)
    featurize(lm, ["short text", "a text that is longer than sixteen bytes"])
    err = capsys.readouterr().err
    assert ("note: 1 of 2 texts run past the 16 positions this LM was trained at "
            "(train.seq_len=16, model.max_len=64): its positions 16..63 were never trained") in err
    featurize(lm, ["short text", "also short"])
    assert "never trained" not in capsys.readouterr().err
    generate(lm, "abc", 20, temperature=0.0)
    assert ("note: the prompt's 3 tokens and the 20 generated run past the 16 positions"
            in capsys.readouterr().err)
    generate(lm, "abc", 10, temperature=0.0)
    assert "never trained" not in capsys.readouterr().err


def test_scoring_reads_windows_of_the_trained_length():
    """Positions past the trained length changed at will change no score (the features,
    which read a text whole, do change)."""
    lm = _lm_trained_at(16)
    texts = ["a text that is longer than sixteen bytes, read in windows", "short"]
    before = LM(lm).score(texts)
    scrambled = jax.tree.map(lambda x: x, lm.params)
    table = scrambled["position_embedding"][...]
    scrambled["position_embedding"][...] = table.at[16:].set(
        jax.random.normal(jax.random.key(1), table[16:].shape) * 5)
    other = type(lm)(**{**lm.__dict__, "params": scrambled, "decode_cache": {}})
    np.testing.assert_allclose(LM(other).score(texts), before, rtol=1e-6)
    assert not np.allclose(featurize(other, texts[:1]), featurize(lm, texts[:1]))
    with pytest.raises(AssertionError):  # at max_len windows, the scrambled rows are read
        lm.config.train.seq_len = 64
        other.config.train.seq_len = 64
        np.testing.assert_allclose(LM(other).score(texts), LM(lm).score(texts), rtol=1e-6)
