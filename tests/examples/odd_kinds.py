"""Kinds of one's own unlike the built-in ones, for tests/examples/test_odd_kinds.py.

* ``test_counter``: a tanh RNN whose carry is a tuple (h float32 [B, H], n int32 [B]: the
  tokens read since the last reset, which the recurrence reads as an input); its
  ``features`` unpacks the carry it is given (it takes no None).
* ``test_conv``: a stateless causal convolution over the last ``WINDOW`` tokens (carry
  ``()``) without a length limit (``max_len`` None): a text's features need its whole text
  in one call, as the transformer's do.
* ``test_wide_logits``, ``test_no_carry``, ``test_float_count``: broken kinds (logits one
  wider than the vocabulary; no ``initial_carry``; a new carry whose count is float32).
* ``test_blocks``: ``test_conv`` reading whole blocks of 4 tokens only (a length it requires).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lmscale.models.registry import ModelKind, register

WINDOW = 4  # tokens test_conv reads: its own and the 3 before it


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class _Base(nnx.Module):
    """Embedding [V, E], decoder [H, V]; the kinds below define ``_run``."""
    max_len = None
    feature_states = ("hidden",)

    def __init__(self, vocab: int, embed: int, hidden: int, rngs: nnx.Rngs):
        self.hidden = hidden
        self.embedding = nnx.Embed(vocab, embed, embedding_init=_uniform(0.1), rngs=rngs)
        self.decoder = nnx.Linear(hidden, vocab, kernel_init=_uniform(0.1), rngs=rngs)

    num_layers = 1

    @property
    def feature_width(self) -> int:
        return self.hidden

    def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
        hs, new = self._run(tokens, carry, resets)
        return self.decoder(hs), new

    def features(self, tokens, carry, resets=None, prepared=None, *, dropout_key=None,
                 step_key=None) -> dict[str, Any]:
        hs, new = self._run(tokens, carry, resets)
        return {"hidden": hs[None], "carry": new}


class CounterRNN(_Base):
    def __init__(self, vocab: int, embed: int, hidden: int, rngs: nnx.Rngs):
        super().__init__(vocab, embed, hidden, rngs)
        self.wx = nnx.Param(_uniform(embed ** -0.5)(rngs.params(), (embed, hidden)))
        self.wh = nnx.Param(_uniform(hidden ** -0.5)(rngs.params(), (hidden, hidden)))
        self.wn = nnx.Param(_uniform(1.0)(rngs.params(), (hidden,)))

    def initial_carry(self, batch_size: int):
        return jnp.zeros((batch_size, self.hidden)), jnp.zeros((batch_size,), jnp.int32)

    def _run(self, tokens, carry, resets):
        h, n = carry  # a tuple, as initial_carry gives
        x = jnp.einsum("bte,eh->tbh", self.embedding(tokens), self.wx[...])
        resets = jnp.zeros(tokens.shape, bool) if resets is None else resets

        def step(state, inputs):
            (h, n), (x, reset) = state, inputs
            h, n = jnp.where(reset[:, None], 0.0, h), jnp.where(reset, 0, n)
            h = jnp.tanh(x + h @ self.wh[...] + jnp.minimum(n, 8)[:, None] / 8 * self.wn[...])
            return (h, n + 1), h

        new, hs = jax.lax.scan(step, (h, n), (x, resets.T))
        return jnp.swapaxes(hs, 0, 1), new

    def init_decode(self, batch_size: int, max_length: int = 0):
        return self.initial_carry(batch_size)

    def decode_step(self, tokens, state, prepared=None):
        hs, new = self._run(tokens[:, None], state, None)
        return self.decoder(hs[:, 0]), new

    def fix_unit(self, state, unit, value, which):
        h, n = state
        return h.at[:, unit].set(value), n


class CausalConv(_Base):
    def __init__(self, vocab: int, embed: int, hidden: int, rngs: nnx.Rngs):
        super().__init__(vocab, embed, hidden, rngs)
        self.w = nnx.Param(_uniform((WINDOW * embed) ** -0.5)(rngs.params(),
                                                             (WINDOW, embed, hidden)))

    def initial_carry(self, batch_size: int):
        return ()

    def _conv(self, x, segment):
        """x [B, T, E], segment [B, T] (a token reads only its own segment) -> [B, T, H]."""
        out = 0.0
        for k in range(WINDOW):  # tap k reads the token k places back
            xk = jnp.pad(x, ((0, 0), (k, 0), (0, 0)))[:, :x.shape[1]]
            sk = jnp.pad(segment, ((0, 0), (k, 0)), constant_values=-1)[:, :x.shape[1]]
            out = out + jnp.where((sk == segment)[..., None], xk, 0.0) @ self.w[...][k]
        return jnp.tanh(out)

    def _run(self, tokens, carry, resets):
        segment = (jnp.zeros(tokens.shape, jnp.int32) if resets is None
                   else jnp.cumsum(resets.astype(jnp.int32), axis=1))
        return self._conv(self.embedding(tokens), segment), ()

    def init_decode(self, batch_size: int, max_length: int = 0):
        """The last WINDOW - 1 tokens and how many of them are real ([B, WINDOW - 1], [B])."""
        return (jnp.zeros((batch_size, WINDOW - 1), jnp.int32),
                jnp.zeros((batch_size,), jnp.int32))

    def decode_step(self, tokens, state, prepared=None):
        before, count = state
        window = jnp.concatenate([before, tokens[:, None]], axis=1)  # [B, WINDOW]
        segment = (jnp.arange(WINDOW)[None] >= WINDOW - 1 - count[:, None]).astype(jnp.int32)
        hs = self._conv(self.embedding(window), segment)  # padding: another segment
        return self.decoder(hs[:, -1]), (window[:, 1:], jnp.minimum(count + 1, WINDOW - 1))


class WideLogits(CausalConv):
    def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
        logits, new = super().__call__(tokens, carry, resets)
        return jnp.concatenate([logits, logits[..., :1]], axis=-1), new


class Blocks(CausalConv):
    def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
        if tokens.shape[1] % 4:
            raise ValueError(f"test_blocks reads blocks of 4 tokens, got {tokens.shape[1]}")
        return super().__call__(tokens, carry, resets)


class NoCarry(CausalConv):
    initial_carry = None


class FloatCount(CounterRNN):
    def __call__(self, tokens, carry, resets=None, *, dropout_key=None):
        logits, (h, n) = super().__call__(tokens, carry, resets)
        return logits, (h, n.astype(jnp.float32))


def _register(name: str, module: type) -> None:
    def build(m, vocab, *, rngs, dtype=jnp.float32):
        return module(vocab, int(m.embed), int(m.hidden), rngs)

    def validate(m, t):
        if m.layers != 1:
            raise ValueError(f"model.layers must be 1 for {name}, got {m.layers}")

    def flops(m, vocab, seq_len=1):
        return 2 * int(m.hidden) * (vocab + int(m.hidden) + WINDOW * int(m.embed))

    register(ModelKind(name=name, fields=("embed", "hidden", "layers"), build=build,
                       validate=validate, flops_per_token=flops,
                       describe=lambda m: f"{name} hidden {m.hidden} embed {m.embed}"))


for _name, _module in (("test_counter", CounterRNN), ("test_conv", CausalConv),
                       ("test_wide_logits", WideLogits), ("test_no_carry", NoCarry),
                       ("test_float_count", FloatCount), ("test_blocks", Blocks)):
    _register(_name, _module)
