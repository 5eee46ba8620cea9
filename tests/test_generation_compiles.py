"""Generation and scoring compile once per model and kind of request: a sweep over the held
neuron's value, the temperature, top-k/top-p values, seeds and prompt lengths (within a
bucket) reuses one program, with the texts a step-by-step loop gives; a second LM object of
the same model reuses ``score``'s program. A word model's prompt ending in a space gets no
second space."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.generation import filter_logits, generate
from tests.conftest import lowered_programs
from tests.transfer.conftest import random_lm, random_transformer_lm


def test_a_sweep_of_settings_compiles_nothing_new():
    """The notebook's last cell sweeps the neuron's value (and the temperature): each value
    was a new XLA compile (~1.7 s for the notebook's LM). After one call of each kind
    (neuron held; top-k and top-p on), none of the values below lowers a program."""
    lm = random_lm(hidden=16)
    held = dict(temperature=0.5, neuron=3, neuron_value=0.0)
    generate(lm, "The movie is", 10, **held)
    generate(lm, "The movie is", 10, temperature=1.0, top_k=5, top_p=0.9)
    texts = {}
    with lowered_programs() as built:
        for value in (-3.0, -1.5, 1.5, 3.0):
            texts[value] = generate(lm, "The movie is", 10, **{**held, "neuron_value": value})
        for neuron in (0, 7, 15):
            generate(lm, "The movie is", 10, **{**held, "neuron": neuron})
        for temperature in (0.3, 1.2):
            generate(lm, "The movie is", 10, **{**held, "temperature": temperature})
        for prompt in ("The movie", "The film was", "The film was bad"):  # 9-16 tokens: one bucket
            generate(lm, prompt, 10, **held, seed=4)
        for top_k, top_p in ((3, 0.5), (9, 0.95), (1, 0.99)):
            generate(lm, "The movie is", 10, temperature=1.0, top_k=top_k, top_p=top_p, seed=2)
    assert built == [], built
    assert len(set(map(tuple, texts.values()))) > 1  # the value is used, not baked in


def _step_by_step(lm, prompt: str, length: int, *, temperature: float, top_k: int, top_p: float,
                  seed: int, samples: int, neuron=None, value: float = 0.0) -> list[str]:
    """Generation written out token by token: the decoder's step (unbucketed: the cache as
    long as prompt + length), the filters with the settings as Python numbers, sample j
    drawn with key j of split(PRNGKey(seed), length)."""
    model = lm.model()
    step = jax.jit(lambda p, t, s: nnx.merge(lm.graphdef, p).decode_step(t, s))
    fix = ((lambda s: s) if neuron is None
           else (lambda s: model.fix_unit(s, neuron, value, model.feature_states[0])))
    pick = jax.jit(lambda logits, key: (
        lambda logp: jnp.argmax(logp, -1) if temperature == 0
        else jax.random.categorical(key, logp, axis=-1))(
            filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                          banned=(lm.tokenizer.pad_id,))).astype(jnp.int32))
    ids = lm.tokenizer.encode(prompt).astype(np.int32)
    state = fix(model.init_decode(samples, len(ids) + length))
    for t in ids:
        logits, state = step(lm.params, jnp.full((samples,), t, jnp.int32), state)
        state = fix(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), length)
    out = []
    for j in range(length):
        token = pick(logits, keys[j])
        out.append(np.asarray(token))
        if j < length - 1:
            logits, state = step(lm.params, token, state)
            state = fix(state)
    return [prompt + lm.tokenizer.decode(row) for row in np.stack(out, axis=1)]


@pytest.mark.parametrize("kind", ["mlstm", "transformer"])
def test_bucketed_runtime_settings_sample_what_a_step_by_step_loop_does(kind):
    """The prompt padded to its bucket (the padding never fed; a transformer's cache longer)
    and the settings as runtime values give the tokens of the plain loop: greedy, and seeded
    sampling with top-k and top-p (and a held neuron), prompts of 5 and 11 bytes."""
    lm = random_transformer_lm() if kind == "transformer" else random_lm(layers=2, hidden=16)
    neuron = {} if kind == "transformer" else {"neuron": 5, "value": -2.5}
    for prompt, settings in (
            ("A cat", dict(temperature=0.0, top_k=0, top_p=1.0, seed=0, samples=1)),
            ("The film is", dict(temperature=0.8, top_k=12, top_p=0.9, seed=7, samples=3))):
        want = _step_by_step(lm, prompt, 9, **settings, **neuron)
        options = {**settings, **({"neuron": neuron["neuron"], "neuron_value": neuron["value"]}
                                  if neuron else {})}
        assert generate(lm, prompt, 9, **options) == want, (prompt, settings)


def test_a_second_lm_object_of_the_same_model_scores_without_compiling():
    """LM.score's program was jitted per LM object: a notebook's load_lm cell run again
    recompiled it (1.8 s for the notebook's LM). It is cached per model graph, as featurize's."""
    from lmscale.api import LM
    texts = ["a fine film", "a dull, lifeless mess"]
    first = LM(random_lm(hidden=16)).score(texts)
    again = LM(random_lm(hidden=16))
    with lowered_programs() as built:
        second = again.score(texts)
    assert built == [], built
    np.testing.assert_array_equal(first, second)


def test_a_word_models_prompt_ending_in_a_space_gets_no_second_space():
    """A word tokenizer drops the prompt's trailing space and puts its own separator before
    the next word: "the film " + " is good" was "the film  is good". The prompt's whitespace
    now stands for the separator; a line end or two spaces of the prompt's own are kept."""
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good"], unk_bytes=3)
    lm = random_lm()
    graphdef, params = model_params(lm.config.model, words.vocab_size, seed=0)
    lm = dataclasses.replace(lm, tokenizer=words, graphdef=graphdef, params=params,
                             decode_cache={})
    (plain,) = generate(lm, "the film", 4, temperature=0.0)
    assert plain.startswith("the film ")
    rest = plain[len("the film "):]
    assert generate(lm, "the film ", 4, temperature=0.0) == [plain]
    assert generate(lm, "the film  ", 4, temperature=0.0) == ["the film  " + rest]
    assert generate(lm, "the film\n", 4, temperature=0.0)[0].startswith("the film\n")
    assert "  " not in generate(lm, "the film ", 4, temperature=1.0, seed=3, samples=3)[0][:12]
