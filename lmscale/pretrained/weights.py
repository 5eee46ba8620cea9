"""LMWeights: an lmscale RecurrentLM's parameters as NumPy arrays, the hub of every conversion.

Importers build one from an original layout, exporters read one, and ``workdir.py`` turns
one into a workdir and back. ``params`` is keyed by the model's nnx.Param paths joined by
"/" (x @ W convention, gate blocks in lmscale's order i, f, g, o):

  embedding/embedding [V, E]
  layers/L/w_x [in, 4H], layers/L/w_mx [in, H], layers/L/w_mh [H, H], layers/L/w_h [H, 4H],
      each either .../g [out] and .../v [in, out] (weight norm: w = g * v / ||v|| over ``in``)
      or .../kernel [in, out]; LSTM layers have w_x and w_h only
  layers/L/bias [4H], and layers/L/bias_h [4H] for a model with two (``model.two_biases``:
      PyTorch's b_ih and b_hh, trained apart; the gate bias is their sum)
  decoder/kernel [H, V], decoder/bias [V]

All arrays are float32. Weight norm is all or nothing for a model (``model.weight_norm``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.models import MODEL_KINDS, RecurrentLM, build_model
from lmscale.models.weight_norm import NORM_SQ_FLOOR
from lmscale.pretrained.errors import ConvertError

MATRICES: dict[str, tuple[str, ...]] = {"mlstm": ("w_x", "w_mx", "w_mh", "w_h"),
                                        "lstm": ("w_x", "w_h")}
TOKENIZER_NAMES: dict[str, ByteTokenizer] = {"sentiment_discovery": ByteTokenizer.sentiment_discovery(),
                                             "openai": ByteTokenizer.openai()}


def tokenizer_name(tokenizer: ByteTokenizer) -> str:
    """The ``data.tokenizer`` config name of a byte tokenizer ("openai" / "sentiment_discovery")."""
    for name, tok in TOKENIZER_NAMES.items():
        if tok == tokenizer:
            return name
    raise ConvertError(f"tokenizer {tokenizer.to_dict()} has no data.tokenizer name "
                       f"(known: {sorted(TOKENIZER_NAMES)})")


def matrix_shapes(kind: str, in_features: int, hidden: int) -> dict[str, tuple[int, int]]:
    """(in, out) shape of each recurrent matrix of one layer."""
    shapes = {"w_x": (in_features, 4 * hidden), "w_h": (hidden, 4 * hidden)}
    if kind == "mlstm":
        shapes.update(w_mx=(in_features, hidden), w_mh=(hidden, hidden))
    return shapes


def to_weight_norm(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A plain (in, out) matrix as (g [out], v [in, out]) with g * v / ||v|| == w.

    v = w and g = ||w|| per column (exact up to float32 rounding of g * w / ||w||). A zero
    column (where ||v|| would be 0 and the quotient undefined) gets v = e_0 and g = 0.
    """
    w = np.asarray(w, np.float32)
    norm = np.sqrt(np.sum(np.asarray(w, np.float64) ** 2, axis=0))
    v = w.copy()
    zero = norm == 0
    if zero.any():
        v[:, zero] = 0.0
        v[0, zero] = 1.0
    return norm.astype(np.float32), v


def from_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """g [out], v [in, out] -> w = g * v / ||v|| (norm over ``in``), computed in float64.

    ||v||^2 is floored at ``NORM_SQ_FLOOR`` as in the model (``weight_norm.unit_scale``) and
    TensorFlow's l2_normalize: a zero column of v gives a zero column of w (not NaN).
    """
    v64 = np.asarray(v, np.float64)
    norm = np.sqrt(np.maximum(np.sum(v64 ** 2, axis=0), NORM_SQ_FLOOR))
    return (np.asarray(g, np.float64) * v64 / norm).astype(np.float32)


def floored_columns(v: np.ndarray) -> list[int]:
    """Columns of v [in, out] whose squared norm (float32, as the model sums it) is below
    ``NORM_SQ_FLOOR``, so that the floor sets their scale: g * v * 1e6, not g * v / ||v||
    (a zero column: a zero column of w, where an unfloored weight norm gives NaN)."""
    v32 = np.asarray(v, np.float32)
    return [int(j) for j in np.flatnonzero(np.sum(v32 * v32, axis=0) < NORM_SQ_FLOOR)]


def floored_note(what: str, cols: list[int], original: str) -> str:
    """A convert note: ``what`` (a file or key and "columns") ``cols`` have a norm below 1e-6,
    so the floor sets their scale; ``original``: what the source's own code does there."""
    shown = ", ".join(str(c) for c in cols[:10]) + (f", ... ({len(cols)} in all)" if len(cols) > 10 else "")
    return (f"{what} {shown}: norm below 1e-6; weight norm floors ||v||^2 at 1e-12, so w there "
            f"is g * v * 1e6 (zero where v is all zero), not NaN; {original}")


@dataclasses.dataclass
class LMWeights:
    """The parameters of one RecurrentLM, with what is needed to rebuild and use it.

    ``preprocess`` names the text preprocessing the original model expects
    (``lmscale.pretrained.preprocess``); ``source`` records where the weights came from.
    """

    kind: str
    tokenizer: ByteTokenizer
    params: dict[str, np.ndarray]
    preprocess: str = "none"
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.params["embedding/embedding"].shape[0])

    @property
    def embed(self) -> int:
        return int(self.params["embedding/embedding"].shape[1])

    @property
    def hidden(self) -> int:
        return int(self.params["decoder/kernel"].shape[0])

    @property
    def layers(self) -> int:
        n = 0
        while f"layers/{n}/bias" in self.params:
            n += 1
        return n

    @property
    def weight_norm(self) -> bool:
        return "layers/0/w_x/g" in self.params

    @property
    def two_biases(self) -> bool:
        return "layers/0/bias_h" in self.params

    def gate_bias(self, layer: int) -> np.ndarray:
        """The bias [4H] added to ``layer``'s gates (the sum of two, float32 as the model adds)."""
        bias = self.params[f"layers/{layer}/bias"]
        return bias + self.params[f"layers/{layer}/bias_h"] if self.two_biases else bias

    def with_two_biases(self, on: bool) -> "LMWeights":
        """A copy with two biases (``on``: the one as ``bias`` and a zero ``bias_h``, exact)
        or one (their float32 sum: the gate bias the model adds, so the same forward)."""
        if on == self.two_biases:
            return self
        params = {k: v for k, v in self.params.items() if not k.endswith("/bias_h")}
        for l in range(self.layers):
            if on:
                params[f"layers/{l}/bias_h"] = np.zeros_like(self.params[f"layers/{l}/bias"])
            else:
                params[f"layers/{l}/bias"] = self.gate_bias(l)
        return dataclasses.replace(self, params=params)

    def matrix(self, layer: int, name: str) -> np.ndarray:
        """The effective (in, out) float32 matrix ``name`` of ``layer``, whatever its form."""
        p = f"layers/{layer}/{name}"
        if f"{p}/kernel" in self.params:
            return self.params[f"{p}/kernel"]
        return from_weight_norm(self.params[f"{p}/g"], self.params[f"{p}/v"])

    def floored_columns(self) -> dict[str, list[int]]:
        """{``layers/L/NAME``: columns} of each weight-norm matrix whose v has columns of norm
        below 1e-6 (``floored_columns``); empty for a model without weight norm."""
        found = {}
        for l in range(self.layers):
            for name in MATRICES.get(self.kind, ()):
                p = f"layers/{l}/{name}"
                if f"{p}/v" in self.params:
                    cols = floored_columns(self.params[f"{p}/v"])
                    if cols:
                        found[p] = cols
        return found

    def with_weight_norm(self, on: bool) -> "LMWeights":
        """A copy whose recurrent matrices are all g/v (``on``) or all plain kernels."""
        params = {k: v for k, v in self.params.items() if not k.startswith("layers/")}
        for l in range(self.layers):
            for b in ("bias", "bias_h"):
                if f"layers/{l}/{b}" in self.params:
                    params[f"layers/{l}/{b}"] = self.params[f"layers/{l}/{b}"]
            for name in MATRICES[self.kind]:
                p = f"layers/{l}/{name}"
                if on and f"{p}/g" in self.params:
                    params[f"{p}/g"], params[f"{p}/v"] = self.params[f"{p}/g"], self.params[f"{p}/v"]
                elif on:
                    params[f"{p}/g"], params[f"{p}/v"] = to_weight_norm(self.params[f"{p}/kernel"])
                else:
                    params[f"{p}/kernel"] = self.matrix(l, name)
        return dataclasses.replace(self, params=params)

    def model_config(self) -> ml_collections.ConfigDict:
        """The ``model`` config section of this model (dropout 0)."""
        return ml_collections.ConfigDict(dict(kind=self.kind, embed=self.embed, hidden=self.hidden,
                                              layers=self.layers, dropout=0.0,
                                              weight_norm=self.weight_norm,
                                              two_biases=self.two_biases))

    def check(self, name: str) -> None:
        """Raises ConvertError (naming ``name``) unless the params are exactly a RecurrentLM's."""
        if self.kind not in MODEL_KINDS:
            raise ConvertError(f"{name}: model kind {self.kind!r}, expected one of {sorted(MODEL_KINDS)}")
        for key in ("embedding/embedding", "decoder/kernel", "decoder/bias", "layers/0/bias"):
            if key not in self.params:
                raise ConvertError(f"{name}: no parameter {key}")
        expected = expected_shapes(self.kind, self.vocab_size, self.embed, self.hidden,
                                   self.layers, self.weight_norm, self.two_biases)
        if set(expected) != set(self.params):
            diff = sorted(set(expected) ^ set(self.params))
            raise ConvertError(f"{name}: parameters {diff} do not fit a {self.layers}-layer "
                               f"{self.kind} (weight_norm={self.weight_norm}, "
                               f"two_biases={self.two_biases})")
        for key, shape in expected.items():
            got = tuple(self.params[key].shape)
            if got != shape:
                raise ConvertError(f"{name}: {key} has shape {got}, expected {shape}")
        if self.vocab_size != self.tokenizer.vocab_size:
            raise ConvertError(f"{name}: vocabulary {self.vocab_size}, but the tokenizer "
                               f"{self.tokenizer.to_dict()} has {self.tokenizer.vocab_size} ids")

    def to_model(self, dtype: Any = jnp.float32) -> RecurrentLM:
        """A RecurrentLM holding these weights."""
        self.check("weights")
        abstract = nnx.eval_shape(lambda: build_model(self.model_config(), self.vocab_size,
                                                      rngs=nnx.Rngs(0), dtype=dtype))
        graphdef, state = nnx.split(abstract, nnx.Param)  # shapes only: no random init
        return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(
            lambda path, x: jax.device_put(np.asarray(self.params[path_key(path)], x.dtype)),
            state))  # device_put, not jnp.asarray: that compiles a copy program per shape


def expected_shapes(kind: str, vocab: int, embed: int, hidden: int, layers: int,
                    weight_norm: bool, two_biases: bool = False) -> dict[str, tuple[int, ...]]:
    """Every parameter path of a RecurrentLM with its shape."""
    shapes: dict[str, tuple[int, ...]] = {"embedding/embedding": (vocab, embed),
                                          "decoder/kernel": (hidden, vocab),
                                          "decoder/bias": (vocab,)}
    for l in range(layers):
        shapes[f"layers/{l}/bias"] = (4 * hidden,)
        if two_biases:
            shapes[f"layers/{l}/bias_h"] = (4 * hidden,)
        for name, (i, o) in matrix_shapes(kind, embed if l == 0 else hidden, hidden).items():
            if weight_norm:
                shapes[f"layers/{l}/{name}/g"], shapes[f"layers/{l}/{name}/v"] = (o,), (i, o)
            else:
                shapes[f"layers/{l}/{name}/kernel"] = (i, o)
    return shapes


def path_key(path: tuple[Any, ...]) -> str:
    """A jax key path of an nnx.State leaf -> "layers/0/w_x/g" (the trailing .value dropped)."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
    return "/".join(parts)


def params_to_numpy(state: Any) -> dict[str, np.ndarray]:
    """An nnx.State of parameters -> {path: float32 NumPy array}."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {path_key(path): np.asarray(jax.device_get(x), np.float32) for path, x in leaves}


def weights_from_model(model: RecurrentLM, tokenizer: ByteTokenizer, *, preprocess: str = "none",
                       source: dict[str, Any] | None = None) -> LMWeights:
    """The LMWeights of a live model."""
    return LMWeights(kind=model.kind, tokenizer=tokenizer,
                     params=params_to_numpy(nnx.state(model, nnx.Param)),
                     preprocess=preprocess, source=dict(source or {}))
