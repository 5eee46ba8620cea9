"""generate's refusals before it compiles or samples: a neuron in a state the model cannot
hold it in (a QRNN's hidden state), a prompt that is not valid UTF-8, a seed outside the
key's 32 bits, a length whose buffers would not fit in memory; and what a held unit is."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lmscale.generation as generation
from lmscale.data.errors import DataError
from lmscale.generation import generate
from tests.transfer.conftest import random_lm


def test_a_qrnns_neuron_is_refused_in_its_hidden_state_and_held_in_its_cell_state():
    """The QRNN featurizes cell and hidden states but carries only c: holding a unit of h was
    a ValueError from inside the traced sampler."""
    lm = random_lm("qrnn", hidden=16)
    with pytest.raises(DataError, match=r"^neuron_state must be one of \['cell'\] for a qrnn "
                                        r"model \(the states a neuron can be held in\), got 'hidden'$"):
        generate(lm, "ab", 4, neuron=1, neuron_state="hidden")
    cold = generate(lm, "ab", 6, temperature=0.0, neuron=1, neuron_value=-9.0)
    assert cold != generate(lm, "ab", 6, temperature=0.0, neuron=1, neuron_value=9.0,
                            neuron_state="cell")


@pytest.mark.parametrize("settings, message", [
    ({"temperature": -1.0}, r"temperature must be >= 0 \(0: greedy\), got -1.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\] \(1: no filter\), got 1.5"),
    ({"top_k": -2}, r"top_k must be >= 0 \(0: no filter\), got -2"),
    # ignored: ordinary samples, as if the unit had no effect
    ({"neuron_value": 3.0}, r"neuron_value=3.0 holds no unit: give neuron=<the unit's index> too")])
def test_each_bad_sampling_setting_is_named_with_its_value(settings, message):
    """One message named all three ranges and no value."""
    with pytest.raises(DataError, match=f"^{message}$"):
        generate(random_lm(hidden=16), "ab", 4, **settings)


@pytest.mark.parametrize("prompt, message", [
    ("ab\udcffc", "character 2: byte 0xff, which the terminal's encoding could not decode"),
    ("\ud800x", "character 0: a lone surrogate U+D800")])
def test_a_prompt_that_is_not_utf8_is_refused_in_one_line(prompt, message):
    with pytest.raises(DataError, match=rf"^the prompt is not valid UTF-8 at {re.escape(message)}$"):
        generate(random_lm(hidden=16), prompt, 5)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_a_seed_outside_32_bits_is_refused(seed):
    """seed % 2**32 was used: 2**32 sampled what 0 did, -1 what 2**32 - 1 did."""
    with pytest.raises(DataError, match=rf"^seed must be in \[0, 2\*\*32\) \(the key's 32 "
                                        rf"bits\), got {seed}$"):
        generate(random_lm(hidden=16), "a", 5, seed=seed)
    generate(random_lm(hidden=16), "a", 2, seed=2**32 - 1)  # the largest is taken


def test_a_length_whose_buffers_do_not_fit_is_refused_before_compiling():
    """[length] keys and [length, samples] tokens are allocated up front: a huge length was
    killed by the OOM killer without a word (past int32: an OverflowError)."""
    lm = random_lm(hidden=16)
    misses = generation._sampler.cache_info().misses
    with pytest.raises(DataError, match=r"^length 1000000000 with 1000 sample\(s\) needs about "
                                        r"\d+\.\d GiB for its token buffers, more than the "
                                        r"\d+\.\d GiB available: generate fewer tokens$"):
        generate(lm, "x", 10**9, samples=1000)  # ~19 TiB
    with pytest.raises(DataError, match=r"^length must be at most 2\*\*30 \(the sampler counts "
                                        r"its steps in int32\), got 1000000000000$"):
        generate(lm, "x", 10**12)
    assert generation._sampler.cache_info().misses == misses  # nothing compiled
    generation._check_memory(10**6, 1)  # ~32 MB: a long sample still runs


def test_a_held_unit_is_set_in_the_initial_state_too():
    """The held unit is set before the first token, then after every token (the docstring
    said: after every character); for the hidden state that changes the first logits."""
    assert "initial (zero) state before the first token" in " ".join(generation.__doc__.split())
    lm = random_lm(hidden=16)
    value = 4.0
    [text] = generate(lm, "Go", 8, temperature=0.0, neuron=3, neuron_value=value,
                      neuron_state="hidden")
    model = nnx.merge(lm.graphdef, lm.params)
    step = jax.jit(lambda p, t, c: nnx.merge(lm.graphdef, p)(t, c))
    fix = lambda carry: ((carry[0][0].at[:, 3].set(value), carry[0][1]),)
    carry, out = fix(model.initial_carry(1)), []
    for t in lm.tokenizer.encode("Go"):
        logits, carry = step(lm.params, jnp.asarray([[int(t)]], jnp.int32), carry)
        carry = fix(carry)
    for _ in range(8):
        scores = np.array(logits[0, -1])
        scores[lm.tokenizer.pad_id] = -np.inf
        out.append(int(np.argmax(scores)))
        logits, carry = step(lm.params, jnp.asarray([[out[-1]]], jnp.int32), carry)
        carry = fix(carry)
    assert text == "Go" + lm.tokenizer.decode(out)
