"""model.init: the seed's (fairseq) initialization or nanoGPT's ("gpt2", after the GPT-2
paper), checked from its definition.

GPT-2 (and nanoGPT): every matrix and embedding drawn N(0, 0.02^2), the two projections that
write into the residual stream (attention ``out``, feed-forward ``fc2``) N(0, (0.02 /
sqrt(2 L))^2), biases zero, LayerNorm 1 and 0, and the token embeddings added to the
positions unscaled (no sqrt(d)).
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.models import get_kind
from lmscale.models.registry import architecture
from lmscale.models.transformer import TransformerLM
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.model_signature import check_same_model
from tests.models.helpers import randomize_params
from tests.models.numpy_transformer import np_transformer
from tests.models.test_transformer import model_weights

V, D, H, FF, L, MAXLEN = 300, 128, 4, 512, 3, 64


def _std(a) -> float:
    return float(np.asarray(a, np.float64).std())


@pytest.mark.parametrize("weight_norm", [False, True])
def test_gpt2_init_draws_gpt2s_scales(weight_norm):
    model = TransformerLM(vocab_size=V, layers=L, d_model=D, heads=H, d_ff=FF, max_len=MAXLEN,
                          norm="pre", weight_norm=weight_norm, init="gpt2", rngs=nnx.Rngs(0))
    w = model_weights(model)  # effective matrices (weight norm: g = |v| at the start)
    residual = 0.02 / math.sqrt(2 * L)
    for name, want in (("embedding", 0.02), ("positions", 0.02), ("head", 0.02)):
        np.testing.assert_allclose(_std(w[name]), want, rtol=0.03, err_msg=name)
    for l, block in enumerate(w["blocks"]):
        for name, want in (("wq", 0.02), ("wk", 0.02), ("wv", 0.02), ("w1", 0.02),
                           ("wo", residual), ("w2", residual)):
            np.testing.assert_allclose(_std(block[name]), want, rtol=0.05, err_msg=f"{l}.{name}")
            assert abs(float(np.asarray(block[name]).mean())) < want / 10
        for name in ("bq", "bo", "b1", "b2", "ln1_bias"):
            assert not np.any(block[name])
        assert np.all(block["ln1_scale"] == 1)
    assert not np.any(w["head_bias"])


def test_fairseq_init_is_unchanged_by_the_option():
    """The default draws what it drew before model.init existed (the seed's scales), and the
    same seed gives the same weights whether the default is given or not."""
    args = dict(vocab_size=V, layers=L, d_model=D, heads=H, d_ff=FF, max_len=MAXLEN)
    a = model_weights(TransformerLM(**args, rngs=nnx.Rngs(0)))
    b = model_weights(TransformerLM(**args, init="fairseq", rngs=nnx.Rngs(0)))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_allclose(_std(a["embedding"]), D ** -0.5, rtol=0.03)
    bound = math.sqrt(6 / (D + D))  # Xavier-uniform (d, d): out
    assert np.abs(a["blocks"][0]["wo"]).max() <= bound
    np.testing.assert_allclose(_std(a["blocks"][0]["wo"]), bound / math.sqrt(3), rtol=0.05)


@pytest.mark.parametrize("norm,tie", [("pre", True), ("post", False)])
def test_gpt2_forward_adds_the_token_embeddings_unscaled(norm, tie):
    model = TransformerLM(vocab_size=50, layers=2, d_model=32, heads=2, d_ff=64, max_len=16,
                          norm=norm, tie_embeddings=tie, init="gpt2", rngs=nnx.Rngs(1))
    randomize_params(model, 7, scale=0.3)
    tok = jax.random.randint(jax.random.key(3), (2, 12), 0, 50, dtype=jnp.int32)
    resets = np.zeros(tok.shape, bool)
    resets[1, 6] = True
    logits, _ = model(tok, (), jnp.asarray(resets))
    want, _ = np_transformer(np.asarray(tok), model_weights(model), heads=2, norm=norm,
                             resets=resets, embed_scale=1.0)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=2e-5)
    scaled, _ = np_transformer(np.asarray(tok), model_weights(model), heads=2, norm=norm,
                               resets=resets)
    assert np.abs(scaled - want).max() > 1e-2  # the reference tells the two apart


def _config(**model):
    c = default_config()
    c.model.kind = "transformer"
    c.model.update(dict(layers=2, d_model=32, heads=2, d_ff=64, max_len=16), **model)
    c.train.seq_len = 16
    return c


def test_init_is_validated_and_part_of_the_architecture():
    kind = get_kind("transformer")
    with pytest.raises(ValueError, match=r"model.init must be one of \['fairseq', 'gpt2'\]"):
        kind.validate(_config(init="xavier").model, _config().train)
    with pytest.raises(ValueError, match="model.init='gpt2' .* sinusoidal positions"):
        kind.validate(_config(init="gpt2", positions="sinusoidal").model, _config().train)
    assert "gpt2-init" in kind.describe(_config(init="gpt2").model)
    # the forward differs, so a checkpoint of one is not restored as the other; a checkpoint
    # from before the field (no model.init recorded) counts as the default, fairseq
    fairseq = {f"model.{k}": v for k, v in architecture(_config().model).items()}
    gpt2 = {f"model.{k}": v for k, v in architecture(_config(init="gpt2").model).items()}
    with pytest.raises(CheckpointMismatchError, match="model.init"):
        check_same_model(fairseq, gpt2, "run")
    old = {k: v for k, v in fairseq.items() if k != "model.init"}
    check_same_model(old, fairseq, "run")
    with pytest.raises(CheckpointMismatchError, match="model.init"):
        check_same_model(old, gpt2, "run")


def test_a_recurrent_model_says_model_init_is_not_its_setting():
    from lmscale.models.registry import unused_settings_note
    c = default_config()
    c.model.init = "gpt2"
    assert "model.init='gpt2' is a setting of model.kind='transformer'" in unused_settings_note(c.model)


def test_a_gpt2_initialized_run_trains(tmp_path):
    """A small pre-norm GPT-2-style run through lmscale.train: the loss falls and config.json
    and the checkpoint record the choice."""
    from lmscale.training.loop import train
    c = _config(init="gpt2", norm="pre", tie_embeddings=True, weight_norm=False)
    c.train.update(batch_size=8, steps=40, log_every=10, eval_every=0, progress_bar=False)
    c.optim.lr = 3e-3
    c.checkpoint.every = 40
    workdir = str(tmp_path / "run")
    train(c, workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [r["loss"] for r in records if r.get("split") == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["init"] == "gpt2"
