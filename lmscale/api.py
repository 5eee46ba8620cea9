"""The notebook API: load a trained LM and score, featurize or generate text with it.

    import lmscale
    lm = lmscale.load_lm("runs/sst_lm")
    lm.score(["a fine film", "zxqv"])          # bits per character of each text
    lm.featurize(texts)                         # [N, F] final states (mLSTM: cell)
    lm.generate("This movie", length=100, neuron=lm_neuron, neuron_value=1.0)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmscale.data.errors import DataError
from lmscale.compiled_programs import release_near_map_limit
from lmscale.messages import check_call_arguments
from lmscale.models.registry import trained_length
from lmscale.training import mesh as mesh_lib
from lmscale.training.loss import bits_per_char
from lmscale.training.restore import TrainedLM, load_trained
from lmscale.training.state import zero_carry
from lmscale.transfer.featurize import encode_texts, featurize, positive_int

# Bytes of one call's V-wide float32 logits ([rows, t, V]) that scoring a model with a full
# softmax allows itself: the chunk length (recurrent) or rows per call (length-limited) is
# chosen to keep under it. A word vocabulary of 267,735 in 32 rows of 128 was 4.4 GB an array.
SCORE_LOGITS_BYTES = 512 * 2**20
CHUNK_STEPS = 128  # the inputs read a call by a recurrent LM (fewer only for a wide softmax)
MIN_CHUNK_STEPS = 8


class LM:
    """A trained language model with a small interface: lists of texts in, NumPy arrays
    (``score``, ``featurize``) or texts (``generate``) out."""

    def __init__(self, trained: TrainedLM) -> None:
        self.trained = trained

    @property
    def config(self) -> Any:
        return self.trained.config

    @property
    def derived(self) -> dict[str, Any]:
        """The run's derived values (config.json's ``derived``): e.g. ``preprocess``."""
        return self.trained.derived

    @property
    def decode_cache(self) -> dict[str, Any]:
        """The weights as generation's decoder reads them, kept for the next call (made again
        when the weights change); ``lm.decode_cache.clear()`` frees them."""
        return self.trained.decode_cache

    @property
    def hidden(self) -> int:
        """Width of the features (the last layer's state or output)."""
        return self.trained.model().feature_width

    def _targets(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A text's token ids as the model reads them, and which of them are scored: the
        user's text only (not an imported model's framing); its first token only when framing
        gives it context."""
        from lmscale.pretrained.preprocess import framing_for
        tok = self.trained.tokenizer
        before, after = framing_for(self.trained.derived)
        lengths = tok.byte_lengths()[ids]
        ends = np.cumsum(lengths)  # bytes up to and including each token
        total = ends[-1] if len(ends) else 0  # a word model's <unk>: a fraction
        scored = (ends - lengths >= len(before)) & (ends <= total - len(after))
        scored[0] = False  # nothing before it to predict it from
        return ids, scored

    def score(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Bits per character of each text [N]: the bits of each of its tokens given the ones
        before it, over the UTF-8 bytes those tokens stand for. The text's first token has no
        context and is not counted (unless the model's preprocessing frames the text, as an
        imported OpenAI model's does; the framing itself is never counted). The texts are read
        packed in ``batch_size`` rows (as ``featurize``): end to end by a recurrent LM; by a
        model with a length limit (``max_len``) in rows of a few widths, a long text in
        consecutive windows of the length it was trained at (``registry.trained_length``, else
        ``max_len``), each read without the tokens before it.
        NaN for a text with no counted byte: a single token, unframed, or a word model's
        one-word line (``"good\\n"``: its only target, ``<eos>``, stands for no byte of it)."""
        batch_size = positive_int("batch_size", batch_size)
        # A model with a length limit reads windows of the length it was trained at (a
        # transformer's learned positions past train.seq_len are never trained).
        limit = trained_length(self.trained.config) or self.trained.model().max_len
        targets = [self._targets(ids) for ids in encode_texts(self.trained, texts)]  # read once
        table = self.trained.tokenizer.byte_lengths()
        byte_totals = np.array([table[ids[scored]].sum() for ids, scored in targets], np.float64)
        if limit is None:
            nats = self._packed_nats(targets, batch_size)
        else:
            windows, owner = [], []  # limit inputs and their targets: limit + 1 tokens
            for i, (ids, scored) in enumerate(targets):
                for start in range(0, max(len(ids) - 1, 1), limit):
                    flags = scored[start:start + limit + 1].copy()
                    flags[0] = False  # the window's first token: context only
                    windows.append((ids[start:start + limit + 1], flags))
                    owner.append(i)
            nats = np.zeros(len(targets), np.float64)
            np.add.at(nats, np.asarray(owner, np.int64), self._bins_nats(windows, batch_size, limit))
        # A text with no scored token (one token, unframed) has no bits per character: NaN,
        # not the 0.0 of dividing nothing by one byte.
        return np.array([bits_per_char(n, b) if b > 0 else np.nan
                         for n, b in zip(nats, byte_totals)])

    def _packed_nats(self, targets: list[tuple[np.ndarray, np.ndarray]], rows: int
                     ) -> np.ndarray:
        """Summed nats of each text's scored tokens, the texts packed into rows (``packing``:
        the state reset at each text's start); chunks of ``_chunk_steps`` inputs (128, fewer
        for a wide full softmax), the state carried."""
        from lmscale.transfer import packing
        ids = [x for x, _ in targets]
        rows = packing.rows_for(rows, len(ids), self.trained.mesh.size)
        plan = packing.pack([len(x) for x in ids], rows)
        counted = _counted_lookup(targets, plan)
        t, pad = self._chunk_steps(rows), self.trained.tokenizer.pad_id or 0
        slots = packing.ends_per_chunk(plan, t) + 1  # t + 1 columns hold one more end
        carry = zero_carry(self.trained.model().initial_carry, rows,
                           mesh_lib.batch_sharded(self.trained.mesh))
        nats = np.zeros(len(ids), np.float64)
        for offset in range(0, plan.width, t):
            # t + 1 columns: the inputs and, one further, the targets
            grid = packing.chunk(plan, ids, offset, t + 1, slots, pad)
            carry = self._add_nats(nats, carry, grid, counted(grid.owner, offset))
        return nats

    def _bins_nats(self, targets: list[tuple[np.ndarray, np.ndarray]], rows: int, limit: int
                   ) -> np.ndarray:
        """Summed nats of each text's (of at most ``limit`` + 1 tokens) scored tokens, the
        texts packed into rows of a few widths (``packing.pack_bins``), each row read in one
        call, the model's positions and attention restarting at each text."""
        from lmscale.transfer import packing
        nats = np.zeros(len(targets), np.float64)
        pad = self.trained.tokenizer.pad_id or 0
        wide = self._logits_width()  # at most SCORE_LOGITS_BYTES of logits a call
        for texts, plan in packing.pack_bins([len(x) for x, _ in targets], limit + 1):
            mine = [targets[i] for i in texts]
            counted = _counted_lookup(mine, plan)
            fit = rows if wide is None else max(1, SCORE_LOGITS_BYTES // (plan.width * wide * 4))
            count = packing.rows_for(min(rows, fit), plan.rows, self.trained.mesh.size)
            part = np.zeros(len(mine), np.float64)
            for first in range(0, plan.rows, count):
                grid = packing.rows_piece(plan, [x for x, _ in mine], first, count,
                                          packing.texts_per_row(plan), pad)
                self._add_nats(part, self.trained.model().initial_carry(count), grid,
                               counted(grid.owner, 0))
            nats[texts] += part
        return nats

    def _logits_width(self) -> int | None:
        """V of the logits a scoring call forms per token, None where it forms none V-wide
        (an adaptive softmax: ``adaptive_token_nll``)."""
        model = self.trained.model()
        if getattr(model, "cutoffs", ()):
            return None
        return int(getattr(model, "vocab_size", None) or self.trained.tokenizer.vocab_size)

    def _chunk_steps(self, rows: int) -> int:
        """Inputs a call of a recurrent LM reads: ``CHUNK_STEPS``, fewer (down to
        ``MIN_CHUNK_STEPS``) where rows x t x V float32 logits would pass
        ``SCORE_LOGITS_BYTES``."""
        wide = self._logits_width()
        if wide is None:
            return CHUNK_STEPS
        fit = SCORE_LOGITS_BYTES // (rows * wide * 4)
        return int(min(CHUNK_STEPS, max(MIN_CHUNK_STEPS, fit)))

    def _put(self, a: Any) -> Any:
        return jax.device_put(a, mesh_lib.batch_sharded(self.trained.mesh))

    def _add_nats(self, nats: np.ndarray, carry: Any, grid: Any, scored: np.ndarray) -> Any:
        """nats[text] += the nats of its tokens in ``grid`` (a ``packing.Chunk`` of t + 1
        columns: inputs, and one further the targets) that are ``scored`` [rows, t + 1] and
        follow a token of the same text; returns the carry after the t inputs."""
        text = grid.owner
        same = (text[:, 1:] == text[:, :-1]) & (text[:, 1:] >= 0)
        weights = (same & scored[:, 1:]).astype(np.float32)
        carry, row_nats = _chunk_nats_fn(self.trained.graphdef)(
            self.trained.params, carry, self._put(grid.tokens[:, :-1]),
            self._put(grid.resets[:, :-1]), self._put(grid.tokens[:, 1:]), self._put(weights))
        np.add.at(nats, text[:, :-1][weights > 0], np.asarray(row_nats)[weights > 0])
        return carry

    def featurize(self, texts: Sequence[str], **options: Any) -> np.ndarray:
        """Features [N, F]; options as :func:`lmscale.transfer.featurize.featurize`."""
        return featurize(self.trained, texts, **options)

    def generate(self, prompt: str, length: int = 200, **options: Any) -> list[str]:
        """``samples`` (default 1) continuations of ``prompt``, each a str with the prompt in
        front; ``length`` counts tokens (bytes of a byte-level model: a multi-byte character is
        several, so fewer characters may come out). Options (temperature, top_k, top_p, seed,
        samples, neuron, neuron_value, neuron_state) as :func:`lmscale.generation.generate`;
        ``neuron_polarity=True`` multiplies neuron_value by the sign ``lmscale.transfer`` found
        for that unit (in WORKDIR/transfer), and holds it in the state the transfer read."""
        from lmscale.generation import generate
        if options.pop("neuron_polarity", False):
            from lmscale.transfer.found_neuron import polarity_sign, transfer_neuron
            from lmscale.training.restore import weights_fingerprint
            lm, neuron = self.trained, options.get("neuron")
            if neuron is None:  # before the transfer's record is read
                raise DataError("neuron_polarity signs the value neuron= is held at: give neuron too")
            found = transfer_neuron(lm.workdir, lm.model().feature_width, lm.step,
                                    weights_fingerprint(lm))
            options["neuron_value"] = options.get("neuron_value", 0.0) * polarity_sign(
                found, neuron, lm.workdir)
            options.setdefault("neuron_state", found[1])
        return generate(self.trained, prompt, length, **options)


@functools.lru_cache(maxsize=32)
def _chunk_nats_fn(graphdef: nnx.GraphDef) -> Any:
    """jit(params, carry, tokens [B, t], resets [B, t], targets [B, t], weights [B, t]) ->
    (new carry, nats of each target [B, t] times its weight): with an adaptive softmax
    (``cutoffs``) the model's ``adaptive_token_nll`` (no V-wide logits); else
    logsumexp(logits) - the target's logit. Cached per model graph (as
    featurize's programs are), not per ``LM``: a second ``load_lm`` of the same model (a
    notebook's cell run again) reuses the compiled program."""
    def _chunk_nats(params: Any, carry: Any, tokens: jax.Array, resets: jax.Array,
                    targets: jax.Array, weights: jax.Array) -> tuple[Any, jax.Array]:
        model = nnx.merge(graphdef, params)
        if getattr(model, "cutoffs", ()):  # an adaptive softmax: no V-wide logits
            nll, carry = model.adaptive_token_nll(tokens, carry, resets, targets, weights)
            return carry, nll * weights
        logits, carry = model(tokens, carry, resets)
        logits = logits.astype(jnp.float32)  # logsumexp - the target's: no log_softmax [B, t, V]
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return carry, (jax.nn.logsumexp(logits, axis=-1) - picked) * weights

    return jax.jit(_chunk_nats)


def _counted_lookup(targets: list[tuple[np.ndarray, np.ndarray]], plan: Any) -> Any:
    """f(owner [rows, t], offset) -> scored [rows, t]: whether the token each grid position
    holds (``owner``: its text, -1 in padding; grid column ``offset`` + j) is one the text
    counts (its scored flags, by ``plan``'s starts)."""
    counted = np.concatenate([s for _, s in targets] + [np.zeros(0, bool)])
    first = np.cumsum([0] + [len(x) for x, _ in targets])[:-1] - plan.start  # index - column

    def lookup(owner: np.ndarray, offset: int) -> np.ndarray:
        held = owner >= 0
        scored = np.zeros(owner.shape, bool)
        columns = np.broadcast_to(offset + np.arange(owner.shape[1]), owner.shape)
        scored[held] = counted[first[owner[held]] + columns[held]]
        return scored

    return lookup


def load_lm(workdir: str, step: int | None = None, compute: str = "float32",
            best: bool = False) -> LM:
    """The latest (or given) checkpoint of a training run or imported model; ``best``: the
    weights that validated best instead (``checkpoint.keep_best``); ``compute``: the
    matmuls' dtype ("bfloat16": ~3x faster featurizing on CPUs with AMX and on GPUs).
    FileNotFoundError (saying why and the way on) for a folder that is no LM run (a
    classifier's, weights still to convert) or a step it does not hold."""
    check_call_arguments(workdir, folder="a run's folder")
    release_near_map_limit()
    return LM(load_trained(workdir, step, best=best, compute=compute))
