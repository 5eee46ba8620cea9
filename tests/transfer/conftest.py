"""Small LMs for transfer tests: random-weight ones built in memory, and one trained on SST."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from lmscale.config import default_config
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.restore import TrainedLM
from tests.conftest import SHARED_DATA, tiny_config


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


@pytest.fixture(scope="session")
def sst_run(tmp_path_factory) -> str:
    """A tiny mLSTM trained for a few steps on SST train text: a real workdir."""
    from lmscale.training.loop import train
    workdir = str(tmp_path_factory.mktemp("sst_lm") / "run")
    config = tiny_config(f"{SST}/train.csv", **{"data.text_column": "sentence", "data.split": "8,1,0",
                                                "data.shard_tokens": 65536, "train.steps": 20,
                                                "model.hidden": 32})
    train(config, workdir)
    return workdir
