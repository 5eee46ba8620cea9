"""Small random-weight LMs built in memory for transfer and generation tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmscale.config import default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import model_params
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM
from tests.conftest import SHARED_DATA


def random_lm(kind: str = "mlstm", layers: int = 1, hidden: int = 16, seed: int = 0) -> TrainedLM:
    """A TrainedLM with randomly initialized weights (scaled up so states are not tiny)."""
    config = default_config()
    config.model.kind, config.model.layers, config.model.hidden, config.model.embed = kind, layers, hidden, 8
    lm = _trained(config, seed, jnp.float32)
    lm.params = jax.tree.map(lambda x: x * 3.0, lm.params)
    return lm


def random_transformer_lm(weight_norm: bool = True, tie: bool = False, dtype=jnp.float32,
                          seed: int = 3, max_len: int = 64) -> TrainedLM:
    """A small random TransformerLM as a TrainedLM (2 layers, d 16, 2 heads, d_ff 40)."""
    config = default_config()
    m = config.model
    m.kind, m.layers, m.d_model, m.heads, m.d_ff, m.max_len = "transformer", 2, 16, 2, 40, max_len
    m.weight_norm, m.tie_embeddings = weight_norm, tie
    return _trained(config, seed, dtype)


def _trained(config, seed: int, dtype) -> TrainedLM:
    """config.model built with nnx.Rngs(seed) in ``dtype``, bytes, as a TrainedLM."""
    tok = ByteTokenizer.sentiment_discovery()
    graphdef, params = model_params(config.model, tok.vocab_size, seed=seed, dtype=dtype)
    return TrainedLM(config=config, derived={}, tokenizer=tok, graphdef=graphdef, params=params,
                     step=0, mesh=mesh_lib.make_mesh(), workdir="")


SST = SHARED_DATA / "sst_binary"


def write_labeled(path, rows) -> str:
    """A labeled CSV (columns sentence,label) of ``rows`` (text, label); returns its path."""
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(rows)
    return str(path)
