"""The notebook API: load a trained LM and score, featurize or generate text with it.

    import lmscale
    lm = lmscale.load_lm("runs/sst_lm")
    lm.score(["a fine film", "zxqv"])          # bits per character of each text
    lm.featurize(texts)                         # [N, hidden] final cell states
    lm.generate("This movie", length=100, neuron=lm_neuron, neuron_value=1.0)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmscale.training.loss import bits_per_char, cross_entropy_sums
from lmscale.training.restore import TrainedLM, load_trained
from lmscale.transfer.featurize import encode_texts, featurize


class LM:
    """A trained language model with a small, NumPy-in / NumPy-out interface."""

    def __init__(self, trained: TrainedLM) -> None:
        self.trained = trained
        self._score_fn = jax.jit(self._nats)

    @property
    def config(self) -> Any:
        return self.trained.config

    @property
    def hidden(self) -> int:
        return self.trained.model().hidden

    def _nats(self, params: Any, tokens: jax.Array, weights: jax.Array) -> jax.Array:
        model = nnx.merge(self.trained.graphdef, params)
        logits, _ = model(tokens[:, :-1], None)
        # The training loss, per row: summed nats of each text's counted targets.
        nats, _ = jax.vmap(cross_entropy_sums)(logits, tokens[:, 1:], weights)
        return nats

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Bits per character of each text [N]: every byte after the first, predicted from
        the ones before it (the first has no context and is not counted)."""
        ids = encode_texts(self.trained, texts)
        out = np.zeros(len(ids), np.float64)
        pad = self.trained.tokenizer.pad_id or 0
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            width = max(2, max(len(x) for x in chunk))
            width = -(-width // 32) * 32  # few distinct shapes, few compilations
            tokens = np.full((len(chunk), width + 1), pad, np.int32)
            weights = np.zeros((len(chunk), width), np.float32)
            for r, x in enumerate(chunk):
                tokens[r, :len(x)] = x
                weights[r, :len(x) - 1] = 1.0
            nats = np.asarray(self._score_fn(self.trained.params, jnp.asarray(tokens),
                                             jnp.asarray(weights)))
            counts = np.maximum(weights.sum(axis=1), 1.0)
            out[start:start + len(chunk)] = [bits_per_char(n / c) for n, c in zip(nats, counts)]
        return out

    def featurize(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        """Features [N, F]; options as :func:`lmscale.transfer.featurize.featurize`."""
        return featurize(self.trained, texts, **options)

    def generate(self, prompt: str, length: int = 200, **options: Any) -> list[str]:
        """Samples; options as :func:`lmscale.generation.generate`."""
        from lmscale.generation import generate
        return generate(self.trained, prompt, length, **options)


def load_lm(workdir: str, step: int | None = None) -> LM:
    """The latest (or given) checkpoint of a training run or imported model."""
    return LM(load_trained(workdir, step))
