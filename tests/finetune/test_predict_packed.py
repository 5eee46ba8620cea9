"""A fine-tuned classifier's predictions read the texts packed end to end (``Predictor``):
equal to the classifier applied to each text alone, for every model family, several states
and poolings, single- and multi-label, float32 and bfloat16; the programs compiled do not
grow with the number of text lengths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.finetuning.head import init_classifier
from lmscale.finetuning.predict import Predictor
from lmscale.training import mesh as mesh_lib
from tests.conftest import lowered_programs

FAMILIES = {
    "mlstm": dict(kind="mlstm", layers=2, hidden=24, embed=8),
    "lstm": dict(kind="lstm", layers=1, hidden=16, embed=8),
    "qrnn": dict(kind="qrnn", layers=2, hidden=16, embed=8),
    "transformer": dict(kind="transformer", layers=2, d_model=16, heads=2, d_ff=32, max_len=96),
}


def classifier(family: str, *, pooling: str = "last,mean,max,min", state: str = "",
               multilabel: bool = False, compute=jnp.float32, classes: int = 3):
    """(config, graphdef, params) of a random classifier, its LM's weights scaled up so
    states are not tiny (a pool over a text then differs from its last state)."""
    config = default_config()
    for key, value in FAMILIES[family].items():
        setattr(config.model, key, value)
    ft = config.finetune
    ft.pooling, ft.state, ft.multilabel, ft.head_hidden = pooling, state, multilabel, "8"
    graphdef, params, _ = init_classifier(config, ByteTokenizer().vocab_size, classes, compute)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 2.0 if str(getattr(path[0], "key", "")) == "lm" else x, params)
    return config, graphdef, params


def texts_ids(count: int, seed: int = 0, longest: int = 300) -> list[np.ndarray]:
    """Token ids of ``count`` texts of 1..``longest`` bytes (several end in one 128-token
    chunk of a row; some cross chunks)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, size=count)
    lengths[:3] = (1, 2, longest)
    return [rng.integers(1, 256, size=n).astype(np.int32) for n in lengths]


def alone(graphdef, params, ids: list[np.ndarray], multilabel: bool) -> np.ndarray:
    """The classifier on each text alone, a row of its own from position 0 with a zero carry
    (as training reads it), padded after the text: probabilities [N, K]."""
    width = max(len(x) for x in ids)
    tokens = np.zeros((len(ids), width), np.int32)
    for row, x in enumerate(ids):
        tokens[row, :len(x)] = x
    logits = nnx.merge(graphdef, params)(jnp.asarray(tokens),
                                         jnp.asarray([len(x) for x in ids], jnp.int32))
    probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)
    return np.asarray(probs, np.float64)


def predictor(config, graphdef, multilabel: bool = False, batch_size: int = 8) -> Predictor:
    return Predictor(graphdef, mesh_lib.make_mesh(), multilabel, tokenizer=ByteTokenizer(),
                     config=config, derived={}, batch_size=batch_size)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_predictions_equal_each_text_alone(family):
    """25 texts of 1-300 bytes packed into 8 rows (a transformer: rows of its widths up to its
    max_len 96, longer texts cut to their last 96 tokens as ``encode`` does), the state reset
    at each text: probabilities within 2e-6 of the classifier on each text alone (float32;
    the pools' sums are taken in another order), every text in its place."""
    config, graphdef, params = classifier(family)
    ids = texts_ids(25)
    limit = config.model.max_len if family == "transformer" else None
    ids = [x[-limit:] if limit else x for x in ids]
    got = predictor(config, graphdef)(params, ids)
    want = alone(graphdef, params, ids, False)
    assert got.shape == (25, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert np.ptp(want, axis=0).max() > 0.05  # the texts' predictions differ: a mix-up shows


def test_states_side_by_side_and_multilabel():
    """An mLSTM's head reading both states (cell, hidden) x (last, mean), one sigmoid per
    class: as alone, within 2e-6."""
    config, graphdef, params = classifier("mlstm", pooling="last,mean", state="cell,hidden",
                                          multilabel=True, classes=4)
    ids = texts_ids(20, seed=1)
    got = predictor(config, graphdef, multilabel=True)(params, ids)
    want = alone(graphdef, params, ids, True)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_bfloat16_predictions_match_each_text_alone_within_its_rounding():
    """In bfloat16 compute (matmuls in bfloat16, states float32) the packed read takes the
    prepared weights (weight norm applied, then rounded): within 0.02 of the classifier on
    each text alone, and within 0.03 of float32."""
    config, graphdef, params = classifier("mlstm", compute=jnp.bfloat16)
    config.precision.compute = "bfloat16"
    _, graphdef32, _ = classifier("mlstm")
    ids = texts_ids(16, seed=2)
    got = predictor(config, graphdef)(params, ids)
    want = alone(graphdef, params, ids, False)
    np.testing.assert_allclose(got, want, atol=0.02, rtol=0)
    exact = alone(graphdef32, params, ids, False)
    np.testing.assert_allclose(got, exact, atol=0.03, rtol=0)


def test_programs_do_not_grow_with_text_lengths():
    """Padded batches compiled a program per batch width (6,000 texts of 60-2,000 characters:
    49 programs). Packed, 300 texts of other lengths up to 2,000 (about 260 distinct) lower
    no program that a first 300 did not (one per chunk shape, and the head's)."""
    config, graphdef, params = classifier("lstm", pooling="last,mean")
    predict = predictor(config, graphdef, batch_size=16)
    predict(params, texts_ids(300, seed=3, longest=2000))
    with lowered_programs() as built:
        probs = predict(params, texts_ids(300, seed=4, longest=2000))
    assert probs.shape == (300, 3)
    assert built == [], built


def test_texts_cut_to_max_len_are_said(capfd):
    """A transformer classifier reads a text's last max_len tokens: said, not silent."""
    from lmscale.finetuning.data import encode
    ids = encode(ByteTokenizer(), lambda t: t, ["short", "x" * 40, "y" * 90], 32, source="f.csv")
    assert [len(x) for x in ids] == [5, 32, 32]
    assert ("note: f.csv: 2 of 3 texts are longer than the model's max_len=32 tokens (the "
            "longest 90): their last 32 tokens are read") in capfd.readouterr().err


def test_texts_in_several_blocks_with_long_ones_apart_keep_their_places(monkeypatch):
    """Blocks of 4 texts, the long ones moved to blocks of their own at the end, and head calls
    of 3 rows: each text's probabilities go back to its own row."""
    from lmscale.finetuning import predict
    from lmscale.transfer import featurize
    monkeypatch.setattr(featurize, "CACHE_BLOCK_TEXTS", 4)
    monkeypatch.setattr(featurize, "LONG_IN_BLOCK", 2)
    monkeypatch.setattr(predict, "HEAD_ROWS", 3)
    config, graphdef, params = classifier("lstm")
    ids = texts_ids(11, seed=2, longest=120)
    blocks = featurize.cache_blocks([len(x) for x in ids])
    assert len(blocks) > 2 and np.concatenate(blocks).tolist() != list(range(11))
    got = predictor(config, graphdef)(params, ids)
    np.testing.assert_allclose(got, alone(graphdef, params, ids, False), atol=2e-6, rtol=0)
