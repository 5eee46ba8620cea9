"""Sampling: the logit filters against NumPy, and greedy generation with a fixed neuron
against a step-by-step loop written out by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.generation import filter_logits, generate
from tests.conftest import REPO
from tests.transfer.conftest import random_lm, random_transformer_lm


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
    [text] = generate(lm, "The film", 12, temperature=0.0, neuron=neuron,
                      neuron_value=value if neuron is not None else 0.0)
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
    # the key is PRNGKey(seed)'s 32 bits: other seeds are refused (they repeat these)
    with pytest.raises(DataError, match=r"^seed must be in \[0, 2\*\*32\)"):
        generate(lm, "A", 30, temperature=1.0, seed=2**32 + 1, samples=2)
    assert free != generate(lm, "A", 30, temperature=1.0, seed=2, samples=2)
    assert free[0] != free[1]
    held = generate(lm, "A", 30, temperature=0.0, neuron=2, neuron_value=-20.0)
    assert held != generate(lm, "A", 30, temperature=0.0, neuron=2, neuron_value=20.0)


def test_bad_generation_requests():
    lm = random_lm(hidden=16)
    with pytest.raises(DataError, match="prompt is empty"):
        generate(lm, "", 5)
    with pytest.raises(DataError, match="outside the last layer's 16 units"):
        generate(lm, "a", 5, neuron=16)


@pytest.mark.parametrize("prompt, length, options, message", [
    (b"abc", 5, {}, r"the prompt must be a str, got bytes \(b'abc'\); decode it first"),
    (["a"], 5, {}, r"the prompt must be a str, got list \(\['a'\]\); give one prompt per call"),
    (None, 5, {}, r"the prompt must be a str, got None$"),
    ("a", 2.5, {}, r"length must be an integer, got 2.5"),
    ("a", 0, {}, r"length must be >= 1, got 0"),
    ("a", True, {}, r"length must be an integer, got True"),
    ("a", 3, {"samples": "2"}, r"samples must be an integer, got '2'"),
    ("a", 3, {"temperature": "hot"}, r"temperature must be a number, got 'hot'"),
])
def test_badly_typed_generation_requests_are_one_line(prompt, length, options, message):
    lm = random_lm(hidden=16)
    with pytest.raises(DataError, match=message):
        generate(lm, prompt, length, **options)
    from lmscale.api import LM
    with pytest.raises(DataError, match=message):
        LM(lm).generate(prompt, length, **options)


@pytest.mark.parametrize("length", [1, 3])
def test_a_prompt_without_tokens_is_refused(length):
    """A word model reads no token from whitespace: sampling from no context (all-zero
    logits; an IndexError for length 1) is refused; "\\n" starts from a line's start."""
    import dataclasses
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good"], unk_bytes=3)
    lm = random_lm()
    graphdef, params = model_params(lm.config.model, words.vocab_size, seed=0)
    lm = dataclasses.replace(lm, tokenizer=words, graphdef=graphdef, params=params, decode_cache={})
    with pytest.raises(DataError, match=r"the prompt ' ' has no tokens for this tokenizer"):
        generate(lm, " ", length)
    (text,) = generate(lm, "\n", length, temperature=0.0)
    assert text.startswith("\n")


def test_a_word_models_prompt_names_its_unknown_words(capfd):
    """Words outside the vocabulary are read as <unk>; generate says which (once each)."""
    import dataclasses
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good"], unk_bytes=3)
    assert words.unknown_words("the zzyzx film ☃ zzyzx <unk>\nis") == ["zzyzx", "☃"]
    lm = random_lm()
    graphdef, params = model_params(lm.config.model, words.vocab_size, seed=0)
    lm = dataclasses.replace(lm, tokenizer=words, graphdef=graphdef, params=params,
                             decode_cache={})
    (text,) = generate(lm, "the zzyzx film ☃", length=3, temperature=0.0)
    assert text.startswith("the zzyzx film ☃")
    assert "note: the prompt's words ['zzyzx', '☃'] are not in the model's vocabulary" in \
        capfd.readouterr().err
    generate(lm, "the film", length=2, temperature=0.0)
    assert "note:" not in capfd.readouterr().err


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
    second call with the same shapes reuses them: no XLA compile, and no trace but the zero
    carry's shapes (``training.state.zero_carry``: shapes only, no program)."""
    import jax.monitoring
    from lmscale.transfer.featurize import featurize, unit_trace
    events: list[str] = []

    def record(name: str, _duration: float, fun_name: str = "", **_: object) -> None:
        events.append("carry shapes" if fun_name == "carry_shapes" else name)
    jax.monitoring.register_event_duration_secs_listener(record)
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


@pytest.mark.parametrize("kind", ["mlstm", "transformer"])
def test_decoder_weights_are_kept_until_the_params_change(kind):
    """The decoder's prepared weights are made once and reused by the next call, and made
    again when a parameter is replaced: the text is then the new weights' (as a fresh
    TrainedLM of them gives), not the old ones'. Greedy: these small random models' sampled
    texts are the same under the same seed."""
    make = ((lambda seed: random_transformer_lm(seed=seed)) if kind == "transformer"
            else (lambda seed: random_lm(hidden=16, seed=seed)))
    lm, other = make(0), make(1)
    first = generate(lm, "The", 12, temperature=0.0)
    kept = lm.decode_cache["prepared"]
    assert generate(lm, "The", 12, temperature=0.0) == first
    assert lm.decode_cache["prepared"] is kept
    want = generate(other, "The", 12, temperature=0.0)
    assert want != first
    lm.params = other.params
    assert generate(lm, "The", 12, temperature=0.0) == want
    assert lm.decode_cache["prepared"] is not kept


def _generation_hlo(lm, length: int, prompt: jax.Array) -> str:
    """The compiled text of generation's program (temperature 1, no filters, no neuron)."""
    from lmscale import generation
    fn = generation._sampler(lm.graphdef, length, False, False, False, False, None,
                             lm.tokenizer.pad_id)
    settings, seed = generation.Settings.of(prompt.shape[1]), np.uint32(0)
    carry = fn.empty_carry(lm.params, prompt, seed, settings)
    return fn.lower(lm.params, generation.prepared_weights(lm), prompt, seed, settings, carry,
                    np.int32(0), np.int32(length)).compile().as_text()


@pytest.mark.parametrize("kind", ["mlstm", "lstm", "transformer", "transformer_tied",
                                  "transformer_bf16"])
def test_generation_loops_do_no_per_token_weight_work(kind):
    """The compiled prompt-then-sample program computes nothing weight-shaped inside its
    loops: the weights are normalized, cast, transposed (recurrent) and sliced from the
    layer stack (transformer) once, before them. Per token, that work made a 4096-unit
    mLSTM generate 6x slower and the 12-layer transformer 3-4x (benchmarks/README.md). A
    bfloat16 key/value cache is written in place, never converted whole."""
    from tests.models.helpers import loop_computations
    if kind.startswith("transformer"):
        lm = random_transformer_lm(tie=kind.endswith("tied"),
                                   dtype=jnp.bfloat16 if kind.endswith("bf16") else jnp.float32)
    else:
        lm = random_lm(kind, layers=2, hidden=24)
    shapes = set()  # of the matrices, either way round (the transformer's: one layer's too)
    for path, leaf in jax.tree_util.tree_leaves_with_path(lm.params):
        stacked = "blocks" in jax.tree_util.keystr(path)
        for shape in ((leaf.shape[1:], leaf.shape) if stacked else (leaf.shape,)):
            if len(shape) >= 2 and not (stacked and len(shape) == 2 == leaf.ndim):
                shapes |= {shape, shape[::-1]}
    model = lm.model()
    # A layer's bfloat16 key/value cache updated as float32 (converted whole).
    caches = model.init_decode(1, 2 + 6) if kind.endswith("bf16") else {"k": [], "v": []}
    cache_f32 = {a.shape for a in (*caches["k"], *caches["v"])}
    prompt = jnp.asarray(lm.tokenizer.encode("ab").astype(np.int32)[None])  # one sample
    hlo = _generation_hlo(lm, 6, prompt)
    loops = loop_computations(hlo)
    assert len(loops) >= 2
    pattern = re.compile(r"^\s*(?:ROOT )?%\S+ = (\w+)\[([\d,]+)\]\S* (\S+?)\(")
    weight_work = []
    for comp in loops:
        for line in comp.split("\n"):
            found = pattern.match(line)
            if not found or found.group(3) in ("parameter", "get-tuple-element", "bitcast"):
                continue
            dims = tuple(int(d) for d in found.group(2).split(","))
            if dims in shapes or (dims in cache_f32 and found.group(1) == "f32"
                                  and found.group(3) == "dynamic-update-slice"):
                weight_work.append(line.strip()[:160])
    assert not weight_work, weight_work


@pytest.mark.parametrize("kind", ["mlstm", "transformer"])
def test_generation_compiles_the_decoder_once(kind):
    """Prompt and samples run in one loop, so the compiled program holds the decoder's
    matrix products once (two loops held them twice, and compiled them twice)."""
    lm = random_transformer_lm() if kind == "transformer" else random_lm(kind, layers=2, hidden=24)
    model = lm.model()
    prompt = jnp.asarray(lm.tokenizer.encode("ab").astype(np.int32)[None])
    program = _generation_hlo(lm, 6, prompt)
    step = jax.jit(lambda p, t, s: nnx.merge(lm.graphdef, p).decode_step(t, s))
    alone = step.lower(lm.params, prompt[:, 0], model.init_decode(1, 8)).compile().as_text()
    dots = lambda hlo: len(re.findall(r"= \S+ dot\(", hlo))
    assert dots(alone) > 0 and dots(program) == dots(alone)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transformer_decoding_copies_no_cache(dtype):
    """The key/value cache is laid out as the decoder's attention products read it, and a
    bfloat16 cache is kept as its uint16 bits (``lmscale.models.kv_cache``), so no instruction in the generation loop
    outputs a whole cache except its in-place writes: no transposed copy (12 layers x 8
    samples: ~17 of 50 ms a token in float32) and no copy before a bfloat16 write (~11 ms).
    (A bfloat16 cache is still read as float32 by the attention's dots: that conversion is
    the one cache-sized array allowed, in float32 only.)"""
    from tests.models.helpers import loop_computations
    lm = random_transformer_lm(dtype=dtype)  # 2 heads of 8
    samples, prompt_len, length = 3, 2, 9
    hlo = _generation_hlo(lm, length, jnp.zeros((samples, prompt_len), jnp.int32))
    cache = sorted((samples, 2, 8, prompt_len + length))
    pattern = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]+)\]\S* (\S+?)\(")
    copies = []
    for comp in loop_computations(hlo):
        for line in comp.split("\n"):
            found = pattern.match(line)
            if (not found or found.group(4) in ("parameter", "get-tuple-element", "bitcast",
                                                "bitcast-convert")
                    or "dynamic-update-slice" in found.group(1) + found.group(4)
                    or (dtype == jnp.bfloat16 and found.group(2) == "f32")):
                continue
            if sorted(int(d) for d in found.group(3).split(",")) == cache:
                copies.append(line.strip()[:160])
    assert not copies, copies


def test_a_transformer_prompt_past_max_len_keeps_its_last_tokens(capfd):
    """A prompt longer than max_len - length + 1 was refused ("ask for at most 0"): the model
    reads its last max_len - length + 1 tokens (the last sample is never read), said in a
    note; greedy, the continuation is that of those tokens given alone. A length past
    max_len is refused in one line (a 1-token prompt and max_len samples read max_len
    positions: it was refused, and a full-length prompt lost a token it could read)."""
    lm = random_transformer_lm(max_len=16)
    long_prompt = "abcdefghijklmnopqrstuvwxyz"
    read = {}  # what it read: samples.json recorded only the prompt given
    got = generate(lm, long_prompt, 6, temperature=0.0, read=read)[0]
    assert read == {"prompt_tokens": 11, "prompt_read": long_prompt[-11:]}
    assert "tokens, 5 of them generated" in capfd.readouterr().err
    assert got.startswith(long_prompt)
    tail = generate(lm, long_prompt[-11:], 6, temperature=0.0)[0]  # 11 = 16 - 6 + 1 bytes
    assert got[len(long_prompt):] == tail[11:]
    read = {}
    generate(lm, long_prompt[:16], 1, temperature=0.0, read=read)  # max_len tokens, one sample
    assert read["prompt_tokens"] == 16 and "left out" not in capfd.readouterr().err
    assert generate(lm, "a", 16, temperature=0.0)[0].startswith("a")  # reads positions 0..15
    with pytest.raises(DataError, match="generates at most 16 tokens"):
        generate(lm, "a", 17)


def test_sentencepiece_generation_never_samples_unknown_or_control_pieces(tmp_path):
    """Byte fallback: no prepared text holds <unk> (SentencePiece's " ⁇ ") or a control piece;
    a model that gives them mass (here all of it, by its output bias) samples others."""
    from lmscale.data.spm import SentencePieceTraining
    import dataclasses
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    from lmscale.data.spm import train_sentencepiece
    tok = train_sentencepiece([text.read_text()], SentencePieceTraining(vocab_size=300),
                              source=str(text))
    banned = tok.unsampled_ids()
    sp = tok.processor
    assert 0 in banned and sp.unk_id() + 1 in banned
    lm = random_lm(hidden=16)
    from lmscale.models import model_params
    graphdef, params = model_params(lm.config.model, tok.vocab_size, seed=0)
    bias = params["decoder"]["bias"]
    bias[...] = bias[...].at[jnp.asarray(banned)].set(50.0)  # all the mass, unless banned
    lm = dataclasses.replace(lm, tokenizer=tok, graphdef=graphdef, params=params, decode_cache={})
    out = generate(lm, "the", 20, temperature=1.0, seed=1, samples=4)
    assert all("\u2047" not in s and len(s) > len("the") for s in out), out


@pytest.mark.parametrize("kind", ["mlstm", "transformer"])
def test_windows_of_any_size_sample_the_same_tokens(kind, monkeypatch):
    """The loop runs in windows of steps (runtime bounds, one program): windows of 1 or 3
    steps give the tokens one window for the whole loop gives (sampled, seeded, a held
    neuron for the mLSTM; the transformer's cache carried from window to window)."""
    from lmscale import generation
    lm = random_transformer_lm() if kind == "transformer" else random_lm(hidden=16)
    held = {} if kind == "transformer" else dict(neuron=3, neuron_value=1.5)
    request = dict(temperature=1.0, top_p=0.9, samples=2, seed=7, **held)
    whole = generate(lm, "The film", 20, **request)  # 27 steps < FIRST_WINDOW: one window
    monkeypatch.setattr(generation, "WINDOW_SECONDS", 0.0)  # later windows: 1 step
    for first in (1, 3):
        monkeypatch.setattr(generation, "FIRST_WINDOW", first)
        assert generate(lm, "The film", 20, **request) == whole


def test_ctrl_c_stops_a_long_generation_within_a_window(capfd):
    """A KeyboardInterrupt (Ctrl-C, a notebook's interrupt button) is taken between windows
    of about a quarter second: one call for the whole loop kept it waiting for every token
    (here ~30 s). With ``progress`` a bar counts the tokens on stderr."""
    import _thread
    import threading
    import time
    lm = random_lm(hidden=64)
    fired = []

    def interrupt() -> None:
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(3.0, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(lm, "a", 300_000, progress=True)
        waited = time.perf_counter() - fired[0]
    finally:
        timer.cancel()
    assert waited < 2.0, waited
    assert re.search(r"\d+/300000 \[", capfd.readouterr().err)


def test_byte_generation_never_samples_the_padding_id():
    """A byte model that gives the padding id all the mass (its output bias) samples bytes:
    padding decodes to nothing, so a sample of it was the prompt alone."""
    lm = random_lm(hidden=16)
    assert lm.tokenizer.pad_id == 0 and not hasattr(lm.tokenizer, "unsampled_ids")
    bias = lm.params["decoder"]["bias"]
    bias[...] = bias[...].at[0].set(50.0)
    out = generate(lm, "the", 8, temperature=1.0, seed=1, samples=2)
    assert all(len(s.encode()) > len("the") for s in out), out


def test_a_seeds_samples_do_not_depend_on_jaxs_default_key_implementation():
    """JAX_DEFAULT_PRNG_IMPL=rbg (set for speed elsewhere) gave a seed other samples."""
    code = ("from lmscale.generation import generate\n"
            "from tests.transfer.conftest import random_lm\n"
            "print(ascii(generate(random_lm(hidden=16), 'the', 12, temperature=1.0, seed=3, "
            "samples=2)))\n")
    out = []
    for impl in ("threefry2x32", "rbg"):
        p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "JAX_DEFAULT_PRNG_IMPL": impl,
                                "PYTHONPATH": str(REPO)})
        assert p.returncode == 0, p.stderr[-2000:]
        out.append(p.stdout)
    assert out[0] == out[1]
