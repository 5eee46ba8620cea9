"""Independent float64 NumPy reference of the decoder-only transformer, from the equations.

Batch-major, x @ W convention, one query at a time for attention:
  x = sqrt(d) E[tok] + P[pos]      (pos restarts at 0 at each reset; P learned or sinusoidal;
                                   GPT-2's parameterization: E[tok] + P[pos], embed_scale=1)
  post: x = LN(x + Attn(x));  x = LN(x + FF(x))
  pre:  x = x + Attn(LN(x));  x = x + FF(LN(x));  final LN after the last block
  Attn: q, k, v = x Wq + bq, x Wk + bk, x Wv + bv split into heads; token t attends to tokens
        s <= t of its segment (segment = number of resets up to and including t) with
        softmax(q.k / sqrt(D)); out = concat(heads) Wo + bo
  FF(x) = GeLU_tanh(x W1 + b1) W2 + b2;  logits = x W_out + b_out
"""

from __future__ import annotations

import math

import numpy as np


def np_layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = 1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_sinusoidal(positions: np.ndarray, dim: int) -> np.ndarray:
    """fairseq: [sin(p w_i) | cos(p w_i)], w_i = 10000^(-i / (dim/2 - 1)), i < dim/2."""
    half = dim // 2
    w = 10000.0 ** (-np.arange(half) / max(half - 1, 1))
    angles = np.asarray(positions, np.float64)[..., None] * w
    out = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    if dim % 2:
        out = np.concatenate([out, np.zeros(out.shape[:-1] + (1,))], axis=-1)
    return out


def np_segments(resets: np.ndarray | None, batch: int, steps: int):
    """(segment ids [B, T], positions [B, T]) by walking along time."""
    seg = np.zeros((batch, steps), np.int64)
    pos = np.zeros((batch, steps), np.int64)
    for b in range(batch):
        s, p = 0, 0
        for t in range(steps):
            if resets is not None and resets[b, t]:
                s, p = s + 1, 0
            seg[b, t], pos[b, t] = s, p
            p += 1
    return seg, pos


def np_attention(x: np.ndarray, w: dict, heads: int, seg: np.ndarray) -> np.ndarray:
    """x [B, T, d] -> [B, T, d]; w has wq, wk, wv, bq, bk, bv, wo, bo."""
    B, T, d = x.shape
    D = d // heads
    q = (x @ w["wq"] + w["bq"]).reshape(B, T, heads, D)
    k = (x @ w["wk"] + w["bk"]).reshape(B, T, heads, D)
    v = (x @ w["wv"] + w["bv"]).reshape(B, T, heads, D)
    out = np.zeros((B, T, heads, D))
    for b in range(B):
        for t in range(T):
            allowed = [s for s in range(t + 1) if seg[b, s] == seg[b, t]]
            for h in range(heads):
                scores = np.array([q[b, t, h] @ k[b, s, h] for s in allowed]) / math.sqrt(D)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[b, t, h] = sum(pi * v[b, s, h] for pi, s in zip(p, allowed))
    return out.reshape(B, T, d) @ w["wo"] + w["bo"]


def np_feed_forward(x: np.ndarray, w: dict) -> np.ndarray:
    return np_gelu_tanh(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]


def np_block(x: np.ndarray, w: dict, heads: int, norm: str, seg: np.ndarray) -> np.ndarray:
    """One block; w also has ln1_scale, ln1_bias (attention LN), ln2_scale, ln2_bias (FF LN)."""
    ln1 = lambda y: np_layer_norm(y, w["ln1_scale"], w["ln1_bias"])
    ln2 = lambda y: np_layer_norm(y, w["ln2_scale"], w["ln2_bias"])
    if norm == "post":
        x = ln1(x + np_attention(x, w, heads, seg))
        return ln2(x + np_feed_forward(x, w))
    x = x + np_attention(ln1(x), w, heads, seg)
    return x + np_feed_forward(ln2(x), w)


def np_transformer(tokens: np.ndarray, weights: dict, *, heads: int, norm: str,
                   resets: np.ndarray | None = None, embed_scale: float | None = None):
    """weights: embedding [V, d], positions [max_len, d] or None (sinusoidal), blocks (list of
    block dicts), final_scale/final_bias (pre-norm), head [d, V], head_bias [V] or None.

    Returns (logits [B, T, V], hidden [L, B, T, d]) in float64 (the last hidden entry is
    after the final LN for pre-norm). ``embed_scale``: the token embeddings' factor (None:
    sqrt(d)).
    """
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    emb = np.asarray(weights["embedding"], np.float64)
    d = emb.shape[1]
    seg, pos = np_segments(None if resets is None else np.asarray(resets), B, T)
    table = weights.get("positions")
    x = (math.sqrt(d) if embed_scale is None else embed_scale) * emb[tokens]
    x = x + (np.asarray(table, np.float64)[pos] if table is not None else np_sinusoidal(pos, d))
    hidden = []
    for w in weights["blocks"]:
        x = np_block(x, w, heads, norm, seg)
        hidden.append(x)
    if norm == "pre":
        x = np_layer_norm(x, weights["final_scale"], weights["final_bias"])
        hidden[-1] = x
    logits = x @ weights["head"]
    if weights.get("head_bias") is not None:
        logits = logits + weights["head_bias"]
    return logits, np.stack(hidden)
