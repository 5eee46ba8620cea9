"""Run by test_awd_regularizers.py in a subprocess with 8 fake CPU devices (XLA_FLAGS).

    python -m tests.models.awd_multi_device_worker

Three train steps of a tiny QRNN and AWD-LSTM with every regularizer on (embedding, locked,
weight dropout, zoneout, AR/TAR, tied embeddings, adaptive softmax), on 1 and on 8 devices
from the same state and batches; prints one JSON line: per kind and device count, the logged
losses, grad norms and the final parameters' checksum-free difference.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from flax import nnx

from lmscale.config import default_config
from lmscale.models import build_model
from lmscale.training import mesh as mesh_lib
from lmscale.training.optimizer import make_optimizer
from lmscale.training.state import create_state, state_shardings
from lmscale.training.steps import make_train_step

B, T, V = 8, 6, 13


def run(kind: str, devices: list) -> tuple[list[float], list[float], list[np.ndarray]]:
    c = default_config()
    c.model.update(kind=kind, hidden=8, embed=6, layers=2, weight_norm=False, embed_dropout=0.1,
                   input_dropout=0.2, hidden_dropout=0.2, output_dropout=0.3, weight_dropout=0.3,
                   ar_alpha=2.0, tar_beta=1.0, tie_embeddings=True, adaptive_cutoffs="5",
                   qrnn_zoneout=0.1)
    model = build_model(c.model, V, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(c.optim, 10)
    graphdef, state = create_state(model, tx, B, seed=0)
    mesh = mesh_lib.make_mesh(devices)
    shardings = state_shardings(state, mesh)
    step = jax.jit(make_train_step(graphdef, tx, schedule, mesh, dropout=True),
                   in_shardings=(shardings, mesh_lib.batch_sharded(mesh)))
    state = jax.device_put(state, shardings)
    rng = np.random.default_rng(0)
    losses, norms = [], []
    for _ in range(3):
        weights = np.ones((B, T), np.float32)
        weights[rng.integers(0, B), : rng.integers(1, T)] = 0
        batch = {"inputs": rng.integers(0, V, (B, T)).astype(np.int32),
                 "targets": rng.integers(0, V, (B, T)).astype(np.int32), "weights": weights,
                 "resets": rng.random((B, T)) < 0.1}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return losses, norms, [np.asarray(x) for x in jax.tree.leaves(state.params)]


def main() -> None:
    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 fake devices, got {len(devices)}"
    result = {}
    for kind in ("qrnn", "lstm"):
        l1, n1, p1 = run(kind, devices[:1])
        l8, n8, p8 = run(kind, devices)
        result[kind] = {"loss1": l1, "loss8": l8, "norm1": n1, "norm8": n8,
                        "param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p8))}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
