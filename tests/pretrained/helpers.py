"""Random lmscale-layout weights (NumPy only: no model init, so tests stay fast) and a jitted run."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import RecurrentLM
from lmscale.pretrained.weights import LMWeights, expected_shapes


def random_weights(kind: str = "mlstm", *, tokenizer: ByteTokenizer = ByteTokenizer.openai(),
                   embed: int = 8, hidden: int = 16, layers: int = 1, weight_norm: bool = True,
                   two_biases: bool = False, seed: int = 0) -> LMWeights:
    """Every param uniform(-0.5, 0.5); weight-norm gains uniform(0.5, 1.5) (so g != ||v||)."""
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(kind, tokenizer.vocab_size, embed, hidden, layers, weight_norm,
                             two_biases)
    params = {k: (rng.uniform(0.5, 1.5, s) if k.endswith("/g") else rng.uniform(-0.5, 0.5, s)
                  ).astype(np.float32) for k, s in shapes.items()}
    return LMWeights(kind=kind, tokenizer=tokenizer, params=params)


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    return model(tokens, None)[0], model.features(tokens, None)["cell"]


def run_lmscale(model: RecurrentLM, texts: list[bytes], tokenizer: ByteTokenizer = ByteTokenizer.openai()
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, (logits [T, V], cell states of every layer [L, T, H]) from zero state.

    One jitted, right-padded batch (padding comes after each text: it cannot change its states).
    """
    ids = [tokenizer.encode(t) for t in texts]
    tokens = np.zeros((len(ids), max(len(x) for x in ids)), np.int32)
    for r, x in enumerate(ids):
        tokens[r, :len(x)] = x
    logits, cells = _forward(*nnx.split(model), jnp.asarray(tokens))
    return [(np.asarray(logits[r, :len(x)]), np.asarray(cells[:, r, :len(x)]))
            for r, x in enumerate(ids)]
