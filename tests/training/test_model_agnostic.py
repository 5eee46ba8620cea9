"""One trainer for every model kind: the transformer and SentencePiece runs through the same
loop, checkpoints, evaluation, restore, generation and scoring as the mLSTM."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

import lmscale
from lmscale.config import ConfigError, validate
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.evaluate_trained import evaluate_data
from lmscale.training.restore import load_trained
from tests.conftest import TINY_TRANSFORMER, tiny_config

COMPARED = ("step", "split", "loss", "bpc", "lr", "grad_norm")


def strip(records):
    return [{k: r[k] for k in COMPARED if k in r} for r in records]


def transformer_config(corpus, **overrides):
    return tiny_config(corpus, **{**TINY_TRANSFORMER, **overrides})


@pytest.mark.parametrize("compute", ["float32", "bfloat16", "float16"])
def test_transformer_learns_in_every_precision(tmp_path, corpus, compute):
    workdir = str(tmp_path / compute)
    train(transformer_config(corpus, **{"train.steps": 30, "optim.lr": 1e-2,
                                        "precision.compute": compute,
                                        "precision.loss_scale_init": 2.0**15}), workdir)
    val = [r for r in read_metrics(workdir) if r["split"] == "val"]
    assert val[-1]["bpc"] < 0.6 * val[0]["bpc"]
    assert all(math.isfinite(r["loss"]) for r in read_metrics(workdir))
    # No carry: the checkpoint signature does not pin the batch, and bpc = bits per token on bytes.
    assert all(abs(r["bpc"] - r["bits_per_token"]) < 1e-9 for r in val)


def test_transformer_resume_is_bitwise(tmp_path, corpus):
    overrides = {"optim.decay_steps": 8, "train.steps": 8, "model.dropout": 0.1,
                 "model.attn_dropout": 0.1, "model.ff_dropout": 0.1}
    full = str(tmp_path / "full")
    train(transformer_config(corpus, **overrides), full)
    split_run = str(tmp_path / "split")
    train(transformer_config(corpus, **{**overrides, "train.steps": 4}), split_run)
    train(transformer_config(corpus, **overrides), split_run)
    assert strip(read_metrics(full)) == strip(read_metrics(split_run))


def test_transformer_checkpoint_refused_by_an_mlstm_config(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(transformer_config(corpus, **{"train.steps": 2}), workdir)
    with pytest.raises(CheckpointMismatchError, match="model.kind is 'transformer' there and 'mlstm' here"):
        train(tiny_config(corpus, **{"train.steps": 4}), workdir)


@pytest.mark.parametrize("overrides,match", [
    ({"train.seq_len": 64}, r"train.seq_len=64 .*model.max_len=32"),
    ({"model.heads": 3}, r"model.d_model=32 is not divisible by model.heads=3"),
])
def test_bad_transformer_configs_name_the_keys(corpus, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate(transformer_config(corpus, **overrides))


@pytest.mark.parametrize("kind", ["mlstm", "transformer"])
def test_eval_tool_equals_training_validation(tmp_path, corpus, kind):
    """Same checkpoint, same split: lmscale.eval reports exactly the BPC validation logged,
    with document resets on (the setting the eval tool used to ignore)."""
    extra = TINY_TRANSFORMER if kind == "transformer" else {}
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{**extra, "train.steps": 6, "data.reset_on_documents": True,
                                 "train.eval_batch_size": 3}), workdir)
    logged = [r for r in read_metrics(workdir) if r["split"] == "val"][-1]
    result = evaluate_data(load_trained(workdir), os.path.join(workdir, "data"), split="val")
    assert result["bpc"] == pytest.approx(logged["bpc"], abs=1e-6)
    assert result["chars"] == logged["chars"] == logged["tokens"]
    # Bytes: bits per character are bits per token, nats / ln 2, as before subwords existed.
    assert logged["bpc"] == pytest.approx(logged["loss"] / math.log(2), rel=1e-12)
    assert logged["bpc"] == pytest.approx(logged["bits_per_token"], rel=1e-12)


def test_transformer_generation_uses_the_cache_and_matches_recompute(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(transformer_config(corpus, **{"train.steps": 10, "optim.lr": 1e-2}), workdir)
    lm = lmscale.load_lm(workdir)
    (text,) = lm.generate("the cat", length=12, temperature=0)
    # Greedy by full recompute: argmax of the last real position's logits, one token at a
    # time. The model is causal, so the sequence is padded to a fixed length (every eager op
    # is compiled once, not once per length).
    import jax.numpy as jnp
    model = lm.trained.model()
    ids = list(lm.trained.tokenizer.encode("the cat"))
    for _ in range(12):
        padded = np.zeros((1, 32), np.int32)
        padded[0, :len(ids)] = ids
        logits, _ = model(jnp.asarray(padded), ())
        last = logits[0, len(ids) - 1].at[0].set(-jnp.inf)  # padding is never sampled
        ids.append(int(jnp.argmax(last)))
    assert text == lm.trained.tokenizer.decode(np.asarray(ids))
    with pytest.raises(Exception, match="max_len 32"):
        lm.generate("the cat", length=40)
    with pytest.raises(Exception, match="no fix_unit\\): a neuron needs a model that carries its state"):
        lm.generate("the cat", length=4, neuron=0)
    feats = lm.featurize(["the cat sat", "a dog " * 20])  # the second is cut to its last 32 tokens
    assert feats.shape == (2, 32) and np.isfinite(feats).all()
    scores = lm.score(["the cat sat on a mat.", "zq" * 40])
    assert scores[0] < scores[1]


def test_sentencepiece_run_is_self_contained_and_counts_bits_per_byte(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(transformer_config(corpus, **{"train.steps": 6, "data.tokenizer": "sentencepiece",
                                        "data.vocab_size": 300}), workdir)
    assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
    records = read_metrics(workdir)
    for r in records:  # a piece covers more than one byte: fewer bits per byte than per token
        assert r["bpc"] < r["bits_per_token"]
        if r["split"] == "val":
            assert r["bpc"] * r["chars"] == pytest.approx(r["bits_per_token"] * r["tokens"], rel=1e-9)
    # Its prepared data trained on as a dataset, data.tokenizer left at its (byte) default:
    # config.json said "sentiment_discovery" and nothing of the pieces the run read.
    other = str(tmp_path / "on_the_dataset")
    train(transformer_config(os.path.join(workdir, "data"), **{"train.steps": 2}), other)
    derived = json.load(open(os.path.join(other, "config.json")))["derived"]
    assert derived["tokenizer"]["kind"] == "sentencepiece" and derived["vocab_size"] == 301
    shutil.rmtree(os.path.join(workdir, "data"))  # the workdir alone is enough
    lm = lmscale.load_lm(workdir)
    assert lm.trained.tokenizer.vocab_size == 301
    (text,) = lm.generate("the cat", length=5, temperature=0)
    assert text.startswith("the cat") and len(text) > len("the cat")
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["data"]["tokenizer"] == "sentencepiece"
