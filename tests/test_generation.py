"""Sampling: the logit filters against NumPy, and greedy generation with a fixed neuron
against a step-by-step loop written out by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.generation import filter_logits, generate
from tests.transfer.conftest import random_lm


def test_top_k_and_top_p_against_numpy():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    k2 = np.asarray(filter_logits(jnp.asarray(logits), temperature=1.0, top_k=2, top_p=1.0, banned=None))
    np.testing.assert_allclose(np.exp(k2[0]), [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], atol=1e-6)
    # top_p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too; 0.1 and 0.05 go.
    p8 = np.asarray(filter_logits(jnp.asarray(logits), temperature=1.0, top_k=0, top_p=0.8, banned=None))
    np.testing.assert_allclose(np.exp(p8[0]), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    banned = np.asarray(filter_logits(jnp.asarray(logits), temperature=2.0, top_k=0, top_p=1.0, banned=0))
    expected = np.array([0, 0.2, 0.15, 0.1, 0.05]) ** 0.5
    np.testing.assert_allclose(np.exp(banned[0]), expected / expected.sum(), atol=1e-6)


@pytest.mark.parametrize("neuron", [None, 5])
def test_greedy_generation_with_a_fixed_neuron_matches_a_hand_loop(neuron):
    lm = random_lm(layers=2, hidden=16)
    value = 3.0
    [text] = generate(lm, "The film", 12, temperature=0.0, neuron=neuron, neuron_value=value)
    model = nnx.merge(lm.graphdef, lm.params)
    step = jax.jit(lambda p, t, c: nnx.merge(lm.graphdef, p)(t, c))

    def fix(carry):
        if neuron is None:
            return carry
        (h0, c0), (h1, c1) = carry
        return (h0, c0), (h1, c1.at[:, neuron].set(value))

    carry = fix(model.initial_carry(1))
    for t in lm.tokenizer.encode("The film"):
        logits, carry = step(lm.params, jnp.asarray([[int(t)]], jnp.int32), carry)
        carry = fix(carry)
    out = []
    for _ in range(12):
        scores = np.array(logits[0, -1])
        scores[lm.tokenizer.pad_id] = -np.inf
        token = int(np.argmax(scores))
        out.append(token)
        logits, carry = step(lm.params, jnp.asarray([[token]], jnp.int32), carry)
        carry = fix(carry)
    assert text == "The film" + lm.tokenizer.decode(out)


def test_fixed_neuron_changes_the_text_and_sampling_is_seeded():
    lm = random_lm(hidden=16)
    free = generate(lm, "A", 30, temperature=1.0, seed=1, samples=2)
    assert free == generate(lm, "A", 30, temperature=1.0, seed=1, samples=2)
    assert free[0] != free[1]
    held = generate(lm, "A", 30, temperature=0.0, neuron=2, neuron_value=-20.0)
    assert held != generate(lm, "A", 30, temperature=0.0, neuron=2, neuron_value=20.0)


def test_bad_generation_requests():
    lm = random_lm(hidden=16)
    with pytest.raises(DataError, match="prompt is empty"):
        generate(lm, "", 5)
    with pytest.raises(DataError, match="outside the last layer's 16 units"):
        generate(lm, "a", 5, neuron=16)


def test_continuation_keeps_word_spaces():
    from lmscale.data.tokenizer import ByteTokenizer
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.generation import _continuation
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good"], unk_bytes=3)
    prompt = words.encode("the film")
    new = words.encode("is good")
    assert "the film" + _continuation(words, prompt, new) == "the film is good"
    b = ByteTokenizer.sentiment_discovery()
    assert "caf" + _continuation(b, b.encode("caf"), b.encode("é au lait")) == "café au lait"


def test_generating_and_featurizing_again_compiles_nothing():
    """The jitted programs are cached per model and settings (not rebuilt per call), so a
    second call with the same shapes reuses them: no trace, no XLA compile."""
    import jax.monitoring
    from lmscale.transfer.featurize import featurize, unit_trace
    events: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, _duration, **_: events.append(name))
    lm = random_lm(hidden=16)
    texts = ["a short text", "and another, longer one"]
    first = (generate(lm, "The", 12, temperature=0.5, seed=0), featurize(lm, texts),
             unit_trace(lm, texts[0], 3))
    events.clear()
    again = (generate(lm, "The", 12, temperature=0.5, seed=0), featurize(lm, texts),
             unit_trace(lm, texts[0], 3))
    compiles = [e for e in events if e.endswith("backend_compile_duration")]
    assert compiles == [] and not [e for e in events if "trace" in e]
    assert first[0] == again[0]
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
