"""NVIDIA sentiment-discovery's PyTorch language-model checkpoints <-> lmscale.

Layout, from model/model.py, model/RNN_utils/RNN/{RNNBackend,cells}.py and
reparameterization/ of NVIDIA/sentiment-discovery: ``RNNModel.state_dict()`` is nested,

  {"encoder": {"encoder": {"weight": [V, E]},                  nn.Embedding
               "rnn": {"rnns.L.w_ih": [4H, in], "rnns.L.w_hh": [4H, H],
                       "rnns.L.w_mih": [H, in], "rnns.L.w_mhh": [H, H],   (mLSTM only)
                       "rnns.L.b_ih": [4H], "rnns.L.b_hh": [4H]}},
   "decoder": {"weight": [V, H], "bias": [V]}}                   nn.Linear

with PyTorch's (out, in) matrices (F.linear: y = x W^T + b). Weight norm, applied to every
matrix of the rnn (not the embedding, decoder or biases), replaces ``w`` by ``w_g`` [out, 1]
and ``w_v`` [out, in] with w = g * v / ||v|| per output row; checkpoints saved during
training hold g/v, the final one plain matrices (its loaders accept both). Equations:
m = (x W_mih^T) * (h W_mhh^T); z = x W_ih^T + b_ih + m W_hh^T + b_hh; i, f, g, o = chunk(z, 4)
(lmscale's gate order); c' = s(f) c + s(i) tanh(g); h' = s(o) tanh(c'). The LSTM variant
(torch's lstm_cell) is the same without m (h in its place).

The mapping: W (out, in) -> lmscale (in, out) by transposing; g [out, 1] -> g [out], v -> v^T
(the same norm, per output unit); b_ih -> bias and b_hh -> bias_h (``model.two_biases``: both
trained apart, as sentiment-discovery's Adam trains them, so training an import on follows its
recipe), or, with ``two_biases=False``, b_ih + b_hh -> one bias (the same forward; Adam would
move that one at half the pair's rate). Exported: bias -> b_ih, bias_h -> b_hh (zero for a
model with one bias). Vocabulary: 257 rows
(id = byte + 1, padding 0; the current code's CharacterLevelTokenizer) -> the
``sentiment_discovery`` tokenizer; 256 rows (id = byte; older releases) -> ``openai``.
Not representable, and refused: the transformer models, recurrent output projections
(``w_ho``), other vocabularies (e.g. SentencePiece).

Reading .pt files needs torch (``pip install 'lmscale[torch]'``) and never executes code from
the file: ``torch.load(..., weights_only=True)``. The mapping itself works on any nested dict
of arrays (``from_state_dict`` / ``to_state_dict``), torch tensors or NumPy.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

import numpy as np

from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained.errors import ConvertError
from lmscale.pretrained.weights import (MATRICES, LMWeights, floored_note, from_weight_norm,
                                         to_weight_norm)

# lmscale matrix name <- sentiment-discovery parameter name
TORCH_NAMES = {"w_x": "w_ih", "w_h": "w_hh", "w_mx": "w_mih", "w_mh": "w_mhh"}
PAD_LOGIT = -1.0e4  # decoder bias of the padding id added when exporting a 256-id model
_RNN_KEY = re.compile(r"(?:^|\.)rnns\.(\d+)\.(w_ih|w_hh|w_mih|w_mhh|w_ho|b_ih|b_hh)(?:_(g|v))?$")
_TRANSFORMER_HINTS = ("self_attn", "embed_tokens", "embed_positions", "embed_out", "layer_norms",
                      "in_proj_weight", "wte.", "c_attn")  # fairseq's (the seed's), GPT-2's
EXPECTED = ("a sentiment-discovery language-model state dict (RNNModel.state_dict(): "
            "encoder.encoder.weight, encoder.rnn.rnns.N.w_ih/w_hh/w_mih/w_mhh/b_ih/b_hh, "
            "decoder.weight/bias)")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested state dict as {"encoder.rnn.rnns.0.w_ih": value, ...}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _to_numpy(x: Any) -> np.ndarray | None:
    """A float torch tensor or array as float32 NumPy; None for non-array values and for
    arrays of other dtypes (``_dtype_name`` says which)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        if not getattr(x, "is_floating_point", lambda: True)():
            return None
        return x.detach().cpu().float().numpy().astype(np.float32)
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    return None


def _dtype_name(x: Any) -> str | None:
    """The dtype of a torch tensor or NumPy array (None for other values)."""
    if hasattr(x, "detach") or isinstance(x, np.ndarray):
        return str(getattr(x, "dtype", "?"))
    return None


def _is_lm_key(key: str) -> bool:
    """Whether ``key`` names a tensor of the language model (the recurrent weights, the
    embedding or the decoder)."""
    return bool(_RNN_KEY.search(key) or re.search(r"(?:^|\.)(?:encoder\.weight|decoder\.weight|"
                                                  r"decoder\.bias)$", key))


def from_state_dict(state_dict: Mapping[str, Any], name: str, *,
                    weight_norm: bool | None = None, two_biases: bool | None = None) -> LMWeights:
    """A sentiment-discovery RNNModel state dict (nested or flat; tensors or arrays) -> LMWeights.

    ``weight_norm``: None keeps the checkpoint's form (g/v if it has any), True/False converts
    (plain -> g/v: v = W^T, g = ||W|| per output row, exact). ``two_biases``: None keeps the
    checkpoint's b_ih and b_hh apart (one zero bias for a checkpoint without biases), False
    sums them into one, True keeps two (zeros where there are none). ``name`` (the file) is
    used in errors. Keys outside the language model (e.g. a classifier head) are ignored and
    listed in ``source["ignored_keys"]``.
    """
    if not isinstance(state_dict, Mapping):
        raise ConvertError(f"{name} holds a {type(state_dict).__name__}; expected {EXPECTED}")
    flat = flatten(state_dict)
    for key in flat:
        if any(hint in key for hint in _TRANSFORMER_HINTS):
            raise ConvertError(f"{name} is a transformer checkpoint (key {key!r}); transformer "
                               f"checkpoints are not supported yet, only mLSTM/LSTM language models")
    emb, dec_w, dec_b, ignored = None, None, None, []
    rnn: dict[tuple[int, str, str], np.ndarray] = {}

    def take(slot: Any, key: str, value: np.ndarray) -> np.ndarray:
        if slot is not None:
            raise ConvertError(f"{name}: more than one tensor for {key!r}; expected one language model")
        bad = ~np.isfinite(value)
        if bad.any():  # a diverged run's weights: eval would print NaN, generate NUL bytes
            first = [int(i) for i in np.argwhere(bad)[0]]
            raise ConvertError(f"{name}: {key} holds {int(bad.sum())} non-finite values (NaN/inf "
                               f"in float32, the first {value[tuple(first)]} at index {first}); "
                               f"expected the weights of a trained model")
        return value

    for key, value in flat.items():
        arr = _to_numpy(value)
        m = _RNN_KEY.search(key)
        if arr is None and _dtype_name(value) is not None and _is_lm_key(key):
            raise ConvertError(f"{name}: {key} has dtype {_dtype_name(value)}; expected the "
                               f"float weights of {EXPECTED}")
        if arr is None:
            ignored.append(key)
        elif m:
            layer, param, part = int(m.group(1)), m.group(2), m.group(3) or "w"
            if param == "w_ho":
                raise ConvertError(f"{name}: {key} is a recurrent output projection "
                                   f"(output_size != hidden_size), which lmscale's layers do not have")
            rnn[(layer, param, part)] = take(rnn.get((layer, param, part)), key, arr)
        elif re.search(r"(?:^|\.)encoder\.weight$", key):
            emb = take(emb, key, arr)
        elif re.search(r"(?:^|\.)decoder\.weight$", key):
            dec_w = take(dec_w, key, arr)
        elif re.search(r"(?:^|\.)decoder\.bias$", key):
            dec_b = take(dec_b, key, arr)
        else:
            ignored.append(key)
    if dec_w is None and dec_b is None and any("classifier" in k.split(".")[:-1] for k in flat):
        raise ConvertError(f"{name} is a sentiment-discovery classifier checkpoint (encoder + "
                           f"classifier, e.g. a .clf file) without the language model's decoder; "
                           f"expected the language model's checkpoint (e.g. mlstm.pt), "
                           f"{EXPECTED}")
    for value, key in ((emb, "encoder.encoder.weight"), (dec_w, "decoder.weight"),
                       (dec_b, "decoder.bias")):
        if value is None:
            raise ConvertError(f"{name} has no {key}; expected {EXPECTED}")
    if not rnn:
        raise ConvertError(f"{name} has no recurrent weights (encoder.rnn.rnns.N.*); expected {EXPECTED}")
    assert emb is not None and dec_w is not None and dec_b is not None

    if emb.ndim != 2 or emb.shape[0] not in (256, 257):
        raise ConvertError(f"{name}: encoder.encoder.weight has shape {tuple(emb.shape)}; expected "
                           f"[257, E] (id = byte + 1) or [256, E] (id = byte)")
    V, E = emb.shape
    # H from the first layer's w_hh [4H, H] (else the decoder), so that a decoder of another
    # width is blamed, not the recurrent weights
    w_hh = rnn.get((0, "w_hh", "w"), rnn.get((0, "w_hh", "v")))
    H_from = ("rnns.0.w_hh" if w_hh is not None and w_hh.ndim == 2
              and w_hh.shape[0] == 4 * w_hh.shape[1] else None)
    if H_from is not None and dec_w.ndim == 2 and dec_w.shape[1] != w_hh.shape[1]:
        raise ConvertError(f"{name}: decoder.weight has shape {tuple(dec_w.shape)}; expected "
                           f"[{V}, {w_hh.shape[1]}] (H = {w_hh.shape[1]} from {H_from} of shape "
                           f"{tuple(w_hh.shape)})")
    if dec_w.ndim != 2 or dec_w.shape[0] != V:
        raise ConvertError(f"{name}: decoder.weight has shape {tuple(dec_w.shape)}; expected [{V}, H]")
    H = dec_w.shape[1]
    if dec_b.shape != (V,):
        raise ConvertError(f"{name}: decoder.bias has shape {tuple(dec_b.shape)}; expected [{V}]")
    layers = max(k[0] for k in rnn) + 1
    kind = "mlstm" if any(k[1] == "w_mih" for k in rnn) else "lstm"
    file_wn = any(k[2] != "w" for k in rnn)
    wn = file_wn if weight_norm is None else weight_norm
    params: dict[str, np.ndarray] = {"embedding/embedding": emb, "decoder/kernel": dec_w.T.copy(),
                                     "decoder/bias": dec_b}
    bias_free: list[int] = []
    for l in range(layers):
        in_features = E if l == 0 else H
        shapes = {"w_ih": (4 * H, in_features), "w_hh": (4 * H, H), "w_mih": (H, in_features),
                  "w_mhh": (H, H)}
        for ours in MATRICES[kind]:
            theirs = TORCH_NAMES[ours]
            key = f"rnns.{l}.{theirs}"
            out, inp = shapes[theirs]
            if (l, theirs, "w") in rnn and ((l, theirs, "g") in rnn or (l, theirs, "v") in rnn):
                parts = "/".join(f"{key}_{p}" for p in ("g", "v") if (l, theirs, p) in rnn)
                raise ConvertError(f"{name} holds both {key} and {parts}; expected one form of "
                                   f"each matrix (plain, or weight-normed _g and _v)")
            if (l, theirs, "w") in rnn:
                w = rnn[(l, theirs, "w")]
                _check(name, key, w, (out, inp))
                g, v = to_weight_norm(w.T) if wn else (None, w.T.copy())
            elif (l, theirs, "g") in rnn and (l, theirs, "v") in rnn:
                g_t, v_t = rnn[(l, theirs, "g")], rnn[(l, theirs, "v")]
                _check(name, key + "_v", v_t, (out, inp))
                if tuple(g_t.shape) not in ((out,), (out, 1)):
                    raise ConvertError(f"{name}: {key}_g has shape {tuple(g_t.shape)}; expected "
                                       f"[{out}, 1] (one gain per output row)")
                g, v = (g_t.reshape(out), v_t.T.copy()) if wn else (
                    None, from_weight_norm(g_t.reshape(out), v_t.T))
            elif (l, theirs, "g") in rnn or (l, theirs, "v") in rnn:
                have, lack = ("g", "v") if (l, theirs, "g") in rnn else ("v", "g")
                raise ConvertError(f"{name} has {key}_{have} but no {key}_{lack}; expected both "
                                   f"parts of the weight-normed matrix (or a plain {key})")
            else:
                raise ConvertError(f"{name} has no {key} (nor {key}_g/{key}_v); expected the "
                                   f"{layers}-layer {kind}'s matrices")
            p = f"layers/{l}/{ours}"
            if wn:
                params[f"{p}/g"], params[f"{p}/v"] = g, v
            else:
                params[f"{p}/kernel"] = v
        present = [b for b in ("b_ih", "b_hh") if (l, b, "w") in rnn]
        if len(present) == 1:  # a cell has both biases (bias=True) or neither (bias=False)
            missing = "b_hh" if present == ["b_ih"] else "b_ih"
            raise ConvertError(f"{name} has rnns.{l}.{present[0]} but no rnns.{l}.{missing}; "
                               f"expected both biases of each layer (or neither: a cell built "
                               f"with bias=False)")
        if not present:
            bias_free.append(l)
        for b in present:
            _check(name, f"rnns.{l}.{b}", rnn[(l, b, "w")], (4 * H,))
        zero = np.zeros(4 * H, np.float32)
        params[f"layers/{l}/bias"] = rnn.get((l, "b_ih", "w"), zero)
        params[f"layers/{l}/bias_h"] = rnn.get((l, "b_hh", "w"), zero)
    if kind == "lstm" and any(k[1] == "w_mhh" for k in rnn):
        raise ConvertError(f"{name} has w_mhh but no w_mih; expected both (mLSTM) or neither (LSTM)")
    if bias_free and len(bias_free) != layers:  # bias is one setting of all the layers
        raise ConvertError(f"{name} has no rnns.N.b_ih/b_hh for layers {bias_free} but has them "
                           f"for the others; expected both biases of every layer")
    tokenizer = ByteTokenizer.sentiment_discovery() if V == 257 else ByteTokenizer.openai()
    source = {"format": "sentiment-discovery", "path": os.path.abspath(name),
              "weight_norm_in_file": file_wn, "ignored_keys": sorted(ignored)}
    if bias_free:
        source["notes"] = ["no rnns.N.b_ih/b_hh: imported with zero bias, as a cell built with "
                           "bias=False (RNNModel's cells always have both; if this checkpoint "
                           "came from one, it lost its biases)"]
    weights = LMWeights(kind=kind, tokenizer=tokenizer, params=params, preprocess="none",
                        source=source)
    if two_biases is False or (two_biases is None and bias_free):
        weights = weights.with_two_biases(False)
    weights.check(name)
    return weights


def floored_notes(weights: LMWeights) -> list[str]:
    """One note per weight-norm matrix whose v has rows (lmscale: columns) of norm below 1e-6,
    named as sentiment-discovery's keys: lmscale floors ||v||^2 at 1e-12 (w's row is
    g * v * 1e6, zero for a zero row), where PyTorch's weight norm divides by 0 (NaN)."""
    inverse = {ours: theirs for ours, theirs in TORCH_NAMES.items()}
    notes = []
    for path, rows in weights.floored_columns().items():
        _, l, ours = path.split("/")
        notes.append(floored_note(f"rnns.{l}.{inverse[ours]}_v row{'s' if len(rows) > 1 else ''}",
                                   rows, "sentiment-discovery's weight norm has no floor: NaN for an "
                                   "all-zero row, a full-norm row for a tiny one, so the import "
                                   "differs there"))
    return notes


def _check(name: str, key: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(arr.shape) != shape:
        raise ConvertError(f"{name}: {key} has shape {tuple(arr.shape)}; expected {list(shape)}")


def to_state_dict(weights: LMWeights, *, weight_norm: bool | None = None, rows: int = 257
                  ) -> dict[str, Any]:
    """LMWeights -> a nested RNNModel state dict of float32 NumPy arrays.

    ``weight_norm`` None keeps the model's form; g/v are written as ``w_g`` [out, 1] and
    ``w_v`` [out, in] (what sentiment-discovery's loaders accept after ``apply_weight_norm``).
    ``bias`` goes to b_ih, ``bias_h`` to b_hh (zero for a model with one bias). A 256-id
    model (id = byte) gets the padding id 0 prepended: a zero embedding row, a zero decoder
    row and decoder bias ``PAD_LOGIT``, so the byte probabilities are unchanged. ``rows`` 256
    writes id = byte instead (sentiment-discovery's older releases; ntoken=256): a 257-id
    model's padding row dropped, as OpenAI's layout drops it.
    """
    if rows not in (256, 257):
        raise ConvertError(f"a sentiment-discovery state dict has 257 or 256 rows, not {rows}")
    weights.check("model")
    wn = weights.weight_norm if weight_norm is None else weight_norm
    w = weights.with_weight_norm(wn).with_two_biases(True).params  # one bias: a zero b_hh
    emb, dec_w, dec_b = w["embedding/embedding"], w["decoder/kernel"].T, w["decoder/bias"]
    if weights.tokenizer == ByteTokenizer.sentiment_discovery() and rows == 256:
        emb, dec_w, dec_b = emb[1:], dec_w[1:], dec_b[1:]
    elif weights.tokenizer == ByteTokenizer.openai() and rows == 257:
        emb = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])
        dec_w = np.concatenate([np.zeros((1, dec_w.shape[1]), np.float32), dec_w])
        dec_b = np.concatenate([np.full((1,), PAD_LOGIT, np.float32), dec_b])
    elif weights.tokenizer not in (ByteTokenizer.sentiment_discovery(), ByteTokenizer.openai()):
        raise ConvertError(f"sentiment-discovery's layout uses byte ids; cannot map tokenizer "
                           f"{weights.tokenizer.to_dict()}")
    rnn: dict[str, np.ndarray] = {}
    for l in range(weights.layers):
        for ours in MATRICES[weights.kind]:
            p, key = f"layers/{l}/{ours}", f"rnns.{l}.{TORCH_NAMES[ours]}"
            if wn:
                rnn[f"{key}_g"] = w[f"{p}/g"].reshape(-1, 1).copy()
                rnn[f"{key}_v"] = np.ascontiguousarray(w[f"{p}/v"].T)
            else:
                rnn[key] = np.ascontiguousarray(w[f"{p}/kernel"].T)
        rnn[f"rnns.{l}.b_ih"] = w[f"layers/{l}/bias"].copy()
        rnn[f"rnns.{l}.b_hh"] = w[f"layers/{l}/bias_h"].copy()
    return {"encoder": {"encoder": {"weight": np.ascontiguousarray(emb)}, "rnn": rnn},
            "decoder": {"weight": np.ascontiguousarray(dec_w), "bias": dec_b.copy()}}


# The first torch whose torch.load(weights_only=True) is not known to run code from a crafted
# file (before 2.6: CVE-2025-32434; before 2.10: CVE-2026-24747, its unpickler's memory).
SAFE_TORCH = (2, 10)


def require_torch(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{path}: PyTorch files need torch; install it with "
                           f"pip install 'lmscale[torch]' (from a clone: pip install -e \".[torch]\")") from None
    return torch


def _what_file(path: str) -> str | None:
    """What a file that is no PyTorch checkpoint is, where its first bytes say (else None: a
    checkpoint is a zip archive, or an older pickle, both binary from their first bytes)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return ("it is a NumPy .npy array (OpenAI's layout is a folder of those: "
                "--from=openai)")
    if any(b < 32 and b not in b"\t\n\r" for b in head):  # binary (e.g. NULs)
        return None
    for cut in range(4):  # 512 bytes may end inside a character
        try:
            head[:len(head) - cut].decode("utf-8")
            return "it is a text file"
        except UnicodeDecodeError:
            pass
    return None


def load_pt(path: str, *, weight_norm: bool | None = None,
            two_biases: bool | None = None) -> LMWeights:
    """Reads a sentiment-discovery .pt checkpoint with ``torch.load(weights_only=True)``."""
    if os.path.isdir(path):
        hint = ("; it holds 0.npy, OpenAI's layout: use --from=openai"
                if os.path.exists(os.path.join(path, "0.npy"))
                or os.path.exists(os.path.join(path, "model", "0.npy")) else "")
        raise ConvertError(f"{path} is a folder; expected {EXPECTED} saved as a .pt file{hint}")
    if not os.path.isfile(path):
        raise ConvertError(f"{path} is missing; expected {EXPECTED} saved as a .pt file")
    what = _what_file(path)
    if what:  # an empty, NumPy or text file: said so (torch said "KeyError: 101", "EOFError: ")
        raise ConvertError(f"{path} is not a PyTorch file: {what}; expected {EXPECTED}")
    torch = require_torch(path)
    version = re.match(r"(\d+)\.(\d+)", str(getattr(torch, "__version__", "")))
    if version is None or tuple(map(int, version.groups())) < SAFE_TORCH:
        raise ConvertError(f"{path}: torch {getattr(torch, '__version__', '?')} is too old to read "
                           f"a .pt file safely (its weights_only=True loader can run code a "
                           f"file carries: CVE-2025-32434, CVE-2026-24747); upgrade it: pip "
                           f"install 'torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]}'")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, zip / EOF / magic-number errors differ by version
        text = " ".join(str(e).split())
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if isinstance(e, pickle.UnpicklingError) and found and found.group(1) == "argparse.Namespace":
            raise ConvertError(f"{path} holds Python objects other than tensors "
                               f"(argparse.Namespace), which are never unpickled: it is laid out "
                               f"as sentiment-discovery's finetune_classifier.py saves a "
                               f"classifier (.clf: {{'sd': ..., 'args': ...}}); convert the "
                               f"language model's checkpoint (e.g. mlstm.pt), {EXPECTED}") from None
        if isinstance(e, pickle.UnpicklingError) and found:
            raise ConvertError(f"{path} holds Python objects other than tensors ({found.group(1)}), "
                               f"which are never unpickled (torch.load weights_only=True); "
                               f"expected {EXPECTED}") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text)
        detail = reason.group(1) if reason else text.split(". ")[0][:300]
        if re.search(r"central directory|unexpected EOF|file too short", text, re.I):
            detail = "the file is truncated or damaged: its zip archive is incomplete"
        raise ConvertError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {detail}); "
                           f"expected {EXPECTED}") from None
    return from_state_dict(state_dict, path, weight_norm=weight_norm, two_biases=two_biases)


def save_pt(weights: LMWeights, path: str, *, weight_norm: bool | None = None,
            rows: int = 257) -> str:
    """Writes ``to_state_dict(weights)`` as torch tensors with ``torch.save``; never overwrites."""
    if os.path.exists(path):
        raise ConvertError(f"{path} already exists; expected a new .pt file name")
    torch = require_torch(path)
    tree = to_state_dict(weights, weight_norm=weight_norm, rows=rows)

    def to_torch(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: to_torch(v) for k, v in node.items()}
        return torch.from_numpy(np.array(node, copy=True))  # writable: torch warns otherwise

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(to_torch(tree), path)
    return path
