"""The notebook API on a real (tiny) trained run: score, featurize, generate."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx

import lmscale
from lmscale.data.errors import DataError
from lmscale.generation import generate
from lmscale.transfer.featurize import featurize


def reference_bpc(lm, text):
    """Each text alone: nats of bytes 2..n given the ones before, per byte, in bits."""
    model = nnx.merge(lm.trained.graphdef, lm.trained.params)
    ids = lm.trained.tokenizer.encode(text).astype(np.int32)
    logits, _ = model(ids[None, :-1], None)
    logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    return -logp[np.arange(len(ids) - 1), ids[1:]].sum() / (len(ids) - 1) / math.log(2)


def test_load_lm_score_featurize_generate(sst_run):
    lm = lmscale.load_lm(sst_run)
    texts = ["a fine, moving film.", "zq", "the plot is thin and the acting is worse"]
    bpc = lm.score(texts)
    for text, got in zip(texts, bpc):
        np.testing.assert_allclose(got, reference_bpc(lm, text), rtol=1e-5)
    # Packed several to a row in 2 rows, one text over three 128-token chunks: each still
    # scored as if alone.
    more = texts + ["the cat sat on the mat. " * 13, "ok", "not bad at all", "x" * 129]
    for text, got in zip(more, lm.score(more, batch_size=2)):
        np.testing.assert_allclose(got, reference_bpc(lm, text), rtol=1e-5)
    assert bpc[0] < bpc[1] or bpc[0] < 8  # English-like text scores better than noise
    one = lm.score(["a", "ab"])  # one byte: nothing to score (it was 0.0 bits, "perfect")
    assert np.isnan(one[0]) and np.isfinite(one[1])
    feats = lm.featurize(texts)
    np.testing.assert_array_equal(feats, featurize(lm.trained, texts))
    assert feats.shape == (3, lm.hidden)
    [sample] = lm.generate("The ", 20, temperature=0.0)
    assert sample.startswith("The ") and len(sample.encode()) >= 24
    assert lm.decode_cache  # the README's name for the decoder's weights, kept for the next call
    lm.decode_cache.clear()
    assert not lm.trained.decode_cache and lm.generate("The ", 20, temperature=0.0) == [sample]


def test_load_lm_in_bfloat16_scores_featurizes_and_generates_close_to_float32(sst_run):
    full, half = lmscale.load_lm(sst_run), lmscale.load_lm(sst_run, compute="bfloat16")
    assert (half.trained.compute, full.trained.compute) == ("bfloat16", "float32")
    texts = ["a fine, moving film.", "the plot is thin and the acting is worse"]
    np.testing.assert_allclose(half.score(texts), full.score(texts), rtol=2e-2)
    a, b = full.featurize(texts), half.featurize(texts)
    assert 0 < np.linalg.norm(a - b) / np.linalg.norm(a) < 3e-2
    [sample] = half.generate("The ", 20, temperature=0.0)
    assert sample.startswith("The ") and len(sample.encode()) >= 24


def test_score_reads_texts_packed_in_few_rows_as_if_alone(sst_run):
    """9 texts in 2 rows, one of 300 bytes across 128-byte chunks: each scored as alone."""
    lm = lmscale.load_lm(sst_run)
    texts = ["a fine, moving film.", "zq", "ok", "the plot is thin and the acting is worse",
             "an utterly charming, funny and moving tale " * 7, "x y", "bad.", "good!", "meh"]
    bpc = lm.score(texts, batch_size=2)
    for text, got in zip(texts, bpc):
        np.testing.assert_allclose(got, reference_bpc(lm, text), rtol=1e-5)


def test_transformer_scores_texts_in_batches_as_one_by_one():
    """Windows of max_len tokens, packed several to a row in rows of a few widths, 2 rows a
    call: each text's score is the one it gets alone, and the direct formula's (a long text:
    window by window, each window read from its first token without the ones before)."""
    from lmscale.api import LM
    from tests.transfer.conftest import random_transformer_lm
    lm = LM(random_transformer_lm())  # max_len 64
    texts = ["a fine, moving film.", "zq", "the plot is thin " * 9, "ok then", "x" * 70, "bad.",
             "y" * 65, "and so on"]
    together = lm.score(texts, batch_size=2)
    alone = [lm.score([t], batch_size=1)[0] for t in texts]
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    model = nnx.merge(lm.trained.graphdef, lm.trained.params)
    for text, got in zip(texts, together):
        ids = lm.trained.tokenizer.encode(text).astype(np.int32)
        nats = 0.0
        for start in range(0, len(ids) - 1, 64):
            window = ids[start:start + 65]
            logp = np.asarray(jax.nn.log_softmax(model(window[None, :-1], None)[0][0], axis=-1))
            nats -= logp[np.arange(len(window) - 1), window[1:]].sum()
        np.testing.assert_allclose(got, nats / (len(ids) - 1) / math.log(2), rtol=1e-5)


_TOOL_PROGRAMS = r"""
import json, os, sys, tempfile
from lmscale.api import LM
from lmscale.generation import generate
from lmscale.training.restore import evaluate_data
from lmscale.transfer.featurize import featurize, unit_trace
from tests.conftest import lowered_programs
from tests.transfer.conftest import random_lm

lm = random_lm(hidden=19)
texts = ["a short text", "and another, a little longer"]
corpus = os.path.join(tempfile.mkdtemp(), "eval.txt")
with open(corpus, "w") as f:
    f.write("the cat sat on the mat. " * 40)
calls = {"generate": lambda: generate(lm, "The", 5, samples=3, seed=7),
         "featurize": lambda: featurize(lm, texts),
         "unit_trace": lambda: unit_trace(lm, texts[1], 3),
         "score": lambda: LM(lm).score(texts),
         "evaluate": lambda: evaluate_data(lm, corpus, batch_size=3, seq_len=11)}
out = {}
for name, call in calls.items():
    with lowered_programs() as built:
        call()
    out[name] = built
print(json.dumps(out))
"""


def test_each_call_compiles_only_its_own_programs():
    """In a fresh process, generating, featurizing, tracing a unit, scoring and evaluating
    each lower only their jitted programs: the zero carry is filled on the host, the sampling
    key is made inside the program, and token arrays go in as NumPy (an eager ``jnp.zeros``,
    ``PRNGKey`` or ``jnp.asarray`` is a small program of its own; each was one before)."""
    from tests.conftest import script_result
    out = script_result(_TOOL_PROGRAMS)
    assert out == {"generate": ["jit(prepare_decode)", "jit(run)"], "featurize": ["jit(read_packed_chunk)"],
                   "unit_trace": ["jit(unit_values)"], "score": ["jit(_chunk_nats)"],
                   "evaluate": ["jit(eval_step)"]}, out


def test_texts_step_and_top_k_are_checked(sst_run):
    """A lone string was read as one text per character, a generator featurized to nothing,
    an empty text was "text 0" whatever its place, a step "4" was "no checkpoint of step 4;
    its steps are [4]", and top_k past the vocabulary was a JAX traceback."""
    lm = lmscale.load_lm(sst_run)
    for call in (lm.score, lm.featurize):
        with pytest.raises(DataError, match=r"got one str \('a fine film'\); pass \[text\]"):
            call("a fine film")
    texts = ["a fine film", "a dull mess", "ok"]
    np.testing.assert_array_equal(lm.featurize(t for t in texts), lm.featurize(texts))
    np.testing.assert_array_equal(lm.score(t for t in texts), lm.score(texts))
    with pytest.raises(DataError, match="^text 1 is empty"):
        lm.score(["ok text", ""])
    with pytest.raises(DataError, match="text 1 is a int, not a str"):
        lm.featurize(["ok", 3])
    step = lm.trained.step
    assert lmscale.load_lm(sst_run, step=str(step)).trained.step == step
    with pytest.raises(ValueError, match="step must be a checkpoint's step number"):
        lmscale.load_lm(sst_run, step="latest")
    with pytest.raises(DataError, match="top_k 1000 is more than the model's 257 tokens"):
        lm.generate("x", 4, top_k=1000)


def test_generation_reads_the_prompt_with_the_models_preprocessing(capfd):
    """An imported OpenAI model reads "\\n " + text: generation fed the bare prompt (featurize
    and score framed it). A small model's greedy continuation hardly shows the two bytes, so
    the framing is seen by what it adds: the same continuation as the framed prompt typed by
    hand, and two more tokens against a length-limited model's max_len."""
    from tests.transfer.conftest import random_lm, random_transformer_lm
    trained = random_lm()
    framed = dataclasses.replace(trained, derived={**trained.derived, "preprocess": "openai"})
    prompt = "This movie is"
    with_framing = generate(framed, prompt, 40, temperature=0)[0]
    by_hand = generate(trained, "\n " + prompt, 40, temperature=0)[0]
    assert with_framing == prompt + by_hand[len("\n " + prompt):]
    # A prompt ending in a space keeps it (the framing's closing space is the same byte).
    spaced = generate(framed, prompt + " ", 40, temperature=0)[0]
    assert spaced == prompt + " " + generate(trained, "\n " + prompt + " ", 40,
                                             temperature=0)[0][len("\n " + prompt + " "):]
    # A length-limited model counts the framing's tokens against max_len (64).
    transformer = random_transformer_lm()
    framed = dataclasses.replace(transformer, derived={**transformer.derived, "preprocess": "openai"})
    generate(transformer, prompt, 64 - len(prompt))
    assert "left out" not in capfd.readouterr().err
    generate(framed, prompt, 64 - len(prompt))  # 15 tokens with the framing: 2 left out
    assert "the prompt's first 2 of 15 tokens are left out" in capfd.readouterr().err


def test_a_workdir_under_the_home_folder_can_be_named_with_a_tilde(sst_run, monkeypatch):
    """lmscale.load_lm("~/runs/x") in a notebook: "not a training run" (Python keeps the ~)."""
    home, name = os.path.split(sst_run)
    monkeypatch.setenv("HOME", home)
    assert lmscale.load_lm(f"~/{name}").score(["a film"]) == lmscale.load_lm(sst_run).score(["a film"])
