"""``model.io_init``: a recurrent LM's embedding and untied decoder drawn as awd-lstm-lm draws
them (U(+-0.1), "uniform") or as sentiment-discovery's RNNModel gets them from PyTorch's
defaults ("pytorch": nn.Embedding N(0, 1), nn.Linear U(+-1/sqrt(H))); the decoder bias 0."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lmscale.config import ConfigError, config_from_file, validate
from lmscale.models import build_model
from lmscale.models.registry import unused_settings_note
from lmscale.pretrained.weights import path_key
from tests.conftest import REPO, TINY_TRANSFORMER, tiny_config

V = 257


def _params(io_init: str, kind: str = "mlstm", **more) -> dict[str, np.ndarray]:
    config = tiny_config("unused", **{"model.kind": kind, "model.layers": 2, "model.hidden": 256,
                                      "model.embed": 64, "model.io_init": io_init, **more})
    model = build_model(config.model, V, rngs=nnx.Rngs(3))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {path_key(p): np.asarray(x) for p, x in leaves}


@pytest.mark.parametrize("kind", ["mlstm", "lstm", "qrnn"])
def test_each_init_draws_its_distribution_and_nothing_else_changes(kind):
    uniform, pytorch = _params("uniform", kind), _params("pytorch", kind)
    emb, dec = uniform["embedding/embedding"], uniform["decoder/kernel"]
    assert np.abs(emb).max() <= 0.1 and np.abs(dec).max() <= 0.1
    np.testing.assert_allclose([emb.std(), dec.std()], 0.1 / np.sqrt(3), rtol=0.05)
    emb, dec = pytorch["embedding/embedding"], pytorch["decoder/kernel"]  # [V, 64], [256, V]
    assert abs(emb.std() - 1.0) < 0.03 and abs(emb.mean()) < 0.03 and np.abs(emb).max() > 3
    bound = 1 / np.sqrt(256)
    assert np.abs(dec).max() <= bound and np.abs(dec).max() > 0.95 * bound
    np.testing.assert_allclose(dec.std(), bound / np.sqrt(3), rtol=0.05)
    for params in (uniform, pytorch):
        assert not params["decoder/bias"].any()
    # one key each way: the recurrent layers draw the same weights (an A/B isolates the init)
    assert set(uniform) == set(pytorch)
    for key in uniform:
        if key.startswith("layers/"):
            np.testing.assert_array_equal(uniform[key], pytorch[key], err_msg=key)


def test_a_tied_model_draws_its_embedding_so_and_keeps_a_zero_bias():
    tied = _params("pytorch", "lstm", **{"model.tie_embeddings": True})
    assert "decoder/kernel" not in tied and not tied["decoder_bias"].any()
    assert abs(tied["embedding/embedding"].std() - 1.0) < 0.03


def test_a_bad_value_is_refused_and_a_transformer_notes_it_unused():
    config = tiny_config("unused", **{"model.io_init": "normal"})
    with pytest.raises(ConfigError, match=r"model\.io_init must be one of \['uniform', "
                                          r"'pytorch'\], got 'normal'"):
        validate(config)
    note = unused_settings_note(tiny_config("unused", **TINY_TRANSFORMER,
                                            **{"model.io_init": "pytorch"}).model)
    assert note is not None and "io_init" in note


@pytest.mark.parametrize("name, expected", [("quickstart", "pytorch"), ("mlstm4096", "pytorch"),
                                            ("mlstm4096_128gpu", "pytorch"),
                                            ("awd_lstm_word", "uniform"), ("qrnn_char", "uniform")])
def test_the_recipes_set_their_sources_init(name, expected):
    assert config_from_file(str(REPO / "configs" / f"{name}.py")).model.io_init == expected


def test_a_resume_with_another_init_says_it_changes_nothing(tmp_path, corpus, capsys):
    """Resuming changes nothing (the weights come from the checkpoint), but config.json then
    records the setting as given: a note says the setting differs from the checkpoint's."""
    from lmscale.training.loop import train
    base = {"train.steps": 2, "train.eval_every": 0, "checkpoint.every": 2}
    train(tiny_config(corpus, **base), str(tmp_path / "run"))
    capsys.readouterr()
    train(tiny_config(corpus, **{**base, "train.steps": 4, "model.io_init": "pytorch"}),
          str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert "model.io_init is 'pytorch' here and 'uniform' in the checkpoint's config; it draws " \
           "only a new run's first weights" in err, err
    train(tiny_config(corpus, **{**base, "train.steps": 6, "model.io_init": "pytorch"}),
          str(tmp_path / "run"))
    assert "io_init" not in capsys.readouterr().err  # step 4's checkpoint records it: said once
