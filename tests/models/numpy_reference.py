"""Independent float64 NumPy references written from the mLSTM/LSTM equations.

Per-time-step Python loops, batch-major [B, T, ...], x @ W convention:
  mLSTM: m = (x W_mx) * (h W_mh); z = x W_x + m W_h + b;  LSTM: z = x W_x + h W_h + b
  i, f, g, o = split(z, 4); c = s(f) c + s(i) tanh(g); h = s(o) tanh(c)
Resets zero h and c before step t where resets[b, t] is True.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """w[:, j] = g[j] * v[:, j] / ||v[:, j]||."""
    g, v = np.asarray(g, np.float64), np.asarray(v, np.float64)
    return g[None, :] * v / np.sqrt((v ** 2).sum(axis=0, keepdims=True))


def np_rnn(kind: str, xs, h0, c0, w: dict, resets=None):
    """xs [B, T, in]; w has w_x, w_h, b (+ w_mx, w_mh for mlstm), already weight-normed.

    Returns (hs [B, T, H], cs [B, T, H], (h, c)), float64.
    """
    xs = np.asarray(xs, np.float64)
    h, c = np.array(h0, np.float64), np.array(c0, np.float64)
    B, T, _ = xs.shape
    H = h.shape[1]
    hs, cs = np.zeros((B, T, H)), np.zeros((B, T, H))
    for t in range(T):
        if resets is not None:
            keep = 1.0 - np.asarray(resets[:, t], np.float64)[:, None]
            h, c = h * keep, c * keep
        x = xs[:, t]
        if kind == "mlstm":
            m = (x @ w["w_mx"]) * (h @ w["w_mh"])
            z = x @ w["w_x"] + m @ w["w_h"] + w["b"]
        else:
            z = x @ w["w_x"] + h @ w["w_h"] + w["b"]
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        hs[:, t], cs[:, t] = h, c
    return hs, cs, (h, c)


def np_lm(kind: str, tokens, embedding, layer_weights: list[dict], decoder_kernel,
          decoder_bias, carry, resets=None):
    """Embedding -> layers -> decoder. Returns (logits [B, T, V], [(h, c) per layer])."""
    x = np.asarray(embedding, np.float64)[np.asarray(tokens)]
    new_carry = []
    for w, (h0, c0) in zip(layer_weights, carry):
        x, _, hc = np_rnn(kind, x, h0, c0, w, resets)
        new_carry.append(hc)
    logits = x @ np.asarray(decoder_kernel, np.float64) + np.asarray(decoder_bias, np.float64)
    return logits, new_carry
