"""Kinds of one's own unlike the built-in ones (tests/examples/odd_kinds.py): a carry of
several leaves that ``features`` unpacks, a stateless kind without a length limit, and broken
kinds, refused in one line naming what their module gets wrong."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmscale.models import build_model, registry
from lmscale.models.interface_check import ModelInterfaceError
from tests.conftest import REPO, tiny_config, tiny_train_command, write_corpus

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("test_counter", "test_conv", "test_wide_logits", "test_no_carry", "test_float_count",
         "test_blocks")


@pytest.fixture(scope="module")
def odd():
    sys.path.insert(0, HERE)
    try:
        yield importlib.import_module("odd_kinds")
    finally:
        sys.path.remove(HERE)
        for name in KINDS:  # the other tests of this process see the built-ins only
            registry._KINDS.pop(name, None)
        sys.modules.pop("odd_kinds", None)


@pytest.fixture(scope="module")
def trained(odd, tmp_path_factory):
    """kind -> a TrainedLM of test_counter and test_conv, 2 steps each."""
    from lmscale.training.loop import train
    from lmscale.training.restore import load_trained
    root = tmp_path_factory.mktemp("odd_runs")
    corpus = write_corpus(root / "corpus")
    runs = {}
    for kind in ("test_counter", "test_conv"):
        train(tiny_config(corpus, **{"model.kind": kind, "train.steps": 2, "train.eval_every": 0}),
              str(root / kind))
        runs[kind] = load_trained(str(root / kind))
    return runs


def _whole(lm, text: str, state: str = "hidden") -> np.ndarray:
    """[T, F]: the last layer's states of ``text`` read in one call from a zero carry."""
    model = lm.model()
    ids = jnp.asarray(np.asarray(lm.tokenizer.encode(text), np.int32)[None])
    return np.asarray(model.features(ids, model.initial_carry(1))[state][-1, 0])


def test_a_stateless_kind_without_a_length_limit_is_featurized_text_by_text(trained):
    """Its features were read by the packed reader, whose chunks cut the context that only a
    carry bridges: a text's features depended on the texts packed beside it (by 0.1)."""
    from lmscale.transfer.featurize import featurize
    lm = trained["test_conv"]
    texts = [("abc def " * 40)[: 40 + 37 * i] for i in range(8)]  # 40..299 bytes
    together = featurize(lm, texts, batch_size=2, chunk=32)  # pooling "last"
    for text, got in zip(texts, together):
        np.testing.assert_allclose(got, _whole(lm, text)[-1], atol=1e-5)


def test_a_held_neuron_trace_starts_from_the_models_zero_carry(trained):
    """generate --neuron's heatmap passed ``features`` a None carry: a TypeError in a kind
    that unpacks its carry."""
    from lmscale.transfer.featurize import unit_trace
    lm = trained["test_counter"]
    np.testing.assert_allclose(np.asarray(unit_trace(lm, "abcdef", 3)),
                               _whole(lm, "abcdef")[:, 3], atol=1e-6)


def test_fine_tuning_in_pieces_is_refused_for_a_kind_that_carries_nothing(trained):
    """finetune.grad_tokens reads a text in pieces with the state carried; a stateless kind
    without max_len passed the check (only a length limit was refused) and read each piece
    without the text before it."""
    from lmscale.config import ConfigError
    from lmscale.finetuning.settings import check_lm_settings
    config = ml_collections.ConfigDict(trained["test_conv"].config.to_dict())
    config.finetune = ml_collections.ConfigDict(
        {**tiny_config("x").finetune.to_dict(), "grad_tokens": 8})
    with pytest.raises(ConfigError, match="carries no state from one piece to the next"):
        check_lm_settings(config, trained["test_conv"])
    config = ml_collections.ConfigDict(trained["test_counter"].config.to_dict())
    config.finetune = ml_collections.ConfigDict(
        {**tiny_config("x").finetune.to_dict(), "grad_tokens": 8})
    check_lm_settings(config, trained["test_counter"])  # a carry: read in pieces


def test_long_texts_of_a_kind_that_carries_nothing_are_not_told_to_use_grad_tokens(
        trained, tmp_path, monkeypatch, capsys):
    """The long-text note advised finetune.grad_tokens=1024, which such a kind refuses."""
    from lmscale.finetuning import truncated
    from lmscale.finetuning.loop import finetune
    from tests.finetune.conftest import ft_config
    monkeypatch.setattr(truncated, "LONG_TEXT_TOKENS", 50)
    for split, rows in (("train", 4), ("val", 2)):
        (tmp_path / f"{split}.csv").write_text("label,text\n" + "".join(
            f"{i % 2},{'ab ' * (10 + 20 * i)}\n" for i in range(rows)))
    settings = {"train.steps": 1, "train.eval_every": 0, "train.batch_size": 2,
                "finetune.text_column": "text"}
    finetune(ft_config(trained["test_conv"].workdir, str(tmp_path / "train.csv"),
                       str(tmp_path / "val.csv"), **settings), str(tmp_path / "ft"))
    err = capsys.readouterr().err
    assert ("the longest training text has 210 tokens" in err
            and "this model carries no state, so it reads each text whole" in err
            and "grad_tokens=1024" not in err), err
    assert truncated.fits_advice(0, None, carries_state=False).startswith(
        "lower train.batch_size or shorten the longest texts (this model carries no state")


@pytest.mark.parametrize("kind, says", [
    ("test_wide_logits", "__call__ returned logits float32 (2, 3, 21); expected a float array "
                         "of shape (2, 3, 20)"),
    ("test_no_carry", "lacks initial_carry"),
    ("test_float_count", "__call__ returned a new carry"),
])
def test_a_module_unlike_the_interface_is_refused_naming_what_differs(odd, kind, says):
    config = ml_collections.ConfigDict(dict(kind=kind, embed=4, hidden=8, layers=1))
    with pytest.raises(ModelInterfaceError) as error:
        build_model(config, 20, rngs=nnx.Rngs(0))
    assert str(error.value).startswith(f"model.kind {kind!r} (its module ")
    assert says in str(error.value), str(error.value)
    config.kind = "test_counter"  # the good kinds pass
    build_model(config, 20, rngs=nnx.Rngs(0))
    config.kind = "test_blocks"  # one that cannot read the check's 3 tokens is not refused
    build_model(config, 20, rngs=nnx.Rngs(0))


def test_the_trainer_refuses_a_broken_kind_in_one_line(tmp_path):
    """Logits one wider than the vocabulary trained until the loss was called non-finite
    ("the run diverged ... lower optim.lr")."""
    corpus = write_corpus(tmp_path / "corpus")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, str(REPO)]),
           "LMSCALE_MODEL_MODULES": "odd_kinds"}
    proc = subprocess.run(tiny_train_command(tmp_path / "run", corpus,
                                             "--config.model.kind=test_wide_logits"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.kind 'test_wide_logits' (its module WideLogits): "
                           "__call__ returned logits float32 (2, 3, 258)"), proc.stderr[-2000:]


def test_a_carry_returned_in_another_float_width_is_not_refused():
    """A plugin whose new carry is bfloat16 (its compute dtype) from float32 zeros trained and
    resumed before the interface check; an int where a float was is still refused."""
    import jax

    from lmscale.models.interface_check import _expect_same_carry
    f32 = (jax.ShapeDtypeStruct((2, 4), jnp.float32),)
    _expect_same_carry("k", "__call__", f32, (jax.ShapeDtypeStruct((2, 4), jnp.bfloat16),))
    with pytest.raises(ModelInterfaceError, match="unlike initial_carry's"):
        _expect_same_carry("k", "__call__", f32, (jax.ShapeDtypeStruct((2, 4), jnp.int32),))
    with pytest.raises(ModelInterfaceError, match="unlike initial_carry's"):
        _expect_same_carry("k", "__call__", f32, (jax.ShapeDtypeStruct((2, 5), jnp.float32),))


def _unlike(odd, name: str):
    """A module built on odd_kinds' good kinds that gets one part of the interface wrong."""
    class NoWidth(odd.CounterRNN):
        feature_width = property(lambda self: self._no_such_attribute)

    class BatchLast(odd.CausalConv):
        def initial_carry(self, batch_size):
            return jnp.zeros((1, batch_size))

        def _run(self, tokens, carry, resets):
            return super()._run(tokens, carry, resets)[0], carry

    class IntLogits(odd.CausalConv):
        def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
            logits, new = super().__call__(tokens, carry, resets)
            return logits.astype(jnp.int32), new

    class NarrowFeatures(odd.CounterRNN):
        def features(self, tokens, carry, resets=None, prepared=None, *, dropout_key=None,
                     step_key=None):
            out = super().features(tokens, carry, resets)
            return {**out, "hidden": out["hidden"][..., 1:]}

    class FloatFeatureCarry(odd.CounterRNN):
        def features(self, tokens, carry, resets=None, prepared=None, *, dropout_key=None,
                     step_key=None):
            out = super().features(tokens, carry, resets)
            h, n = out["carry"]
            return {**out, "carry": (h, n.astype(jnp.float32))}

    class WideStep(odd.CounterRNN):
        def decode_step(self, tokens, state, prepared=None):
            logits, new = super().decode_step(tokens, state, prepared)
            return logits[:, None], new

    return {c.__name__: c for c in (NoWidth, BatchLast, IntLogits, NarrowFeatures,
                                    FloatFeatureCarry, WideStep)}[name]


@pytest.mark.parametrize("module, says", [
    ("NoWidth", "lacks feature_width: the interface"),
    ("BatchLast", "initial_carry(2) gives an array of shape (1, 2); every leaf has the batch "
                  "as its leading axis"),
    ("IntLogits", "__call__ returned logits int32 (2, 3, 20); expected a float array"),
    ("NarrowFeatures", "features()['hidden'] is (1, 2, 3, 7); expected [layers, B, T, "
                       "feature_width] = [1, 2, 3, 8]"),
    ("FloatFeatureCarry", "features returned a new carry"),
    ("WideStep", "decode_step returned logits float32 (2, 1, 20); expected a float array of "
                 "shape (2, 20)"),
])
def test_each_part_of_the_interface_is_checked(odd, module, says):
    """Each check of interface_check on its own: a module wrong in that part alone is refused
    naming it (the kinds above cover a missing method, wide logits and a float carry)."""
    from lmscale.models.interface_check import check_module
    model = _unlike(odd, module)(20, 4, 8, nnx.Rngs(0))
    with pytest.raises(ModelInterfaceError) as error:
        check_module(f"test_{module}", "once", model, 20)
    assert says in str(error.value), str(error.value)
