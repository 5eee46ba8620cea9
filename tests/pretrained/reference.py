"""Independent float64 NumPy implementations of the originals, in the originals' own layouts.

Written from the equations of OpenAI's encoder.py / utils.py and sentiment-discovery's
model/RNN_utils/RNN cells (not from lmscale's code), one time step at a time, with their
weight-norm conventions, gate orders, bias layouts and byte ids. Also writers of synthetic
weights in each original layout.
"""

from __future__ import annotations

import html
import os
from typing import Any

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- OpenAI (TensorFlow, x @ W)

def openai_text_bytes(text: str) -> bytes:
    """utils.preprocess: html.unescape, '\\n' -> ' ', strip, '\\n ' + text + ' ', encode."""
    body = html.unescape(text).replace("\n", " ").strip()
    return f"\n {body} ".encode()


def write_openai_files(folder: str, embed: int, hidden: int, seed: int) -> list[np.ndarray]:
    """Random weights as OpenAI's 15 files (wh in four [H, H] column blocks); returns them."""
    rng = np.random.default_rng(seed)
    E, H = embed, hidden
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    gain = lambda n: rng.uniform(0.5, 1.5, (n,)).astype(np.float32)
    arrays = [u(256, E), u(E, 4 * H), u(H, H), u(H, H), u(H, H), u(H, H), u(E, H), u(H, H),
              u(4 * H), gain(4 * H), gain(4 * H), gain(H), gain(H), u(H, 256), u(256)]
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(os.path.join(folder, f"{i}.npy"), a)
    return arrays


def read_openai_files(folder: str) -> list[np.ndarray]:
    """The 12 tensors the TF graph consumes: files 2-5 joined along axis 1."""
    files = [np.load(os.path.join(folder, f"{i}.npy")).astype(np.float64) for i in range(15)]
    return [files[0], files[1], np.concatenate(files[2:6], axis=1)] + files[6:]


def openai_forward(params: list[np.ndarray], ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Byte ids [T] -> (logits [T, 256], cell states [T, H]) from zero state."""
    embd, wx, wh, wmx, wmh, b, gx, gh, gmx, gmh, out_w, out_b = params

    def l2_normalize_cols(w: np.ndarray) -> np.ndarray:  # tf.nn.l2_normalize(w, dim=0)
        return w / np.sqrt(np.maximum(np.sum(w * w, axis=0, keepdims=True), 1e-12))

    wx, wh = l2_normalize_cols(wx) * gx, l2_normalize_cols(wh) * gh
    wmx, wmh = l2_normalize_cols(wmx) * gmx, l2_normalize_cols(wmh) * gmh
    H = wmh.shape[0]
    h, c = np.zeros(H), np.zeros(H)
    hs, cs = [], []
    for token in np.asarray(ids):
        x = embd[token]
        m = (x @ wmx) * (h @ wmh)
        z = x @ wx + m @ wh + b
        i, f, o, u = (z[k * H:(k + 1) * H] for k in range(4))  # candidate last
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(u)
        h = sigmoid(o) * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return np.stack(hs) @ out_w + out_b, np.stack(cs)


# ------------------------------------------------- sentiment-discovery (PyTorch, y = x W^T + b)

def make_sd_state_dict(vocab: int, embed: int, hidden: int, layers: int, *, kind: str = "mlstm",
                       weight_norm: bool = True, seed: int = 0, zero_b_hh: bool = False
                       ) -> dict[str, Any]:
    """A random RNNModel.state_dict(): nested, (out, in) weights, g [out, 1] / v when weight-normed."""
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    H = hidden
    rnn: dict[str, np.ndarray] = {}
    for l in range(layers):
        inp = embed if l == 0 else H
        mats = {"w_ih": (4 * H, inp), "w_hh": (4 * H, H)}
        if kind == "mlstm":
            mats.update(w_mih=(H, inp), w_mhh=(H, H))
        for name, shape in mats.items():
            if weight_norm:
                rnn[f"rnns.{l}.{name}_g"] = rng.uniform(0.5, 1.5, (shape[0], 1)).astype(np.float32)
                rnn[f"rnns.{l}.{name}_v"] = u(*shape)
            else:
                rnn[f"rnns.{l}.{name}"] = u(*shape)
        rnn[f"rnns.{l}.b_ih"] = u(4 * H)
        rnn[f"rnns.{l}.b_hh"] = np.zeros(4 * H, np.float32) if zero_b_hh else u(4 * H)
    return {"encoder": {"encoder": {"weight": u(vocab, embed)}, "rnn": rnn},
            "decoder": {"weight": u(vocab, H), "bias": u(vocab)}}


def sd_forward(state_dict: dict[str, Any], ids: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Token ids [T] -> (logits [T, V], per-layer cell states [T, H]) from zero state."""
    rnn = {k: np.asarray(v, np.float64) for k, v in state_dict["encoder"]["rnn"].items()}
    emb = np.asarray(state_dict["encoder"]["encoder"]["weight"], np.float64)
    dec_w = np.asarray(state_dict["decoder"]["weight"], np.float64)
    dec_b = np.asarray(state_dict["decoder"]["bias"], np.float64)

    def weight(key: str) -> np.ndarray:  # reparameterization/weight_norm.py, dim=0: per row
        if key in rnn:
            return rnn[key]
        g, v = rnn[key + "_g"], rnn[key + "_v"]
        return v * (g.reshape(-1, 1) / np.sqrt(np.sum(v * v, axis=1, keepdims=True)))

    linear = lambda x, w, b=None: x @ w.T + (0.0 if b is None else b)
    layers = 1 + max(int(k.split(".")[1]) for k in rnn)
    mlstm = any("w_mih" in k for k in rnn)
    H = dec_w.shape[1]
    xs = emb[np.asarray(ids)]
    cells = []
    for l in range(layers):
        w = lambda name: weight(f"rnns.{l}.{name}")
        b_ih, b_hh = rnn.get(f"rnns.{l}.b_ih"), rnn.get(f"rnns.{l}.b_hh")
        h, c = np.zeros(H), np.zeros(H)
        hs, cs = [], []
        for x in xs:
            hidden_in = linear(x, w("w_mih")) * linear(h, w("w_mhh")) if mlstm else h
            gates = linear(x, w("w_ih"), b_ih) + linear(hidden_in, w("w_hh"), b_hh)
            i, f, g, o = np.split(gates, 4)  # chunk(4, 1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            hs.append(h)
            cs.append(c)
        xs = np.stack(hs)
        cells.append(np.stack(cs))
    return linear(xs, dec_w, dec_b), cells


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
