"""Sampling text from a trained LM, optionally with one unit held at a fixed value.

With ``neuron``/``neuron_value`` the unit's value in the last layer's state (the cell
state by default: the state the sentiment neuron is read from) is overwritten after every
character, prompt included — how Radford et al. wrote positive or negative reviews on
demand. Sampling: temperature (0 = greedy), top-k, top-p (nucleus); the padding id is
never sampled. The whole prompt-then-sample loop is one jitted ``lax.scan``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.training.restore import TrainedLM, prepared_weights


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int, top_p: float,
                  banned: int | tuple[int, ...] | None) -> jax.Array:
    """Log-probabilities [B, V] after temperature, top-k and top-p; removed entries -inf
    (``banned``: ids never sampled, e.g. padding)."""
    logits = logits.astype(jnp.float32)
    if banned is not None and banned != ():
        logits = logits.at[:, jnp.asarray(banned)].set(-jnp.inf)
    logits = logits / max(temperature, 1e-6)
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.nn.log_softmax(logits, axis=-1)


@functools.lru_cache(maxsize=32)
def _sampler(graphdef: nnx.GraphDef, length: int, temperature: float, top_k: int, top_p: float,
             neuron: int | None, value: float, state: str,
             banned: tuple[int, ...] | None) -> Callable:
    """The jitted prompt-then-sample program; cached, so that generating again with the same
    model and settings reuses the compiled program (jit caches per function object)."""
    def run(params: Any, prepared: Any, prompt: jax.Array, seed: jax.Array) -> jax.Array:
        # ``prepared``: the weights as the step reads them (``prepared_weights``), made
        # outside: XLA does not hoist that work out of the loops below, and per token it cost
        # more than the step itself (a 4096-unit mLSTM: 136 -> 17 ms a token).
        model = nnx.merge(graphdef, params)
        batch = prompt.shape[0]
        fix = ((lambda s: s) if neuron is None
               else (lambda s: model.fix_unit(s, neuron, value, state)))

        def feed(decode_state: Any, token: jax.Array) -> tuple[Any, jax.Array]:
            logits, decode_state = model.decode_step(token, decode_state, prepared)
            return fix(decode_state), logits

        def pick(logits: jax.Array, k: jax.Array) -> jax.Array:
            logp = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, banned=banned)
            return (jnp.argmax(logp, axis=-1) if temperature == 0
                    else jax.random.categorical(k, logp, axis=-1)).astype(jnp.int32)

        # One scan feeds the prompt and then the samples, so the decoder is compiled once, not
        # twice (with two scans); no [P, B, V] logits are kept, and no step is spent on the
        # last sample. Step i feeds prompt[i] while i < P, else a token sampled from the last
        # logits with key i - P (the same tokens as two scans); the last sample is drawn after
        # the scan.
        # The key is made here, not eagerly by the caller (one small program fewer a process).
        first, keys = prompt.shape[1], jax.random.split(jax.random.PRNGKey(seed), length)
        padded = jnp.pad(prompt.T, ((0, length - 1), (0, 0)))  # [P + length - 1, B]: the steps

        def step(carry: tuple[Any, jax.Array], i: jax.Array) -> tuple[tuple[Any, jax.Array], jax.Array]:
            decode_state, last = carry
            token = jax.lax.cond(i < first, lambda: padded[i],
                                 lambda: pick(last, keys[jnp.maximum(i - first, 0)]))
            decode_state, logits = feed(decode_state, token)
            return (decode_state, logits.astype(jnp.float32)), token

        decode_state = fix(model.init_decode(batch, first + length))
        shape = jax.eval_shape(feed, decode_state, padded[0])[1].shape
        logits0 = jnp.zeros(shape, jnp.float32)
        (_, last), fed = jax.lax.scan(step, (decode_state, logits0), jnp.arange(padded.shape[0]))
        tokens = jnp.concatenate([fed[first:], pick(last, keys[-1])[None]], axis=0)
        return tokens.T  # [B, length]

    return jax.jit(run)


def generate(lm: TrainedLM, prompt: str, length: int = 200, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, samples: int = 1, seed: int = 0,
             neuron: int | None = None, neuron_value: float = 0.0, neuron_state: str | None = None
             ) -> list[str]:
    """``samples`` continuations of ``prompt`` (each returned with the prompt in front).

    ``neuron_state`` None: the model's first feature state (a recurrent model's cell state).
    A model with a length limit (the transformer's ``max_len``) generates at most that many
    tokens, prompt included; its key/value cache makes each new token one step. The
    decoder's copy of the weights is kept in ``lm`` for the next call (``prepared_weights``;
    ``lm.decode_cache.clear()`` frees it).
    """
    _check_request(prompt, length=length, samples=samples, seed=seed, top_k=top_k,
                   temperature=temperature, top_p=top_p)
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise DataError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
    if top_k > lm.tokenizer.vocab_size:
        raise DataError(f"top_k {top_k} is more than the model's {lm.tokenizer.vocab_size} tokens "
                        f"(0 keeps them all)")
    model = lm.model()
    neuron_state = neuron_state or model.feature_states[0]
    if neuron is not None:
        if not hasattr(model, "fix_unit"):
            raise DataError(f"a {lm.config.model.kind} model has no state to hold a neuron in: "
                            f"a neuron needs a recurrent model (mlstm, lstm, qrnn)")
        if not 0 <= neuron < model.feature_width:
            raise DataError(f"neuron {neuron} is outside the last layer's {model.feature_width} "
                            f"units 0..{model.feature_width - 1}")
        if neuron_state not in model.feature_states:
            raise DataError(f"neuron_state must be one of {list(model.feature_states)}, got {neuron_state!r}")
    from lmscale.pretrained.preprocess import prompt_for
    ids = lm.tokenizer.encode(prompt_for(lm.derived, prompt)).astype(np.int32)  # e.g. OpenAI's framing
    if ids.size == 0:  # a word model's whitespace: no context to sample from (all-zero logits)
        raise DataError(f"the prompt {prompt!r} has no tokens for this tokenizer (a word-level "
                        f"model reads words and line ends): give a word, or \"\\n\" to start "
                        f"at the start of a line")
    unknown = getattr(lm.tokenizer, "unknown_words", lambda _: [])(prompt)  # a word vocabulary's
    if unknown:
        shown = unknown[:10] + (["..."] if len(unknown) > 10 else [])
        print(f"note: the prompt's words {shown} are not in the model's vocabulary; it reads "
              f"each as <unk>", file=sys.stderr, flush=True)
    if model.max_len is not None and len(ids) + length > model.max_len:
        if length >= model.max_len:
            raise DataError(f"length {length}: a transformer with max_len {model.max_len} "
                            f"generates at most {model.max_len - 1} tokens after a prompt")
        keep = model.max_len - length  # the prompt's last tokens: what the model can read
        print(f"note: the prompt's first {len(ids) - keep} of {len(ids)} tokens are left out: "
              f"the transformer reads at most max_len={model.max_len} tokens, {length} of them "
              f"generated", file=sys.stderr, flush=True)
        ids = ids[-keep:]
    unsampled = getattr(lm.tokenizer, "unsampled_ids", None)
    banned = (tuple(unsampled()) if unsampled is not None else
              () if lm.tokenizer.pad_id is None else (int(lm.tokenizer.pad_id),))
    fn = _sampler(lm.graphdef, length, float(temperature), int(top_k), float(top_p), neuron,
                  float(neuron_value), neuron_state, banned)
    prompts = np.tile(ids, (samples, 1))  # numpy: jnp.asarray would be a program of its own
    # uint32 seed: the key PRNGKey(seed) makes of any Python int (it keeps the low 32 bits)
    tokens = np.asarray(fn(lm.params, prepared_weights(lm), prompts, np.uint32(seed % 2**32)))
    head = lm.tokenizer.decode(ids)
    return [prompt + _continuation(lm.tokenizer, ids, row, head) for row in tokens]


def _check_request(prompt: Any, **numbers: Any) -> None:
    """One-line DataErrors for a prompt that is not a non-empty str and for counts (length,
    samples, seed, top_k) that are not integers or settings (temperature, top_p) that are
    not numbers."""
    if not isinstance(prompt, str):
        hint = ("; decode it first (prompt.decode('utf-8'))" if isinstance(prompt, (bytes, bytearray))
                else "; give one prompt per call" if isinstance(prompt, (list, tuple)) else "")
        got = "None" if prompt is None else f"{type(prompt).__name__} ({str(prompt)[:40]})"
        raise DataError(f"the prompt must be a str, got {got}{hint}")
    if not prompt:
        raise DataError("the prompt is empty: give at least one character to start from")
    for name, value in numbers.items():
        integer = not isinstance(value, bool) and isinstance(value, (int, np.integer))
        if name in ("temperature", "top_p"):
            ok = integer or isinstance(value, (float, np.floating))
            if not ok:
                raise DataError(f"{name} must be a number, got {value!r}")
        elif not integer:
            raise DataError(f"{name} must be an integer, got {value!r}")
        elif name in ("length", "samples") and value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")


def _continuation(tokenizer: Any, prompt_ids: np.ndarray, new_ids: np.ndarray,
                  head: str | None = None) -> str:
    """The text the new tokens add after the prompt: decoded together with the prompt, so
    that words and word pieces get their separating space, then the prompt's own decoding
    (``head``, decoded here if not given) cut off; the new tokens alone if the prompt does
    not decode to a prefix."""
    head = tokenizer.decode(prompt_ids) if head is None else head
    whole = tokenizer.decode(np.concatenate([prompt_ids, np.asarray(new_ids, prompt_ids.dtype)]))
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)
