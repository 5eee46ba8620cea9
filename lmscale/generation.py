"""Sampling text from a trained LM, optionally with one unit held at a fixed value.

With ``neuron``/``neuron_value`` the unit's value in the last layer's state (the cell
state by default: the state the sentiment neuron is read from) is held from the start: set
in the initial (zero) state before the first token is read, and again after every token,
prompt included — how Radford et al. wrote positive or negative reviews on demand.
Sampling: temperature (0 = greedy), top-k, top-p (nucleus); the padding id is never
sampled. The whole prompt-then-sample loop is one jitted loop, compiled once for all
values of these settings, the held unit and its value, the seed and prompts of up to a
power-of-two length (``_sampler``), and run in windows of steps so that Ctrl-C stops it.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.models.registry import untrained_positions_note
from lmscale.training.restore import TrainedLM, prepared_weights
from lmscale.training.state import DEFAULT_PRNG_IMPL


def filter_logits(logits: jax.Array, *, temperature: Any, top_k: Any, top_p: Any,
                  banned: int | tuple[int, ...] | None) -> jax.Array:
    """Log-probabilities [B, V] after temperature, top-k and top-p; removed entries -inf
    (``banned``: ids never sampled, e.g. padding). The settings may be traced scalars (one
    compiled sampler serves all their values): a traced ``top_k`` (0: keep all) is found by a
    sort, not ``lax.top_k`` (whose k is a shape); a traced ``top_p`` is always applied, which
    with 1.0 can drop tokens of (rounded) zero probability; a Python int 0 / float 1.0 skips
    the filter. Top-p keeps the most likely token(s) whatever p is."""
    logits = logits.astype(jnp.float32)
    if banned is not None and banned != ():
        logits = logits.at[:, jnp.asarray(banned)].set(-jnp.inf)
    logits = logits / jnp.maximum(temperature, jnp.float32(1e-6))
    if isinstance(top_k, (int, np.integer)):
        if top_k > 0:
            kth = jax.lax.top_k(logits, int(top_k))[0][:, -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
    else:  # the top_k-th largest (the same value lax.top_k gives), or -inf for 0: keep all
        ranked = jnp.sort(logits, axis=-1)[:, ::-1]
        kth = jax.lax.dynamic_slice_in_dim(ranked, jnp.clip(top_k - 1, 0, logits.shape[-1] - 1),
                                           1, axis=-1)
        logits = jnp.where(logits < jnp.where(top_k > 0, kth, -jnp.inf), -jnp.inf, logits)
    if not isinstance(top_p, (int, float)) or top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        # the most likely token always stays: a p that is 0 in float32 (1e-50) kept none (NaN)
        cutoff = jnp.minimum(cutoff, sorted_logits[:, :1])
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.nn.log_softmax(logits, axis=-1)


class Settings(NamedTuple):
    """The sampler's runtime values, one scalar each (NumPy: passing them makes no program),
    so that a sweep over them runs one compiled program: the prompt's length (``first``; the
    prompt array is padded to a bucket), temperature, top-k, top-p, the held unit and its
    value. Whether each is used at all (greedy, top-k, top-p, a unit held) is part of the
    program (``_sampler``'s keys)."""
    first: np.ndarray
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    neuron: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, first: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           neuron: int | None = None, value: float = 0.0) -> "Settings":
        return cls(np.int32(first), np.float32(temperature), np.int32(top_k), np.float32(top_p),
                   np.int32(neuron or 0), np.float32(value))


def prompt_bucket(tokens: int, cap: int | None = None) -> int:
    """The prompt width a program is compiled for: the next power of two from 8 (at most
    ``cap``, a transformer's room for the prompt), so prompts of other lengths reuse it."""
    width = max(8, 1 << max(tokens - 1, 0).bit_length())
    return max(tokens, min(width, cap)) if cap is not None else width


@functools.lru_cache(maxsize=32)
def _sampler(graphdef: nnx.GraphDef, length: int, greedy: bool, top_k: bool, top_p: bool,
             hold: bool, state: str | None, banned: tuple[int, ...] | int | None) -> Callable:
    """The jitted prompt-then-sample program; cached, so that generating again with the same
    model and kind of settings reuses the compiled program (jit caches per function object).
    Its keys are what changes the program's shapes or work: the length, greedy or sampled,
    whether top-k / top-p filter and a unit (of ``state``) is held; their values are the
    ``Settings`` argument, the prompt's length included (the prompt's width is its bucket).

    One loop feeds the prompt and then the samples, so the decoder is compiled once, not
    twice (with two loops); no [P, B, V] logits are kept, and no step is spent on the last
    sample. Step i feeds prompt[i] while i < first, else a token sampled from the last logits
    with key i - first; the last sample is drawn after the loop. The loop runs first +
    length - 1 steps, a runtime count (the prompt's padding is never fed), in windows of
    steps [start, stop), runtime values too: one call per window of the same program, which
    takes the carry (keys [length, 2], decoder state, last logits, fed tokens [steps, B])
    the last call returned, or makes it where start is 0 (``empty_carry``: zeros of its
    shapes, not read). Between windows Ctrl-C is taken and progress shown (one call for the
    whole loop made a long generation uninterruptible). Returns the carry and the last
    sample drawn from its logits (the sample after the loop, once the last window ran)."""
    def begin(params: Any, prompt: jax.Array, seed: jax.Array, settings: Settings) -> Any:
        model, fix = _held(graphdef, params, settings, hold, state)
        batch, steps = prompt.shape[0], prompt.shape[1] + length - 1  # the most: a full bucket
        decode_state = fix(model.init_decode(batch, steps))  # the last sample is never fed
        shape = jax.eval_shape(lambda s, t: model.decode_step(t, s)[0], decode_state,
                               prompt[:, 0]).shape
        # The keys are made here, not eagerly by the caller (one small program fewer).
        return (jax.random.split(jax.random.PRNGKey(seed), length), decode_state,
                jnp.zeros(shape, jnp.float32), jnp.zeros((steps, batch), jnp.int32))

    def pick(logits: jax.Array, k: jax.Array, settings: Settings) -> jax.Array:
        logp = filter_logits(logits, temperature=settings.temperature,
                             top_k=settings.top_k if top_k else 0,
                             top_p=settings.top_p if top_p else 1.0, banned=banned)
        return (jnp.argmax(logp, axis=-1) if greedy
                else jax.random.categorical(k, logp, axis=-1)).astype(jnp.int32)

    def run(params: Any, prepared: Any, prompt: jax.Array, seed: jax.Array, settings: Settings,
            carry: Any, start: jax.Array, stop: jax.Array) -> tuple[Any, jax.Array]:
        # ``prepared``: the weights as the step reads them (``prepared_weights``), made
        # outside: XLA does not hoist that work out of the loop below, and per token it cost
        # more than the step itself (a 4096-unit mLSTM: 136 -> 17 ms a token).
        model, fix = _held(graphdef, params, settings, hold, state)
        keys, decode_state, last, fed = jax.lax.cond(
            start == 0, lambda: begin(params, prompt, seed, settings), lambda: carry)
        first = settings.first
        padded = jnp.pad(prompt.T, ((0, length - 1), (0, 0)))  # [steps, B]

        def step(i: jax.Array, loop: tuple[Any, jax.Array, jax.Array]
                 ) -> tuple[Any, jax.Array, jax.Array]:
            decode_state, last, fed = loop
            token = jax.lax.cond(i < first, lambda: padded[i],
                                 lambda: pick(last, keys[jnp.maximum(i - first, 0)], settings))
            logits, decode_state = model.decode_step(token, decode_state, prepared)
            return fix(decode_state), logits.astype(jnp.float32), fed.at[i].set(token)

        decode_state, last, fed = jax.lax.fori_loop(start, stop, step, (decode_state, last, fed))
        return (keys, decode_state, last, fed), pick(last, keys[-1], settings)

    shapes: dict[tuple[int, ...], Any] = {}  # the carry's, by the prompts' [B, width]

    def empty_carry(params: Any, prompt: np.ndarray, seed: np.uint32, settings: Settings) -> Any:
        if prompt.shape not in shapes:  # traced once (no program), not at every call
            shapes[prompt.shape] = jax.eval_shape(begin, params, prompt, seed, settings)
        return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes[prompt.shape])

    program = jax.jit(run, donate_argnums=5)
    program.empty_carry = empty_carry
    return program


def _held(graphdef: nnx.GraphDef, params: Any, settings: Settings, hold: bool,
          state: str | None) -> tuple[Any, Callable]:
    """The model, and the function that sets the held unit in a decoder state (or returns
    the state as it is when no unit is held)."""
    model = nnx.merge(graphdef, params)
    if not hold:
        return model, lambda s: s
    return model, lambda s: model.fix_unit(s, settings.neuron, settings.value, state)


# The first window's steps; later windows are sized from the measured rate to take about
# WINDOW_SECONDS each (Ctrl-C waits at most that long; a window's call costs ~0.1 ms).
FIRST_WINDOW, WINDOW_SECONDS = 64, 0.25


def _sample(fn: Callable, lm: TrainedLM, prompts: np.ndarray, seed: int, settings: Settings,
            length: int, progress: bool) -> np.ndarray:
    """Runs ``fn``'s loop of ``settings.first + length - 1`` steps in windows; [B, length]
    tokens. ``progress``: a bar on stderr for a generation that takes more than a second."""
    params, prepared = lm.params, prepared_weights(lm)
    seed = np.uint32(seed)  # the key PRNGKey(seed) makes (_check_request keeps it in 32 bits)
    carry = fn.empty_carry(params, prompts, seed, settings)
    first = int(settings.first)
    total, done, window = first + length - 1, 0, FIRST_WINDOW
    with tqdm.tqdm(total=length, unit="token", delay=1.0, disable=not progress,
                   file=sys.stderr, leave=False) as bar:
        while True:
            stop = min(done + window, total)
            began = time.perf_counter()
            carry, last = fn(params, prepared, prompts, seed, settings, carry, np.int32(done),
                             np.int32(stop))
            last = np.asarray(last)  # waits for the window
            seconds = time.perf_counter() - began
            bar.update(max(stop - max(done, first), 0))  # step i >= first samples a token
            if done > 0:  # the first window's time holds the compile
                window = max(1, int((stop - done) * WINDOW_SECONDS / max(seconds, 1e-6)))
            done = stop
            if done >= total:
                break
        bar.update(length - bar.n)
    fed = np.asarray(carry[3])[first:first + length - 1]  # [length - 1, B]
    return np.concatenate([fed, last[None]], axis=0).T


def generate(lm: TrainedLM, prompt: str, length: int = 200, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, samples: int = 1, seed: int = 0,
             neuron: int | None = None, neuron_value: float = 0.0, neuron_state: str | None = None,
             progress: bool = False, read: dict[str, Any] | None = None) -> list[str]:
    """``samples`` continuations of ``prompt`` (each returned with the prompt in front).

    ``seed``: 0 <= seed < 2**32 (the key's 32 bits; others would repeat these samples).
    ``neuron``: held from the start, in the initial state and after every token, prompt
    included. ``neuron_state`` None: the model's first feature state (a recurrent model's
    cell state); a QRNN holds only its cell state (its hidden state is not carried).
    A model with a length limit (the transformer's ``max_len``) reads at most that many
    tokens: the prompt and all but the last generated one (``length`` <= max_len, the
    prompt's first tokens left out to fit); its key/value cache makes each new token one
    step. The decoder's copy of the weights is kept in ``lm`` for the next call
    (``prepared_weights``; ``lm.decode_cache.clear()`` frees it). One compiled program
    serves every temperature, top-k, top-p, neuron and neuron value, seed and prompt length
    (up to a power of two) of the same length, samples and kind of settings (greedy or not,
    filters on or off).
    The loop runs in windows of about a quarter second: Ctrl-C (KeyboardInterrupt) stops it
    within one; ``progress``: a bar on stderr once it has taken a second. ``read``: a dict
    given is filled with what the model read of the prompt: {"prompt_tokens": how many,
    "prompt_read": their text} (a transformer reads only its last max_len - length + 1 tokens).
    """
    _check_request(prompt, length=length, samples=samples, seed=seed, top_k=top_k,
                   temperature=temperature, top_p=top_p,
                   **({} if neuron is None else {"neuron_value": neuron_value}))
    for bad, what in ((temperature < 0, f"temperature must be >= 0 (0: greedy), got {temperature!r}"),
                      (not 0 < top_p <= 1, f"top_p must be in (0, 1] (1: no filter), got {top_p!r}"),
                      (top_k < 0, f"top_k must be >= 0 (0: no filter), got {top_k!r}"),
                      (neuron is None and bool(neuron_value),
                       f"neuron_value={neuron_value!r} holds no unit: give neuron=<the unit's "
                       f"index> too")):
        if bad:
            raise DataError(what)
    if top_k > lm.tokenizer.vocab_size:
        raise DataError(f"top_k {top_k} is more than the model's {lm.tokenizer.vocab_size} tokens "
                        f"(0 keeps them all)")
    model = lm.model()
    neuron_state = neuron_state or model.feature_states[0]
    if neuron is not None:
        if not hasattr(model, "fix_unit"):
            raise DataError(f"a {lm.config.model.kind} model has no state to hold a neuron in "
                            f"(its model defines no fix_unit): a neuron needs a model that "
                            f"carries its state, as mlstm, lstm and qrnn do")
        if isinstance(neuron, (bool, np.bool_)) or not isinstance(neuron, (int, np.integer)):
            raise DataError(f"neuron must be a unit's index (an integer), got {neuron!r}")
        if not 0 <= neuron < model.feature_width:
            raise DataError(f"neuron {neuron} is outside the last layer's {model.feature_width} "
                            f"units 0..{model.feature_width - 1}")
        holdable = holdable_states(model)
        if neuron_state not in holdable:
            raise DataError(f"neuron_state must be one of {list(holdable)} for a "
                            f"{lm.config.model.kind} model (the states a neuron can be held "
                            f"in), got {neuron_state!r}")
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
    if model.max_len is not None and len(ids) + length - 1 > model.max_len:
        if length > model.max_len:
            raise DataError(f"length {length}: a transformer with max_len {model.max_len} "
                            f"generates at most {model.max_len} tokens after a prompt")
        keep = model.max_len - length + 1  # the prompt's last tokens: what the model can read
        print(f"note: the prompt's first {len(ids) - keep} of {len(ids)} tokens are left out: "
              f"the transformer reads at most max_len={model.max_len} tokens, {length - 1} of them "
              f"generated", file=sys.stderr, flush=True)
        ids = ids[-keep:]
    note = untrained_positions_note(lm.config, len(ids) + length - 1,
                                    f"the prompt's {len(ids)} token{'s' * (len(ids) != 1)} and "
                                    f"the {length} generated run")
    if note:
        print(note, file=sys.stderr, flush=True)
    unsampled = getattr(lm.tokenizer, "unsampled_ids", None)
    banned = (tuple(unsampled()) if unsampled is not None else
              () if lm.tokenizer.pad_id is None else (int(lm.tokenizer.pad_id),))
    _check_memory(length, samples)
    hold = neuron is not None
    fn = _sampler(lm.graphdef, length, temperature == 0, top_k > 0, top_p < 1.0, hold,
                  neuron_state if hold else None, banned)
    width = prompt_bucket(len(ids), None if model.max_len is None else model.max_len - length + 1)
    prompts = np.zeros((samples, width), np.int32)  # numpy: jnp.asarray would be a program
    prompts[:, :len(ids)] = ids
    settings = Settings.of(len(ids), temperature, top_k, top_p, neuron, neuron_value)
    # threefry2x32's keys: a seed gives its samples whatever JAX_DEFAULT_PRNG_IMPL says
    with jax.default_prng_impl(DEFAULT_PRNG_IMPL):
        tokens = _sample(fn, lm, prompts, seed, settings, length, progress)
    head = lm.tokenizer.decode(ids)
    if read is not None:
        read.update(prompt_tokens=len(ids), prompt_read=head)
    return [prompt + _continuation(lm.tokenizer, ids, row, head, prompt) for row in tokens]


def _check_request(prompt: Any, **numbers: Any) -> None:
    """One-line DataErrors for a prompt that is not a non-empty str and for counts (length,
    samples, seed, top_k) that are not integers or settings (temperature, top_p,
    neuron_value) that are not finite numbers (NaN would sample NUL bytes and write NaN,
    invalid JSON, into samples.json)."""
    if not isinstance(prompt, str):
        hint = ("; decode it first (prompt.decode('utf-8'))" if isinstance(prompt, (bytes, bytearray))
                else "; give one prompt per call" if isinstance(prompt, (list, tuple)) else "")
        got = "None" if prompt is None else f"{type(prompt).__name__} ({str(prompt)[:40]})"
        raise DataError(f"the prompt must be a str, got {got}{hint}")
    if not prompt:
        raise DataError("the prompt is empty: give at least one character to start from")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: e.g. a byte a terminal could not decode
        char = ord(prompt[e.start])
        what = (f"byte 0x{char - 0xDC00:02x}, which the terminal's encoding could not decode"
                if 0xDC80 <= char <= 0xDCFF else f"a lone surrogate U+{char:04X}")
        raise DataError(f"the prompt is not valid UTF-8 at character {e.start}: {what}") from None
    for name, value in numbers.items():
        integer = not isinstance(value, bool) and isinstance(value, (int, np.integer))
        if name in ("temperature", "top_p", "neuron_value"):
            ok = integer or isinstance(value, (float, np.floating))
            if not ok:
                raise DataError(f"{name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise DataError(f"{name} must be a finite number, got {float(value)}")
        elif not integer:
            raise DataError(f"{name} must be an integer, got {value!r}")
        elif name in ("length", "samples") and value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")
        elif name == "length" and value > 2**30:
            raise DataError(f"length must be at most 2**30 (the sampler counts its steps in "
                            f"int32), got {value}")
        elif name == "seed" and not 0 <= value < 2**32:
            raise DataError(f"seed must be in [0, 2**32) (the key's 32 bits), got {value}")


def holdable_states(model: Any) -> tuple[str, ...]:
    """The states a unit of ``model``'s last layer can be held in (``fix_unit``'s ``which``):
    its layer's ``holdable_states`` (a QRNN carries only its cell state), else its
    ``feature_states``."""
    layers = getattr(model, "layers", None)
    return getattr(layers[-1] if layers else None, "holdable_states", model.feature_states)


# Bytes a generated token takes: once (the program's [length] keys: 12, measured with XLA's
# memory analysis) and per sample (its [length, samples] token buffers: 12, measured; the
# tokens in NumPy and their text after: about 8). A length of 10**6 with 1 sample: ~32 MB.
_BYTES_PER_TOKEN, _BYTES_PER_SAMPLE_TOKEN = 12, 20


def _check_memory(length: int, samples: int) -> None:
    """A one-line DataError where the buffers of ``length`` tokens (allocated up front)
    would need more than the memory available (the host's, and a GPU's where it says)."""
    need = length * (_BYTES_PER_TOKEN + _BYTES_PER_SAMPLE_TOKEN * samples)
    free = _available_memory()
    if free is not None and need > free:
        raise DataError(f"length {length} with {samples} sample(s) needs about "
                        f"{need / 2**30:.1f} GiB for its token buffers, more than the "
                        f"{free / 2**30:.1f} GiB available: generate fewer tokens")


def _available_memory() -> int | None:
    """Bytes free for new buffers: the host's (MemAvailable, else its free pages), at most
    the first device's free memory where it reports it (a GPU); None if unknown."""
    from lmscale.training.fits import available_host_bytes
    free = available_host_bytes(swap=False)
    if free is None:  # not Linux
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            pass
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        device = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        free = device if free is None else min(free, device)
    return free


def _continuation(tokenizer: Any, prompt_ids: np.ndarray, new_ids: np.ndarray,
                  head: str | None = None, prompt: str | None = None) -> str:
    """The text the new tokens add after the prompt: decoded together with the prompt, so
    that words and word pieces get their separating space, then the prompt's own decoding
    (``head``, decoded here if not given) cut off; the new tokens alone if the prompt does
    not decode to a prefix. ``prompt``: the text as given; where it ends in whitespace its
    tokens dropped (a word tokenizer's "the king "), that whitespace separates the new words
    and the tokenizer's separating space is left out (not "the king  like")."""
    head = tokenizer.decode(prompt_ids) if head is None else head
    whole = tokenizer.decode(np.concatenate([prompt_ids, np.asarray(new_ids, prompt_ids.dtype)]))
    text = whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)
    if (prompt is not None and prompt[-1:].isspace() and not head[-1:].isspace()
            and text.startswith(" ")):
        text = text[1:]
    return text
