"""OpenAI's released mLSTM ("Learning to Generate Reviews and Discovering Sentiment") <-> lmscale.

Layout, from encoder.py of openai/generating-reviews-discovering-sentiment: 15 float32 .npy
files ``model/0.npy`` ... ``model/14.npy``, consumed in order by the TensorFlow graph, files
2-5 first concatenated along axis 1 into one matrix. In the release E = 64, H = 4096:

  0     embedding  [256, E]    ids are raw bytes 0-255, no padding id
  1     wx         [E, 4H]     input -> gates
  2..5  wh         [H, *]      hidden -> gates, four column blocks of the [H, 4H] matrix
  6     wmx        [E, H]      input -> multiplicative state
  7     wmh        [H, H]      hidden -> multiplicative state
  8     b          [4H]        gate bias
  9-12  gx, gh, gmx, gmh       weight-norm gains [4H], [4H], [H], [H] of wx, wh, wmx, wmh
  13    out w      [H, 256]    decoder (no weight norm)
  14    out b      [256]

Equations (x @ W): m = (x wmx) * (h wmh); z = x wx + m wh + b; i, f, o, u = split(z, 4);
c' = s(f) c + s(i) tanh(u); h' = s(o) tanh(c'), each matrix w = l2_normalize(v, axis=0) * g.
The mapping to lmscale is exact: lmscale's weight norm is the same g * v / ||v|| over the
input axis, with ||v||^2 floored at 1e-12 as TensorFlow's l2_normalize does (which matters
only for a column of norm below 1e-6: a zero column gives a zero column of w; ``convert``
notes such columns, ``floored_notes``), and the gate blocks move from (i, f, o, u) to
lmscale's (i, f, g, o) with the block permutation [0, 1, 3, 2] (its own inverse) on every 4H axis: wx, wh, b, gx, gh.

OpenAI's text preprocessing (``lmscale.pretrained.preprocess.openai_preprocess``) is recorded
with the imported model. An exported model that expects another (an lmscale run: none) gets a
16th file, ``lmscale.json``, naming it, which the import reads back (OpenAI's code ignores it).
Its features are the final cell state; the sentiment unit of OpenAI's own model is 2388
(sst_binary_demo.py), recorded only for a folder of its shape without ``lmscale.json``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lmscale.atomic import atomic_write, write_json
from lmscale.data.tokenizer import ByteTokenizer
from lmscale.pretrained.errors import ConvertError
from lmscale.pretrained.weights import LMWeights, floored_note

NUM_FILES = 15
WH_FILES = (2, 3, 4, 5)
GATE_ORDER = (0, 1, 3, 2)  # lmscale block k = OpenAI block GATE_ORDER[k], and vice versa
SENTIMENT_UNIT = 2388  # of OpenAI's own release, E = 64 and H = 4096
RELEASE_SHAPE = (64, 4096)  # (E, H) of that release
VOCAB = 256
SIDECAR = "lmscale.json"  # {"preprocess": ...} of a model that does not expect OpenAI's

# file -> (name, what it is, shape in terms of E and H); files 2-5 are checked together.
FILES: dict[int, tuple[str, str, str]] = {
    0: ("embedding", "the byte embedding", "[256, E]"),
    1: ("wx", "the input-to-gates matrix", "[E, 4H]"),
    6: ("wmx", "the input-to-multiplicative matrix", "[E, H]"),
    7: ("wmh", "the hidden-to-multiplicative matrix", "[H, H]"),
    8: ("b", "the gate bias", "[4H]"),
    9: ("gx", "the weight-norm gains of wx", "[4H]"),
    10: ("gh", "the weight-norm gains of wh", "[4H]"),
    11: ("gmx", "the weight-norm gains of wmx", "[H]"),
    12: ("gmh", "the weight-norm gains of wmh", "[H]"),
    13: ("out_w", "the output layer's matrix", "[H, 256]"),
    14: ("out_b", "the output layer's bias", "[256]"),
}


def reorder_gates(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Permutes the four gate blocks of ``axis`` by [0, 1, 3, 2] (OpenAI <-> lmscale)."""
    blocks = np.split(np.asarray(x), 4, axis=axis)
    return np.concatenate([blocks[k] for k in GATE_ORDER], axis=axis)


def find_model_dir(src: str) -> str:
    """``src`` if it holds 0.npy, else ``src/model`` if that does (a clone of OpenAI's repo)."""
    if not os.path.isdir(src):
        raise ConvertError(f"{src} is not a directory; expected a folder holding OpenAI's "
                           f"{NUM_FILES} files 0.npy ... {NUM_FILES - 1}.npy")
    if not os.path.exists(os.path.join(src, "0.npy")) and os.path.exists(
            os.path.join(src, "model", "0.npy")):
        return os.path.join(src, "model")
    return src


def read_npy(path: str, what: str) -> np.ndarray:
    """A float .npy array as float32; never unpickles. Errors name ``path`` and ``what``."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path} is missing; expected {what}")
    not_npy = _not_npy(path)
    if not_npy:
        raise ConvertError(f"{path} is not a .npy file ({not_npy}); expected {what}")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ConvertError(f"{path} holds pickled Python objects, which are never loaded; "
                               f"expected {what} as a plain .npy array") from None
        raise ConvertError(f"{path} is not a readable .npy array ({e}); expected {what}") from None
    except (OSError, EOFError) as e:
        raise ConvertError(f"{path} is not a readable .npy array ({e}); expected {what}") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise ConvertError(f"{path} is an .npz archive; expected {what} as a single .npy array")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConvertError(f"{path} has dtype {arr.dtype}; expected {what} as floats")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, refused below
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConvertError(f"{path} holds {int(bad.sum())} non-finite values (NaN/inf in float32, "
                           f"the first {arr[first]} at index {list(first)}); expected {what}")
    return arr


NPY_MAGIC = b"\x93NUMPY"


def _not_npy(path: str) -> str | None:
    """What ``path`` is when it is neither a .npy file nor something np.load reads with its
    own clear error (an .npz archive, a pickle, an empty file): a Git LFS pointer, an HTML
    page or other text (a failed download), or unknown bytes; None otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None  # np.load says what is wrong
    if not head or head.startswith(NPY_MAGIC) or head.startswith(b"PK\x03\x04") \
            or head[:1] == b"\x80":  # empty / .npy / .npz / a pickle: np.load's own messages
        return None
    text = head.decode("utf-8", errors="replace")
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    if head.startswith(b"version https://git-lfs"):
        return (f"a Git LFS pointer, {first!r}...: the weights were never downloaded; run "
                f"git lfs pull in the clone of OpenAI's repository, or download the file again")
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype", "<html", "<?xml", "<head", "<body")):
        return (f"an HTML page, starting {first!r}: a failed download (an error or login "
                f"page); download the file again")
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text) / max(len(text), 1)
    if "\ufffd" not in text and printable > 0.95:
        return (f"text, starting {first!r}: likely a failed download; download the file again")
    return f"it starts with {head[:8]!r}, not the .npy magic {NPY_MAGIC!r}"


def _check_shape(path: str, arr: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if tuple(arr.shape) != expected:
        raise ConvertError(f"{path} has shape {tuple(arr.shape)}; expected {what} of shape "
                           f"{list(expected)}")


def load_openai(src: str) -> LMWeights:
    """Reads OpenAI's 15 .npy files from ``src`` (or ``src/model``) as lmscale weights.

    The result is a single-layer mLSTM with weight norm, the ``openai`` byte tokenizer
    (id = byte, vocabulary 256) and ``openai`` text preprocessing.
    """
    folder = find_model_dir(src)
    path = lambda i: os.path.join(folder, f"{i}.npy")
    describe = lambda i, shape: f"{FILES[i][0]}, {FILES[i][1]} {FILES[i][2]} = {list(shape)}"
    arrays: dict[int, np.ndarray] = {}
    arrays[0] = read_npy(path(0), f"{FILES[0][0]}, {FILES[0][1]} {FILES[0][2]}")
    emb = arrays[0]
    if emb.ndim != 2 or emb.shape[0] != VOCAB:
        raise ConvertError(f"{path(0)} has shape {tuple(emb.shape)}; expected the byte embedding "
                           f"of shape [256, E] (OpenAI's vocabulary is the 256 bytes)")
    E = emb.shape[1]
    arrays[1] = read_npy(path(1), f"{FILES[1][0]}, {FILES[1][1]} [E, 4H] with E = {E}")
    wx = arrays[1]
    if wx.ndim != 2 or wx.shape[0] != E or wx.shape[1] % 4 or wx.shape[1] == 0:
        raise ConvertError(f"{path(1)} has shape {tuple(wx.shape)}; expected {FILES[1][0]}, "
                           f"{FILES[1][1]} of shape [E, 4H] with E = {E} (from 0.npy)")
    H = wx.shape[1] // 4
    shapes = {1: (E, 4 * H), 6: (E, H), 7: (H, H), 8: (4 * H,), 9: (4 * H,), 10: (4 * H,),
              11: (H,), 12: (H,), 13: (H, VOCAB), 14: (VOCAB,)}
    for i, shape in shapes.items():
        if i not in arrays:
            arrays[i] = read_npy(path(i), describe(i, shape))
        _check_shape(path(i), arrays[i], shape, f"{FILES[i][0]}, {FILES[i][1]}")
    blocks = []
    for i in WH_FILES:
        what = f"wh block {i - 1} of 4, the hidden-to-gates matrix's columns, of shape [H, H] = {[H, H]}"
        block = read_npy(path(i), what)
        if block.ndim != 2 or block.shape[0] != H:
            raise ConvertError(f"{path(i)} has shape {tuple(block.shape)}; expected {what}")
        blocks.append(block)
    wh = np.concatenate(blocks, axis=1)
    if wh.shape != (H, 4 * H):
        raise ConvertError(f"{', '.join(path(i) for i in WH_FILES)} concatenate to shape "
                           f"{tuple(wh.shape)}; expected wh of shape [H, 4H] = {[H, 4 * H]}")
    source = {"format": "openai", "path": os.path.abspath(folder), "features": "final cell state"}
    if is_release(folder, E, H):
        source["sentiment_unit"] = SENTIMENT_UNIT
    a = arrays
    params = {
        "embedding/embedding": a[0],
        "layers/0/w_x/g": reorder_gates(a[9]), "layers/0/w_x/v": reorder_gates(a[1]),
        "layers/0/w_h/g": reorder_gates(a[10]), "layers/0/w_h/v": reorder_gates(wh),
        "layers/0/w_mx/g": a[11], "layers/0/w_mx/v": a[6],
        "layers/0/w_mh/g": a[12], "layers/0/w_mh/v": a[7],
        "layers/0/bias": reorder_gates(a[8]),
        "decoder/kernel": a[13], "decoder/bias": a[14],
    }
    weights = LMWeights(kind="mlstm", tokenizer=ByteTokenizer.openai(), params=params,
                        preprocess=_recorded_preprocess(folder), source=source)
    weights.check(folder)
    return weights


def floored_notes(weights: LMWeights) -> list[str]:
    """One note per OpenAI file whose weight-norm matrix has columns of norm below 1e-6 (the
    floor of ||v||^2 at 1e-12 sets their scale: w = g * v * 1e6, a zero column for a zero v;
    OpenAI's l2_normalize does the same), naming OpenAI's columns; [] if none."""
    found = weights.floored_columns()
    if not found:
        return []
    H = weights.hidden
    by_file: dict[str, list[int]] = {}
    for path, cols in found.items():
        name = path.rsplit("/", 1)[-1]
        for j in cols:
            block, r = GATE_ORDER[j // H] if name in ("w_x", "w_h") else 0, j % H
            if name == "w_x":
                by_file.setdefault("1.npy (wx)", []).append(block * H + r)
            elif name == "w_h":
                by_file.setdefault(f"{2 + block}.npy (wh block {1 + block} of 4)", []).append(r)
            else:
                label = "6.npy (wmx)" if name == "w_mx" else "7.npy (wmh)"
                by_file.setdefault(label, []).append(j)
    return [floored_note(f"{label} column{'s' if len(cols) > 1 else ''}", sorted(cols),
                          "OpenAI's l2_normalize does the same")
            for label, cols in sorted(by_file.items(), key=lambda kv: int(kv[0].split(".")[0]))]


def is_release(folder: str, embed: int, hidden: int) -> bool:
    """Whether ``folder`` looks like OpenAI's own model, whose sentiment unit is known: its
    (E, H) is the release's and no lmscale.json marks it as an lmscale export."""
    return (embed, hidden) == RELEASE_SHAPE and not os.path.exists(os.path.join(folder, SIDECAR))


def _recorded_preprocess(folder: str) -> str:
    """The preprocessing named in ``folder/lmscale.json`` (an lmscale export), else OpenAI's."""
    path = os.path.join(folder, SIDECAR)
    if not os.path.exists(path):
        return "openai"
    try:
        with open(path) as f:
            name = json.load(f)["preprocess"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{path} is unreadable ({e}); expected {{\"preprocess\": NAME}} as "
                           f"lmscale's export writes it") from None
    from lmscale.pretrained.preprocess import PREPROCESSORS
    if not isinstance(name, str) or name not in PREPROCESSORS:
        raise ConvertError(f"{path} names unknown text preprocessing {name!r}; expected one of "
                           f"{sorted(PREPROCESSORS)} (as lmscale's export writes it)")
    return name


def openai_arrays(weights: LMWeights) -> list[np.ndarray]:
    """The 15 arrays of OpenAI's layout (0.npy ... 14.npy) for a single-layer mLSTM.

    A model without weight norm gets g = ||w|| per column (exact); one with two biases, their
    sum as OpenAI's one b (the same forward). A sentiment-discovery
    vocabulary (257, id = byte + 1) loses its padding row 0: the cell and hidden states and
    the 256 byte logits are unchanged, but OpenAI's softmax runs over the 256 bytes only, so
    probabilities are renormalized without the padding id (negligible when padding was never
    a target).
    """
    if weights.kind != "mlstm" or weights.layers != 1:
        raise ConvertError(f"OpenAI's layout holds a single-layer mLSTM; this model is a "
                           f"{weights.layers}-layer {weights.kind}")
    weights.check("model")
    w = weights.with_weight_norm(True).with_two_biases(False).params  # OpenAI's one b
    emb, out_w, out_b = w["embedding/embedding"], w["decoder/kernel"], w["decoder/bias"]
    tok = weights.tokenizer
    if tok != ByteTokenizer.openai():
        if tok != ByteTokenizer.sentiment_discovery():
            raise ConvertError(f"OpenAI's layout uses raw byte ids; cannot map tokenizer {tok.to_dict()}")
        emb, out_w, out_b = emb[1:], out_w[:, 1:], out_b[1:]
    wh = reorder_gates(w["layers/0/w_h/v"])
    arrays = [emb, reorder_gates(w["layers/0/w_x/v"]), *np.split(wh, 4, axis=1),
              w["layers/0/w_mx/v"], w["layers/0/w_mh/v"], reorder_gates(w["layers/0/bias"]),
              reorder_gates(w["layers/0/w_x/g"]), reorder_gates(w["layers/0/w_h/g"]),
              w["layers/0/w_mx/g"], w["layers/0/w_mh/g"], out_w, out_b]
    return [np.ascontiguousarray(a, np.float32) for a in arrays]


def save_openai(weights: LMWeights, dst: str) -> list[str]:
    """Writes ``dst/0.npy`` ... ``dst/14.npy`` (see ``openai_arrays``), and ``lmscale.json``
    when the model expects other preprocessing than OpenAI's; returns the paths.

    ``dst`` must not exist or be empty, so nothing is overwritten.
    """
    arrays = openai_arrays(weights)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ConvertError(f"{dst} already exists and is not an empty folder; expected a new "
                           f"folder for OpenAI's {NUM_FILES} .npy files")
    os.makedirs(dst, exist_ok=True)
    paths = []
    for i, arr in enumerate(arrays):
        paths.append(os.path.join(dst, f"{i}.npy"))
        with atomic_write(paths[-1], "wb") as f:  # a full disk leaves no torn array file
            np.save(f, arr, allow_pickle=False)
    if weights.preprocess != "openai":
        paths.append(os.path.join(dst, SIDECAR))
        write_json(paths[-1], {"preprocess": weights.preprocess})
    return paths
