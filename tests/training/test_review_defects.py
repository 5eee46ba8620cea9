"""Defects found in review (issue 9), each with a test that failed before its fix: the loss
scale after a precision change, provenance of a converted model trained further, the logged
learning rate of float16 runs, exact evaluation sums, and LM.score on framed text."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmscale
from lmscale.config import load_config
from lmscale.data.dataset import TokenDataset
from lmscale.data.prepare import prepare_dataset
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained.preprocess import openai_preprocess
from lmscale.pretrained.workdir import write_workdir
from lmscale.training import mesh as mesh_lib
from lmscale.training.evaluate import evaluate_split
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.optimizer import make_optimizer
from tests.conftest import tiny_config
from tests.pretrained.helpers import random_weights, run_lmscale


def train_records(workdir: str) -> list[dict]:
    return [r for r in read_metrics(workdir) if r["split"] == "train"]


def test_float32_run_resumed_in_float16_starts_the_initial_loss_scale(tmp_path, corpus):
    """#2: the restored scale was the float32 run's inert 1."""
    workdir = str(tmp_path / "run")
    base = {"train.steps": 2, "train.log_every": 1, "train.eval_every": 0, "train.eval_steps": 1,
            "optim.decay_steps": 4, "precision.loss_scale_init": 1024.0}
    train(tiny_config(corpus, **base), workdir)
    assert train_records(workdir)[-1]["loss_scale"] == 1.0  # float32: inert
    train(tiny_config(corpus, **{**base, "train.steps": 4, "precision.compute": "float16"}), workdir)
    resumed = train_records(workdir)[2:]
    assert [r["step"] for r in resumed] == [3, 4]
    assert [(r["loss_scale"], r["skipped"]) for r in resumed] == [(1024.0, 0), (1024.0, 0)]


def test_logged_lr_is_the_applied_one_when_float16_skips_steps(tmp_path, corpus):
    """#5: a skipped step does not advance the schedule; the log used to assume it did."""
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 6, "train.log_every": 1, "train.eval_every": 0,
                                 "train.eval_steps": 1, "precision.compute": "float16",
                                 "optim.warmup_steps": 3, "optim.decay_steps": 8}), workdir)
    config, derived = load_config(os.path.join(workdir, "config.json"))
    _, schedule = make_optimizer(config.optim, derived["decay_steps"], lr=derived["lr"])
    records = train_records(workdir)
    assert records[-1]["skipped"] >= 1  # the initial scale 2^32 overflows float16
    skipped_before = 0
    for r in records:
        applied = r["step"] - 1 - skipped_before  # updates applied before this step
        assert r["lr"] == pytest.approx(float(schedule(applied)), rel=1e-6), r
        skipped_before = r["skipped"]


def test_converted_openai_model_keeps_its_provenance_when_trained_further(tmp_path, corpus):
    """#3: training rewrote config.json without derived.preprocess / pretrained."""
    weights = random_weights(tokenizer=ByteTokenizer.openai(), embed=8, hidden=16)
    weights.preprocess, weights.source = "openai", {"format": "openai", "path": "model/"}
    workdir = write_workdir(weights, str(tmp_path / "openai"), batch_size=4)
    config, _ = load_config(os.path.join(workdir, "config.json"))
    overrides = {f"model.{k}": v for k, v in config.model.items()}
    overrides.update({"data.tokenizer": "openai", "train.steps": 2, "train.eval_steps": 1})
    train(tiny_config(corpus, **overrides), workdir)
    _, derived = load_config(os.path.join(workdir, "config.json"))
    assert derived["steps"] == 2
    assert derived["preprocess"] == "openai"
    assert derived["pretrained"] == {"format": "openai", "path": "model/"}
    assert lmscale.load_lm(workdir).trained.derived["preprocess"] == "openai"


def test_evaluation_sums_are_exact_past_float32_integers(tmp_path, corpus):
    """#6: per-batch sums are accumulated in float64 on the host; float32 running sums lose
    exactness past 2^24 (the paper's validation split is ~40 M characters)."""
    path = prepare_dataset([corpus], str(tmp_path / "data"), split=(1, 0, 0), progress=False,
                           tokenizer=ByteTokenizer.sentiment_discovery())
    split = TokenDataset.open(path).split("train")
    per_batch = float(2**23 + 1)  # exact in float32; three of them are not

    @jax.jit
    def eval_step(params, carry, batch):  # an eval step over a huge batch: its exact sums
        return carry, jnp.array([per_batch, per_batch, per_batch], jnp.float32)

    result = evaluate_split(eval_step, None, lambda rows: (), split, mesh_lib.make_mesh(),
                            batch_size=2, seq_len=8, max_steps=3)
    assert result["tokens"] == result["chars"] == 3 * (2**23 + 1)
    running = np.float32(0)  # what a float32 running sum gives instead
    for _ in range(3):
        running += np.float32(per_batch)
    assert int(running) != 3 * (2**23 + 1)


def test_score_of_an_openai_model_counts_the_text_only(tmp_path):
    """#7: the framing "\\n " + text + " " that the OpenAI preprocessing adds is context, not
    scored text: the bits are those of the text's own bytes."""
    weights = random_weights(tokenizer=ByteTokenizer.openai(), embed=8, hidden=16, seed=3)
    weights.preprocess = "openai"
    workdir = write_workdir(weights, str(tmp_path / "openai"), batch_size=4)
    text = "a fine film"
    framed = openai_preprocess(text)  # b"\n a fine film "
    (logits, _), = run_lmscale(weights.to_model(), [framed])
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    ids = np.frombuffer(framed, np.uint8).astype(np.int32)
    first, last = 2, 2 + len(text.encode())  # positions of the text's bytes in the framed ids
    nats = -sum(float(log_probs[t - 1, ids[t]]) for t in range(first, last))
    expected = nats / math.log(2) / len(text.encode())
    score = lmscale.load_lm(workdir).score([text])
    np.testing.assert_allclose(score, [expected], rtol=1e-5)
