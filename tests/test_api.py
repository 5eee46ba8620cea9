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
from lmscale.training.evaluate_trained import evaluate_data
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
    with pytest.raises(DataError, match=r"text 1 is a float, not a str \(NaN: a missing value"):
        lm.featurize(["ok", float("nan")])  # an empty cell of a pandas column
    with pytest.raises(DataError, match=r"text 0 is a bytes, not a str \(decode it"):
        lm.featurize([b"ok"])
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
    generate(framed, prompt, 64 - len(prompt))  # 15 tokens with the framing: 1 left out
    assert "the prompt's first 1 of 15 tokens are left out" in capfd.readouterr().err  # (the
    # last sample is never read: prompt + length - 1 positions)


def test_a_workdir_under_the_home_folder_can_be_named_with_a_tilde(sst_run, monkeypatch):
    """lmscale.load_lm("~/runs/x") in a notebook: "not a training run" (Python keeps the ~)."""
    home, name = os.path.split(sst_run)
    monkeypatch.setenv("HOME", home)
    assert lmscale.load_lm(f"~/{name}").score(["a film"]) == lmscale.load_lm(sst_run).score(["a film"])


def _word_lm(kind: str, cutoffs: str, tied: bool, words: int = 300, seed: int = 0):
    """A random word LM (3 specials + ``words`` words "w0".. in id order, so "w{i}" is id
    3 + i) with adaptive ``cutoffs`` ("" : a full softmax), weights scaled up (not uniform)."""
    import dataclasses
    from lmscale.api import LM
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    from tests.transfer.conftest import random_lm
    tok = WordTokenizer([*SPECIALS, *(f"w{i}" for i in range(words))], unk_bytes=3)
    lm = random_lm()
    config = lm.config.copy_and_resolve_references()
    m = config.model
    m.kind, m.layers, m.hidden, m.embed = kind, 2, 12, 8
    m.tie_embeddings, m.adaptive_cutoffs, m.weight_norm = tied, cutoffs, False
    if kind == "qrnn":
        m.qrnn_window = 2
    graphdef, params = model_params(m, tok.vocab_size, seed=seed)
    params = jax.tree.map(lambda x: x * 3.0, params)
    return LM(dataclasses.replace(lm, config=config, tokenizer=tok, graphdef=graphdef,
                                  params=params, decode_cache={}))


def _word_texts(rng, words: int = 300):
    """Texts of random words; the first holds a word of every cluster of (20, 60, 150)."""
    every = "w0 w5 w30 w100 w17 w250 w299 w60 w149 w150 w1"
    return [every] + [" ".join(f"w{i}" for i in rng.integers(0, words, n))
                      + ("\n" if n % 2 else "") for n in (1, 2, 5, 9, 30, 140, 3, 17)]


def reference_word_bpc(lm, text):
    """The old formula, text alone in NumPy (float64): the model's full log-probabilities
    (``adaptive_log_probs`` with cut-offs, else logits), log-softmaxed; the nats of the
    scored targets over their bytes."""
    from lmscale.transfer.featurize import encode_texts
    model = nnx.merge(lm.trained.graphdef, lm.trained.params)
    [ids] = encode_texts(lm.trained, [text])
    ids, scored = lm._targets(ids)
    if len(ids) < 2 or not scored.any():
        return np.nan
    out = np.asarray(model(ids[None, :-1].astype(np.int32), None)[0][0], np.float64)
    logp = out - out.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nats = -logp[np.arange(len(ids) - 1), ids[1:]][scored[1:]].sum()
    table = lm.trained.tokenizer.byte_lengths()
    total = table[ids[scored]].sum()
    return nats / math.log(2) / total if total > 0 else np.nan


@pytest.mark.parametrize("kind,tied", [("qrnn", True), ("qrnn", False), ("lstm", True),
                                       ("lstm", False)])
def test_a_word_model_with_cutoffs_scores_without_the_full_softmax(kind, tied, monkeypatch):
    """An adaptive softmax is scored by ``adaptive_token_nll`` (the head's logits and each
    target's own cluster's: no [rows, 128, V] logits, which at V = 267,735 took 12 GB and
    113 s for 40 texts): the same scores as the full log-probabilities, a text with targets
    in every cluster, texts packed in 3 rows across chunks; nothing V-wide in the program."""
    from lmscale.api import _chunk_nats_fn
    lm = _word_lm(kind, "20,60,150", tied)
    texts = _word_texts(np.random.default_rng(1))
    [ids] = [lm.trained.tokenizer.encode(texts[0])]
    cluster = np.searchsorted((20, 60, 150), ids, side="right")
    assert set(cluster[1:].tolist()) == {0, 1, 2, 3}  # targets in the head and every tail
    got = lm.score(texts, batch_size=3)
    want = [reference_word_bpc(lm, t) for t in texts]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isnan(got[1]) and np.isfinite(np.delete(got, 1)).all()  # text 1: one word
    # The compiled program's arrays: none as wide as the vocabulary for all tokens.
    rows, t, vocab = 3, 128, lm.trained.tokenizer.vocab_size
    z = np.zeros((rows, t), np.int32)
    carry = lm.trained.model().initial_carry(rows)
    text = _chunk_nats_fn(lm.trained.graphdef).lower(
        lm.trained.params, carry, z, z.astype(bool), z, z.astype(np.float32)).as_text()
    assert not any(f"{s}x{vocab}x" in text for s in (f"{rows}x{t}", f"{t}x{rows}", rows * t))


def test_a_wide_full_softmax_is_scored_in_shorter_chunks(monkeypatch):
    """A full softmax (no cut-offs) reads t inputs a call with rows x t x V float32 logits
    under ``SCORE_LOGITS_BYTES``: at a budget that allows 12 columns of 3 rows, t = 12 and
    the texts (one of 141 words, across 12 chunks) score as with 128 and as the old formula;
    the floor is 8 columns; bytes keep 128."""
    from lmscale import api
    lm = _word_lm("qrnn", "", False)
    texts = _word_texts(np.random.default_rng(2))
    vocab = lm.trained.tokenizer.vocab_size
    wide = lm.score(texts, batch_size=3)
    assert lm._chunk_steps(3) == 128
    np.testing.assert_allclose(wide, [reference_word_bpc(lm, t) for t in texts], rtol=1e-5)
    monkeypatch.setattr(api, "SCORE_LOGITS_BYTES", 3 * 12 * vocab * 4 + 5)
    assert lm._chunk_steps(3) == 12 and lm._chunk_steps(1) == 36
    np.testing.assert_allclose(lm.score(texts, batch_size=3), wide, rtol=1e-5)
    monkeypatch.setattr(api, "SCORE_LOGITS_BYTES", 1)
    assert lm._chunk_steps(3) == 8
    np.testing.assert_allclose(lm.score(texts, batch_size=3), wide, rtol=1e-5)
    monkeypatch.undo()
    assert api.LM(lm.trained)._chunk_steps(32) == 128
    byte_lm = api.LM(__import__("tests.transfer.conftest", fromlist=["random_lm"]).random_lm())
    assert byte_lm._chunk_steps(32) == 128
    # The default budget at WikiText-103's vocabulary in 32 rows: 15 columns (was 128).
    monkeypatch.setattr(api.LM, "_logits_width", lambda self: 267_735)
    assert lm._chunk_steps(32) == 15


def test_a_transformer_with_a_wide_softmax_reads_fewer_rows_a_call(monkeypatch):
    """The length-limited path forms [rows, max_len + 1, V] logits a call: bounded by
    ``SCORE_LOGITS_BYTES`` (here to one row a call); the scores are those of 8 rows a call."""
    from lmscale import api
    from tests.transfer.conftest import random_transformer_lm
    lm = api.LM(random_transformer_lm())
    texts = ["a fine, moving film.", "zq", "the plot is thin " * 9, "ok then", "x" * 70]
    want = lm.score(texts, batch_size=8)
    calls = []
    real = api.LM._add_nats
    monkeypatch.setattr(api.LM, "_add_nats",
                        lambda self, nats, carry, grid, scored: calls.append(grid.tokens.shape)
                        or real(self, nats, carry, grid, scored))
    monkeypatch.setattr(api, "SCORE_LOGITS_BYTES", 1)
    np.testing.assert_allclose(lm.score(texts, batch_size=8), want, rtol=1e-5)
    assert calls and all(shape[0] == 1 for shape in calls)


def test_bad_arguments_are_one_clear_error():
    """batch_size 0/-3/True was read as 1 row and 2.5/None failed deep in the packing; a chunk
    of -1 returned zeros and 0 a ZeroDivisionError; a neuron of 1.5 held unit 1; a lone
    surrogate was a UnicodeEncodeError from the tokenizer; load_lm(None) a posixpath error."""
    from lmscale.api import LM, load_lm
    from lmscale.generation import generate
    from lmscale.transfer.featurize import featurize
    from tests.transfer.conftest import random_lm
    trained = random_lm(hidden=16)
    for bad in (0, -3, True, 2.5, None):
        with pytest.raises(DataError, match=f"batch_size must be a positive integer, got {bad!r}"):
            LM(trained).score(["a text"], batch_size=bad)
        with pytest.raises(DataError, match=f"batch_size must be a positive integer, got {bad!r}"):
            featurize(trained, ["a text"], batch_size=bad)
    for bad in (0, -1):
        with pytest.raises(DataError, match=f"chunk must be a positive integer, got {bad}"):
            featurize(trained, ["a text"], chunk=bad)
    with pytest.raises(DataError, match="neuron must be a unit's index \\(an integer\\), got 1.5"):
        generate(trained, "The", 5, neuron=1.5, neuron_value=1.0)
    with pytest.raises(DataError, match="text 0 is not valid Unicode \\(surrogates not allowed"):
        LM(trained).score(["\udcff"])
    with pytest.raises(TypeError, match="workdir must be a run's folder \\(a str or path\\), got None"):
        load_lm(None)
    assert np.all(np.isfinite(LM(trained).score(["a text", "another"], batch_size=np.int64(2))))


def test_score_docstring_shows_its_newline_escaped():
    """help(lm) printed ``"good`` and a bare line ``"``: a real newline in the docstring."""
    from lmscale.api import LM
    assert '``"good\\n"``' in LM.score.__doc__
