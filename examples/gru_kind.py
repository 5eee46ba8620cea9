"""A model family of your own: a GRU language model, registered as ``model.kind="gru"``.

An example of a kind that lives outside the package (lmscale/models/registry.py has the
interface). Every tool finds it once its module is importable and named:

    PYTHONPATH=examples LMSCALE_MODEL_MODULES=gru_kind python -m lmscale.train \
        --config=configs/quickstart.py --config.model.kind=gru --workdir=runs/gru
    PYTHONPATH=examples LMSCALE_MODEL_MODULES=gru_kind python -m lmscale.generate \
        --workdir=runs/gru --length=200

(or, from a package of your own, an entry point in its pyproject.toml:
``[project.entry-points."lmscale.models"] gru = "my_package.gru_kind"``; in a notebook,
``import gru_kind`` before ``lmscale.load_lm``). It reads the existing config fields
``model.embed``, ``hidden``, ``layers`` and ``dropout`` (between layers), and one of its
own, ``model.gru_update_bias`` (added to the update gate's initial bias: > 0 keeps more of h;
a config file adds it, ``c.model.gru_update_bias = 1.0`` before ``c.lock()``); its carry is one
h [B, H] per layer; its one feature state is "hidden" (transfer, and a neuron held while
generating). tests/examples/test_gru_kind.py checks it against NumPy and runs the tools on it.

GRU (PyTorch's convention), per layer, x [B, I], h [B, H]:
  r = sigmoid(x Wi_r + bi_r + h Wh_r + bh_r)
  z = sigmoid(x Wi_z + bi_z + h Wh_z + bh_z)
  n = tanh(x Wi_n + bi_n + r * (h Wh_n + bh_n))
  h' = (1 - z) * n + z * h
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.registry import ModelKind, register


def _uniform(scale):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class GRULayer(nnx.Module):
    def __init__(self, in_features: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs,
                 update_bias: float = 0.0):
        s = 1.0 / hidden ** 0.5
        self.hidden, self.dtype = hidden, dtype
        self.wi = nnx.Param(_uniform(s)(rngs.params(), (in_features, 3 * hidden)))
        self.wh = nnx.Param(_uniform(s)(rngs.params(), (hidden, 3 * hidden)))
        bias = _uniform(s)(rngs.params(), (3 * hidden,))  # z's part + update_bias: keeps h
        self.bi = nnx.Param(bias.at[hidden:2 * hidden].add(update_bias))
        self.bh = nnx.Param(_uniform(s)(rngs.params(), (3 * hidden,)))

    def scan(self, x_tm: jax.Array, h0: jax.Array, resets_tm: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """x_tm [T, B, I] -> (hs float32 [T, B, H], h_T)."""
        dt, H = self.dtype, self.hidden
        gi = jnp.einsum("tbi,ig->tbg", x_tm.astype(dt), self.wi[...].astype(dt)
                        ).astype(jnp.float32) + self.bi[...]
        wh, bh = self.wh[...].astype(dt), self.bh[...]
        if resets_tm is None:
            resets_tm = jnp.zeros(x_tm.shape[:2], bool)

        def step(h, inp):
            g, reset = inp
            h = jnp.where(reset[:, None], 0.0, h)
            gh = jnp.dot(h.astype(dt), wh).astype(jnp.float32) + bh
            r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1.0 - z) * n + z * h
            return h, h

        h_last, hs = jax.lax.scan(step, h0.astype(jnp.float32), (gi, resets_tm))
        return hs, h_last


class GRULM(nnx.Module):
    feature_states = ("hidden",)
    max_len = None

    def __init__(self, *, vocab_size: int, embed: int, hidden: int, layers: int,
                 dropout: float = 0.0, update_bias: float = 0.0, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.vocab_size, self.hidden, self.dropout, self.dtype = vocab_size, hidden, float(dropout), dtype
        self.embedding = nnx.Embed(vocab_size, embed, dtype=dtype,
                                   embedding_init=_uniform(0.1), rngs=rngs)
        self.layers = nnx.List([GRULayer(embed if l == 0 else hidden, hidden, dtype=dtype,
                                         rngs=rngs, update_bias=update_bias)
                                for l in range(layers)])
        self.decoder = nnx.Linear(hidden, vocab_size, dtype=dtype, kernel_init=_uniform(0.1),
                                  bias_init=jax.nn.initializers.zeros, rngs=rngs)

    @property
    def feature_width(self) -> int:
        return self.hidden

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def initial_carry(self, batch_size: int):
        return tuple(jnp.zeros((batch_size, self.hidden), jnp.float32) for _ in self.layers)

    def _run(self, tokens, carry, resets, dropout_key):
        if carry is None:
            carry = self.initial_carry(tokens.shape[0])
        x = self.embedding(jnp.swapaxes(tokens, 0, 1))  # [T, B, E]
        resets_tm = None if resets is None else jnp.swapaxes(resets, 0, 1)
        new_carry, all_hs = [], []
        for l, (layer, h0) in enumerate(zip(self.layers, carry)):
            x, h_last = layer.scan(x, h0, resets_tm)
            new_carry.append(h_last)
            all_hs.append(x)
            if l + 1 < len(self.layers) and dropout_key is not None and self.dropout > 0:
                keep = 1.0 - self.dropout
                k = jnp.asarray(dropout_key)
                if k.ndim == 1:
                    mask = jax.random.bernoulli(jax.random.fold_in(k, l), keep, x.shape)
                else:  # one key per row
                    mask = jnp.swapaxes(jax.vmap(lambda kk: jax.random.bernoulli(
                        jax.random.fold_in(kk, l), keep, (x.shape[0], x.shape[2])))(k), 0, 1)
                x = jnp.where(mask, x / keep, 0.0)
        return x, tuple(new_carry), all_hs

    def _logits(self, hs_tm):
        logits = jnp.einsum("tbh,hv->btv", hs_tm.astype(self.dtype),
                            self.decoder.kernel[...].astype(self.dtype)).astype(jnp.float32)
        return logits + self.decoder.bias[...]

    def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
        hs, new_carry, _ = self._run(tokens, carry, resets, dropout_key)
        return self._logits(hs), new_carry

    def features(self, tokens, carry, resets=None, prepared=None, *, dropout_key=None, step_key=None):
        _, new_carry, all_hs = self._run(tokens, carry, resets, dropout_key)
        return {"hidden": jnp.stack([jnp.swapaxes(h, 0, 1) for h in all_hs]), "carry": new_carry}

    def init_decode(self, batch_size: int, max_length: int = 0):
        return self.initial_carry(batch_size)

    def prepare_decode(self):
        return None

    def decode_step(self, tokens, state, prepared=None):
        hs, new_state, _ = self._run(tokens[:, None], state, None, None)
        return self._logits(hs)[:, 0], new_state

    def fix_unit(self, state, unit: int, value: float, which: str):
        if which != "hidden":
            raise ValueError(f"which must be 'hidden', got {which!r}")
        *lower, last = state
        return (*lower, last.at[:, unit].set(value))


def _build(m, vocab_size, *, rngs, dtype=jnp.float32):
    return GRULM(vocab_size=vocab_size, embed=int(m.embed), hidden=int(m.hidden),
                 layers=int(m.layers), dropout=float(m.dropout),
                 update_bias=float(m.get("gru_update_bias", 0.0)), dtype=dtype, rngs=rngs)


def _validate(m, train_config):
    for name in ("embed", "hidden", "layers"):
        if not isinstance(m[name], int) or m[name] < 1:
            raise ValueError(f"model.{name} must be a positive integer, got {m[name]!r}")
    if not 0.0 <= m.dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {m.dropout}")


def _flops(m, vocab_size, seq_len=1):
    e, h, n = int(m.embed), int(m.hidden), int(m.layers)
    macs = h * vocab_size + sum((e if l == 0 else h) * 3 * h + h * 3 * h for l in range(n))
    return 2 * macs


def _describe(m):
    return f"gru hidden {m.hidden} embed {m.embed} layers {m.layers}"


# settings: the kind's own config fields and their defaults (a config file adds them before
# c.lock(); config.json records them; other kinds' runs are told they are unused).
KIND = register(ModelKind(name="gru", fields=("embed", "hidden", "layers"), build=_build,
                          validate=_validate, flops_per_token=_flops, describe=_describe,
                          settings={"gru_update_bias": 0.0}))
