"""Small random-weight LMs built in memory for transfer and generation tests."""

from __future__ import annotations

import jax
from flax import nnx

from lmscale.config import default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM
from tests.conftest import SHARED_DATA


def random_lm(kind: str = "mlstm", layers: int = 1, hidden: int = 16, seed: int = 0) -> TrainedLM:
    """A TrainedLM with randomly initialized weights (scaled up so states are not tiny)."""
    config = default_config()
    config.model.kind, config.model.layers, config.model.hidden, config.model.embed = kind, layers, hidden, 8
    tok = ByteTokenizer.sentiment_discovery()
    model = build_model(config.model, tok.vocab_size, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(lambda x: x * 3.0, params)
    return TrainedLM(config=config, derived={}, tokenizer=tok, graphdef=graphdef, params=params,
                     step=0, mesh=mesh_lib.make_mesh(), workdir="")


SST = SHARED_DATA / "sst_binary"
