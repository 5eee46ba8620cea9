"""Featurization against running the LM one character at a time, text by text."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.training.restore import with_compute
from lmscale.transfer.featurize import cached_featurize, featurize, unit_trace
from tests.conftest import lowered_programs
from tests.models.helpers import jaxpr_equations
from tests.transfer.conftest import random_lm, random_transformer_lm

TEXTS = ["a", "short one", "a somewhat longer text, with punctuation!",
         "x" * 37, "héllo wörld — unicode", "mid length text here", "zz"]


@functools.lru_cache(maxsize=None)
def _one_step(graphdef):
    return jax.jit(lambda params, token, carry: nnx.merge(graphdef, params)(token, carry)[1])


def step_by_step(lm, text):
    """Per layer (h, c) after each character: fed one byte at a time, one text alone."""
    model = nnx.merge(lm.graphdef, lm.params)
    carry = model.initial_carry(1)
    step = _one_step(lm.graphdef)
    hs, cs = [], []
    for token in lm.tokenizer.encode(text):
        carry = step(lm.params, jnp.asarray([[int(token)]], jnp.int32), carry)
        hs.append(np.stack([np.asarray(h[0]) for h, _ in carry]))
        cs.append(np.stack([np.asarray(c[0]) for _, c in carry]))
    return np.stack(hs), np.stack(cs)  # [T, L, H]


@pytest.mark.parametrize("layers", [1, 2])
def test_last_state_equals_step_by_step_for_mixed_lengths(layers):
    lm = random_lm(layers=layers)
    # chunk 8 < several lengths: states carried across chunks; batch 4: several batches
    feats = featurize(lm, TEXTS, batch_size=4, chunk=8, all_layers=True)
    hidden_feats = featurize(lm, TEXTS, batch_size=4, chunk=8, state="hidden")
    for i, text in enumerate(TEXTS):
        hs, cs = step_by_step(lm, text)
        np.testing.assert_allclose(feats[i], cs[-1].reshape(-1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(hidden_feats[i], hs[-1, -1], rtol=1e-5, atol=1e-5)
    assert np.abs(feats).max() > 0.05  # not trivially zero


@pytest.mark.parametrize("pooling,reduce", [("mean", np.mean), ("max", np.max), ("min", np.min)])
def test_pooling_over_the_text(pooling, reduce):
    lm = random_lm()
    feats = featurize(lm, TEXTS, pooling=pooling, batch_size=4, chunk=8)
    for i, text in enumerate(TEXTS):
        _, cs = step_by_step(lm, text)
        np.testing.assert_allclose(feats[i], reduce(cs[:, -1], axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlstm", "lstm", "qrnn"])
def test_texts_packed_in_few_rows_read_as_if_alone(kind):
    """2 rows for 19 texts: each row reads many texts in turn, resetting the state at each
    text's first token; short chunks split texts and hold several ends."""
    lm = random_lm(kind=kind, layers=2)  # the QRNN's first layer: window 2, x_{t-1} carried
    texts = TEXTS + [t[:3] for t in TEXTS] + ["q", "rs", "t", "uvw", "x"]
    last = featurize(lm, texts, batch_size=2, chunk=6, all_layers=True)
    mean = featurize(lm, texts, batch_size=2, chunk=6, pooling="mean", state="hidden")
    # Each text in a row of its own from the initial state, padded after its end.
    ids = [lm.tokenizer.encode(t) for t in texts]
    grid = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
        grid[i, :len(x)] = x
    alone = nnx.merge(lm.graphdef, lm.params).features(jnp.asarray(grid), None)
    cs, hs = np.asarray(alone["cell"]), np.asarray(alone["hidden"][-1])
    for i, x in enumerate(ids):
        np.testing.assert_allclose(last[i], cs[:, i, len(x) - 1].reshape(-1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mean[i], hs[i, :len(x)].mean(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling,reduce", [("last", lambda h: h[-1]), ("mean", np.mean),
                                            ("max", np.max), ("min", np.min)])
def test_transformer_reads_texts_packed_in_rows_as_if_alone(pooling, reduce, capfd):
    """A transformer reads several texts in a row, positions and attention restarting at each
    (``resets``): every layer's output at each text's end, or pooled over it, as the text read
    alone; texts over max_len (64) cut to their last 64 tokens."""
    lm = random_transformer_lm()
    rng = np.random.default_rng(0)
    texts = TEXTS + ["".join(chr(97 + c) for c in rng.integers(0, 26, n)) for n in (1, 9, 30, 64, 65, 90)]
    feats = featurize(lm, texts, pooling=pooling, batch_size=2, all_layers=True)
    # the two texts over max_len are said (they were cut silently)
    assert (f"note: 2 of {len(texts)} texts are longer than the model's max_len=64 tokens (the "
            f"longest 90): their last 64 tokens are read") in capfd.readouterr().err
    model = nnx.merge(lm.graphdef, lm.params)
    for i, text in enumerate(texts):
        ids = lm.tokenizer.encode(text)[-64:]
        alone = np.asarray(model.features(jnp.asarray(ids[None], jnp.int32))["hidden"])[:, 0]
        want = np.concatenate([reduce(layer, axis=0) if pooling != "last" else layer[-1]
                               for layer in alone])
        np.testing.assert_allclose(feats[i], want, rtol=1e-5, atol=1e-5)
    assert np.abs(feats).max() > 0.05


def test_transformer_compiles_one_program_per_row_width():
    """Texts of 1-256 tokens are read in rows of 32, 64, 128 and 256 tokens: four programs
    (side by side, each batch padded to its longest text rounded up to 32, it took eight)."""
    import jax.monitoring
    lm = random_transformer_lm(max_len=256)  # its initialization is not counted
    events: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, _duration, **_: events.append(name))
    lengths = np.random.default_rng(2).permutation(np.arange(1, 257))
    feats = featurize(lm, ["ab" * n for n in lengths // 2 + 1], batch_size=8)
    compiles = [e for e in events if e.endswith("backend_compile_duration")]
    assert np.isfinite(feats).all() and 1 <= len(compiles) <= 4, compiles


def test_prepared_weights_are_kept_and_follow_new_params():
    """The chunks read weights prepared once (``lm.decode_cache``); new params are seen."""
    lm, other = random_lm(seed=0), random_lm(seed=1)
    first = featurize(lm, TEXTS, batch_size=4, chunk=8)
    prepared = lm.decode_cache["prepared"]
    np.testing.assert_array_equal(featurize(lm, TEXTS, batch_size=4, chunk=8), first)
    assert lm.decode_cache["prepared"] is prepared
    lm.params = other.params
    np.testing.assert_allclose(featurize(lm, TEXTS, batch_size=4, chunk=8),
                               featurize(other, TEXTS, batch_size=4, chunk=8), rtol=1e-6, atol=1e-6)
    assert lm.decode_cache["prepared"] is not prepared
    assert np.abs(featurize(other, TEXTS) - first).max() > 1e-3


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_reduced_precision_reads_the_same_weights_with_2_byte_matmuls(compute):
    lm = random_lm(layers=2)
    half = with_compute(lm, compute)
    assert half.params is lm.params and (half.compute, lm.compute) == (compute, "float32")
    tokens = jnp.asarray(lm.tokenizer.encode(TEXTS[2])[None], jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(half.graphdef, p).features(tokens, None))(half.params)
    dots = [e for e in jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.dtype(compute) for e in dots for v in e.invars)
    full = featurize(lm, TEXTS, batch_size=4, chunk=8, all_layers=True)
    reduced = featurize(half, TEXTS, batch_size=4, chunk=8, all_layers=True)
    assert reduced.dtype == np.float32
    rel = np.linalg.norm(reduced - full) / np.linalg.norm(full)
    assert 1e-6 < rel < 3e-2, rel  # rounded like its dtype, and no worse
    with pytest.raises(ValueError, match="compute must be one of"):
        with_compute(lm, "int8")


def test_unit_trace_and_cache(tmp_path):
    lm = random_lm(layers=2)
    _, cs = step_by_step(lm, TEXTS[2])
    np.testing.assert_allclose(unit_trace(lm, TEXTS[2], 3), cs[:, -1, 3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(unit_trace(lm, TEXTS[2], 5, layer=0), cs[:, 0, 5], rtol=1e-5, atol=1e-5)
    # Texts of other lengths up to 64 tokens, other units and layers, lower no program at all
    # (indexing the states eagerly lowered two small programs per text length).
    with lowered_programs() as built:
        for i, text in enumerate(TEXTS):
            assert unit_trace(lm, text, i, layer=i % 2 - 1).shape == (len(text.encode()),)
    assert built == []
    with pytest.raises(DataError, match="unit 9999 is out of range"):
        unit_trace(lm, TEXTS[0], 9999)
    with pytest.raises(DataError, match="layer 5 is out of range: the model has 2 layers"):
        unit_trace(lm, TEXTS[0], 3, layer=5)
    a = cached_featurize(lm, TEXTS, str(tmp_path), batch_size=4)
    assert len(list(tmp_path.iterdir())) == 1
    b = cached_featurize(lm, TEXTS, str(tmp_path), batch_size=8)  # batch size is not part of the key
    np.testing.assert_array_equal(a, b)
    cached_featurize(lm, TEXTS, str(tmp_path), pooling="mean")
    assert len(list(tmp_path.iterdir())) == 2
    # Keyed by the weights' content, not by workdir and step: the same weights loaded anew
    # hit; other weights at the same step (a workdir retrained in place) or another
    # preprocessing miss.
    same = dataclasses.replace(lm, params=jax.tree.map(jnp.copy, lm.params), decode_cache={})
    np.testing.assert_array_equal(cached_featurize(same, TEXTS, str(tmp_path)), a)
    assert len(list(tmp_path.iterdir())) == 2
    other = dataclasses.replace(lm, params=jax.tree.map(lambda x: x * 0.5, lm.params),
                                decode_cache={})
    assert not np.allclose(cached_featurize(other, TEXTS, str(tmp_path)), a)
    assert len(list(tmp_path.iterdir())) == 3
    cached_featurize(dataclasses.replace(lm, derived={"preprocess": "openai"}), TEXTS,
                     str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 4
    # A damaged cache file (torn by an older lmscale, edited) is computed again, not an
    # UnpicklingError/ValueError traceback.
    (cache_file,) = [p for p in tmp_path.iterdir() if np.array_equal(np.load(p)["features"], a)]
    # Computed again at the batch size that wrote it: other row packings agree to rounding
    # only (jax 0.12: 1 float32 ulp), and this compares bit for bit.
    cache_file.write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(cached_featurize(lm, TEXTS, str(tmp_path), batch_size=4), a)
    assert len(list(tmp_path.iterdir())) == 4  # rewritten in place, no temporary left
    # Another block's content copied over it (another LM's, other texts; same shape): its
    # stored key differs, so it is computed again, not read as these texts' features.
    others = [p for p in tmp_path.iterdir() if p != cache_file]
    for donor in others:
        cache_file.write_bytes(donor.read_bytes())
        np.testing.assert_array_equal(cached_featurize(lm, TEXTS, str(tmp_path), batch_size=4), a)


def test_the_cache_keeps_the_finished_blocks_of_an_interrupted_split(tmp_path, monkeypatch):
    from lmscale.transfer import featurize as featurize_module
    lm = random_lm()
    texts = (TEXTS * 3)[:7]
    whole = featurize(lm, texts)
    monkeypatch.setattr(featurize_module, "CACHE_BLOCK_TEXTS", 3)
    done = cached_featurize(lm, texts[:6], str(tmp_path))  # a run stopped after two blocks
    assert len(list(tmp_path.iterdir())) == 2
    np.testing.assert_allclose(done, whole[:6], rtol=1e-5, atol=1e-6)
    # The next run reads those blocks (marked here to tell read from recomputed) and computes
    # the third.
    (first,) = [p for p in tmp_path.iterdir()
                if np.array_equal(np.load(p)["features"], done[:3])]
    key = str(np.load(first)["key"])
    with open(first, "wb") as f:
        np.savez(f, features=done[:3] + 1.0, key=np.asarray(key))
    again = cached_featurize(lm, texts, str(tmp_path))
    np.testing.assert_array_equal(again[:3], done[:3] + 1.0)
    np.testing.assert_array_equal(again[3:6], done[3:])
    np.testing.assert_allclose(again[6:], whole[6:], rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.iterdir())) == 3


def test_a_split_of_several_blocks_reports_each_finished_block(tmp_path, monkeypatch):
    from lmscale.transfer import featurize as featurize_module
    lm = random_lm()
    monkeypatch.setattr(featurize_module, "CACHE_BLOCK_TEXTS", 3)
    lines = []
    cached_featurize(lm, (TEXTS * 3)[:7], str(tmp_path), report=lines.append)
    assert lines == ["  block 1/3: 3/7 texts", "  block 2/3: 6/7 texts", "  block 3/3: 7/7 texts"]
    lines.clear()
    cached_featurize(lm, TEXTS[:2], str(tmp_path), report=lines.append)  # one block: no line
    assert lines == []


def test_long_texts_of_a_large_split_get_a_cache_block_of_their_own(tmp_path, monkeypatch):
    """A block packs its texts alone: a very long text among short ones kept one row busy
    while the others idled (a 100k-text split with five 200k-character texts: 2.3x slower)."""
    from lmscale.transfer import featurize as featurize_module
    monkeypatch.setattr(featurize_module, "CACHE_BLOCK_TEXTS", 8)
    monkeypatch.setattr(featurize_module, "LONG_IN_BLOCK", 4)
    lengths = [10] * 20
    lengths[3] = lengths[17] = 500
    blocks = featurize_module.cache_blocks(lengths)
    short = [i for i in range(20) if i not in (3, 17)]
    assert [b.tolist() for b in blocks] == [short[:8], short[8:16], short[16:], [3, 17]]
    assert [b.tolist() for b in featurize_module.cache_blocks([10] * 8)] == [list(range(8))]
    lm = random_lm()
    texts = [("x" * n if n == 500 else TEXTS[i % len(TEXTS)]) for i, n in enumerate(lengths)]
    np.testing.assert_allclose(cached_featurize(lm, texts, str(tmp_path)), featurize(lm, texts),
                               rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.iterdir())) == 4


def test_empty_text_is_an_error():
    with pytest.raises(DataError, match="text 1 is empty"):
        featurize(random_lm(), ["fine", ""])


def test_a_word_models_trace_covers_the_text_as_written(capsys):
    """A word's bytes vary and <unk> stands for any word: the trace follows this text's words
    (the vocabulary's typical lengths made it too short, and transfer's heatmap crashed)."""
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    words = WordTokenizer([*SPECIALS, "the", "film", "is", "good"], unk_bytes=3)
    text = "the zzyzxqq  film\nis good "
    assert list(words.text_byte_lengths(text)) == [3, 8, 6, 1, 2, 6]  # "the", " zzyzxqq", ...
    lm = random_lm()
    graphdef, params = model_params(lm.config.model, words.vocab_size, seed=0)
    lm = dataclasses.replace(lm, tokenizer=words, graphdef=graphdef, params=params,
                             decode_cache={})
    capsys.readouterr()
    trace = unit_trace(lm, text, 3)
    assert trace.shape == (len(text.encode()),) and np.isfinite(trace).all()
    assert "outside the model's vocabulary" not in capsys.readouterr().err  # a heatmap's text:
    # the transfer said it six times, "these 1 texts", after the splits' notes
    from lmscale.transfer.featurize import encode_texts
    encode_texts(lm, [text])
    assert "of this text are words outside the model's vocabulary" in capsys.readouterr().err
    assert len(set(trace[3:11].tolist())) == 1 and trace[11] != trace[10]  # " zzyzxqq": one token


def test_all_layers_of_a_tied_model_says_which_layers_it_takes(tmp_path, capsys):
    """A tied model's last layer is as wide as the embedding, its others are wider: all_layers
    concatenates only the layers as wide as the last, which was said nowhere."""
    import csv

    from lmscale.config import default_config
    from lmscale.transfer.run import run_transfer
    from tests.transfer.conftest import _trained
    config = default_config()
    m = config.model
    m.kind, m.layers, m.hidden, m.embed, m.tie_embeddings = "lstm", 2, 16, 8, True
    lm = _trained(config, 0, jnp.float32)
    assert lm.model().num_layers == 1 and lm.model().feature_width == 8
    for name in ("train", "val"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows([(f"a {'good' if i % 2 else 'bad'} film {i}", i % 2) for i in range(12)])
    results = run_transfer(str(tmp_path), str(tmp_path / "train.csv"), str(tmp_path / "val.csv"),
                           lm=lm, all_layers=True, baseline="none", Cs=[1.0], examples=0)
    assert results["features"]["dimensions"] == 8
    assert ("note: all_layers concatenates the last 1 of 2 layers (those as wide as the last, "
            "8 units); the wider ones of this tied model are left out") in capsys.readouterr().err


def test_a_growing_number_of_texts_compiles_one_program_per_power_of_two():
    """A notebook featurizing or scoring 1, 2, 3 ... texts compiled a program for every count
    (20 calls: 20 compiles, +170 MB): the rows are rounded up to a power of two (padding)."""
    from lmscale.api import LM
    from lmscale.transfer.featurize import featurize
    from tests.conftest import lowered_programs
    from tests.transfer.conftest import random_lm
    lm = random_lm(hidden=23)  # a size no other test compiles
    texts = [f"text number {i}" for i in range(8)]
    with lowered_programs() as built:
        feats = [featurize(lm, texts[:n]) for n in range(1, 9)]
        scores = [LM(lm).score(texts[:n]) for n in range(1, 9)]
    assert built.count("jit(read_packed_chunk)") == 4, built  # 1, 2, 4, 8 rows (was 8)
    assert built.count("jit(_chunk_nats)") == 4, built
    for n in range(1, 8):  # the padding rows change nothing
        np.testing.assert_allclose(feats[n - 1], feats[7][:n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores[n - 1], scores[7][:n], rtol=1e-5)


def test_a_transfer_says_how_much_of_the_feature_cache_it_did_not_use(tmp_path, capsys):
    """Nothing prunes the feature cache (a sweep over checkpoints of a 4096-unit LM adds
    ~0.2 GB a point): past a GiB of blocks neither read nor written by this transfer, it says
    so; the blocks it read from the cache count as used (whatever their times: a read-only
    or another user's cache cannot have them renewed)."""
    import csv
    import os
    import time

    from lmscale.config import default_config
    from lmscale.transfer.run import run_transfer
    from tests.transfer.conftest import _trained
    config = default_config()
    config.model.kind, config.model.hidden, config.model.embed = "lstm", 16, 8
    lm = _trained(config, 0, jnp.float32)
    for name in ("train", "val"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows([(f"a {'good' if i % 2 else 'bad'} {name} film {i}", i % 2)
                         for i in range(12)])
    transfer = lambda: run_transfer(str(tmp_path), str(tmp_path / "train.csv"),
                                    str(tmp_path / "val.csv"), lm=lm, baseline="none", Cs=[1.0],
                                    examples=0)
    transfer()
    cache = tmp_path / "features"
    used = sorted(os.listdir(cache))
    assert len(used) == 2 and "GiB of cached features" not in capsys.readouterr().err
    other = cache / ("0" * 32 + ".npy")  # another LM's block: sparse, 1.5 GiB apparent
    with open(other, "wb") as f:
        f.truncate(3 * 2**29)
    day_ago = time.time() - 86400
    for name in os.listdir(cache):  # written long ago
        os.utime(cache / name, (day_ago, day_ago))
    transfer()  # reads its two blocks from the cache
    err = capsys.readouterr().err
    assert (f"note: {cache} also holds 1.5 GiB of cached features this transfer did not use "
            f"(1 file: of other weights, texts or options)") in err, err
    assert sorted(os.listdir(cache)) == sorted(used + [other.name])  # nothing deleted


def test_a_unit_trace_has_one_value_per_byte_of_its_text_whatever_the_tokenizer(monkeypatch):
    """A tokenizer whose pieces count other bytes than the text's (an imported SentencePiece
    model adding a space before each text): the trace was one value longer than the text,
    and the heatmap refused it, failing lmscale.transfer before results.json."""
    from lmscale.transfer import plots
    lm = random_lm(layers=1)
    lengths = np.asarray(lm.tokenizer.byte_lengths()).copy()
    lengths[lm.tokenizer.encode(TEXTS[2])[0]] += 1  # the first byte's piece: one byte more
    monkeypatch.setattr(type(lm.tokenizer), "byte_lengths", lambda self: lengths)
    trace = unit_trace(lm, TEXTS[2], 3)
    assert trace.shape == (len(TEXTS[2].encode()),)
    plots.heatmap_figure([TEXTS[2]], [trace], unit=3)


def test_a_unit_trace_shorter_than_its_text_is_nan_padded_to_its_bytes(monkeypatch):
    """A tokenizer whose pieces count fewer bytes than the text (one removing whitespace):
    the trace is padded with NaN to one value per byte (the longer case is cut)."""
    text = "Q somewhat longer text"  # its first byte once
    lm = random_lm(layers=1)
    lengths = np.asarray(lm.tokenizer.byte_lengths()).copy()
    lengths[lm.tokenizer.encode(text)[0]] = 0  # the first byte's piece: counted as no byte
    monkeypatch.setattr(type(lm.tokenizer), "byte_lengths", lambda self: lengths)
    trace = unit_trace(lm, text, 3)
    assert trace.shape == (len(text.encode()),)
    assert np.isnan(trace[-1]) and not np.isnan(trace[:-1]).any()


@pytest.mark.parametrize("damage", ["float64", "rows"])
def test_a_cache_block_of_another_dtype_or_rows_is_computed_again(tmp_path, damage):
    """A block holding its key but float64 features, or not one row per text (written by hand,
    or another version), is not read as these texts' features."""
    texts = ["a", "short one", "a somewhat longer text"]
    lm = random_lm(layers=1)
    a = cached_featurize(lm, texts, str(tmp_path), batch_size=4)
    (block,) = list(tmp_path.iterdir())
    key = str(np.load(block)["key"])
    with open(block, "wb") as f:
        np.savez(f, features=a.astype(np.float64) + 1.0 if damage == "float64" else a[:2],
                 key=np.asarray(key))
    again = cached_featurize(lm, texts, str(tmp_path), batch_size=4)
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again, a)
