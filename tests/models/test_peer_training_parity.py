"""lmscale's training step against an independent PyTorch implementation of sentiment-
discovery's mLSTM and its training (``../shared/peer/torch_mlstm.py``: forward, mean
cross-entropy, backward, clip_grad_norm_(1.0), Adam 0.9/0.999/1e-8): the same weights and
batches through three steps of ``lmscale.train``'s jitted step with the optimizer of
``configs/mlstm4096.py``, the (h, c) carry kept between batches and state resets in the
second. The config's ``model.two_biases`` trains b_ih and b_hh as the peer does (one bias
moved their sum at half the rate, and counted its gradient once in the clip norm: losses
0.043 apart by step 20 of a 150-step run).

Needs torch (``pip install 'lmscale[torch]'``) and the peer (``LMSCALE_PEER``); skipped
otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmscale.config import config_from_file  # noqa: E402
from lmscale.pretrained.weights import path_key  # noqa: E402
from lmscale.training import mesh as mesh_lib  # noqa: E402
from lmscale.training.setup import build_train_setup, jit_train_step  # noqa: E402
from tests.conftest import REPO  # noqa: E402

# The peer lives outside the repository: LMSCALE_PEER names its file (the maintainers' CI
# keeps it beside the checkout, the default here)
PEER = Path(os.environ.get("LMSCALE_PEER") or REPO.parent / "shared" / "peer" / "torch_mlstm.py")
if not PEER.is_file():
    pytest.skip(f"no peer at {PEER}", allow_module_level=True)

H, B, T, LR, STEPS = 32, 4, 16, 1e-3, 3
MATRICES = {"w_ih": "w_x", "w_hh": "w_h", "w_mih": "w_mx", "w_mhh": "w_mh"}  # peer -> ours


def _peer():
    spec = importlib.util.spec_from_file_location("torch_mlstm_peer", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ours(w: dict[str, np.ndarray], like):
    """The peer's weights ``w`` in lmscale's tree ``like``: (out, in) matrices transposed,
    g [out] and v^T (the same norm per output unit), b_ih -> bias, b_hh -> bias_h."""
    names = {"embedding/embedding": w["embedding"], "decoder/kernel": w["dec_w"].T,
             "decoder/bias": w["dec_b"], "layers/0/bias": w["b_ih"], "layers/0/bias_h": w["b_hh"]}
    for theirs, ours in MATRICES.items():
        names[f"layers/0/{ours}/g"], names[f"layers/0/{ours}/v"] = w[theirs + "_g"], w[theirs + "_v"].T
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(names[path_key(p)], x.dtype), like)


def _peer_names(params) -> dict[str, np.ndarray]:
    flat = {path_key(p): np.asarray(x, np.float64)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    out = {"embedding": flat["embedding/embedding"], "dec_w": flat["decoder/kernel"].T,
           "dec_b": flat["decoder/bias"], "b_ih": flat["layers/0/bias"],
           "b_hh": flat["layers/0/bias_h"]}
    for theirs, ours in MATRICES.items():
        out[theirs + "_g"], out[theirs + "_v"] = flat[f"layers/0/{ours}/g"], flat[f"layers/0/{ours}/v"].T
    return out


def test_three_training_steps_match_sentiment_discoverys_recipe_in_pytorch():
    torch.set_num_threads(1)
    peer = _peer()
    w = peer.init_weights(0, H, perturb=True)
    w["dec_w"] = w["dec_w"] * 30.0  # a gradient norm past 1: clip_grad_norm_(1.0) acts
    rng = np.random.default_rng(1)
    batches = [(rng.integers(1, 257, (B, T)), rng.integers(1, 257, (B, T)),
                (rng.random((B, T)) < 0.1) if i == 1 else np.zeros((B, T), bool))
               for i in range(STEPS)]

    model = peer.MLSTMCharLM(w)
    opt = peer.make_optimizer(model, LR)
    state = model.zero_state(B)
    peer_loss, peer_norm = [], []
    for x, y, r in batches:
        opt.zero_grad(set_to_none=True)
        logits, (h, c), _, _ = model(torch.from_numpy(x), state,
                                     reset_mask=torch.from_numpy(r.astype(np.float32)))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y).reshape(-1))
        loss.backward()
        peer_norm.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        peer_loss.append(float(loss.detach()))
        state = (h.detach(), c.detach())
    assert max(peer_norm) > 1.5, peer_norm  # clipping acted

    config = config_from_file(str(REPO / "configs" / "mlstm4096.py"))
    config.unlock()
    assert (config.optim.clip, config.optim.b1, config.optim.b2, config.optim.eps,
            config.model.two_biases) == (1.0, 0.9, 0.999, 1e-8, True)
    config.model.hidden, config.train.batch_size, config.train.seq_len = H, B, T
    config.optim.warmup_steps = 0
    mesh = mesh_lib.make_mesh()
    setup = build_train_setup(config, 257, decay_steps=10**6, lr=LR, mesh=mesh)
    step, shardings = jit_train_step(setup, mesh)
    params = _ours(w, setup.state.params)
    st = jax.device_put(setup.state.replace(params=params, opt_state=setup.tx.init(params)),
                        shardings)
    ours_loss, ours_norm = [], []
    for x, y, r in batches:
        st, metrics = step(st, {"inputs": x.astype(np.int32), "targets": y.astype(np.int32),
                                "weights": np.ones((B, T), np.float32), "resets": r})
        ours_loss.append(float(metrics["loss"]))
        ours_norm.append(float(metrics["grad_norm"]))

    np.testing.assert_allclose(ours_loss, peer_loss, rtol=2e-6)
    np.testing.assert_allclose(ours_norm, peer_norm, rtol=1e-5)  # before clipping
    np.testing.assert_allclose(np.asarray(st.carry[0][0]), state[0].numpy(), atol=3e-5)
    np.testing.assert_allclose(np.asarray(st.carry[0][1]), state[1].numpy(), atol=3e-5)
    ours = _peer_names(st.params)
    for name, p in model.named_parameters():
        moved_peer = p.detach().numpy().astype(np.float64) - w[name]
        moved_ours = ours[name] - w[name]
        assert np.abs(moved_peer).max() > 1e-4, name
        # ~lr a step: agreeing far below one step (Adam's eps magnifies float32 noise in
        # gradients of ~1e-8, hence not tighter)
        np.testing.assert_allclose(moved_ours, moved_peer, atol=5e-5, rtol=0, err_msg=name)
