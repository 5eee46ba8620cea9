"""benchmarks/peer_autocast.py: the PyTorch peer's training step under bfloat16 autocast.

Needs torch (the ``torch`` extra) and the peer at ../shared/peer; skipped otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import peer_autocast  # noqa: E402

if not peer_autocast.DEFAULT_PEER.is_file():
    pytest.skip(f"no peer at {peer_autocast.DEFAULT_PEER}", allow_module_level=True)
PEER = peer_autocast.load_peer(peer_autocast.DEFAULT_PEER)


def _one_step(step_fn, hidden=32, batch=4, seq=8):
    """(model, loss, h, c) after one ``step_fn`` step from the same weights and batch."""
    torch.manual_seed(0)
    model = PEER.MLSTMCharLM(PEER.init_weights(0, hidden), scan="autograd")
    opt = PEER.make_optimizer(model, 1e-3)
    data = torch.from_numpy(np.random.default_rng(1).integers(1, PEER.VOCAB, size=(batch, seq + 1)))
    loss, (h, c) = step_fn(model, opt, data[:, :-1], data[:, 1:], model.zero_state(batch))
    return model, loss, h, c


def test_the_forward_runs_in_bfloat16_and_the_update_in_float32():
    ref_model, ref_loss, _, _ = _one_step(PEER.train_step)
    model, loss, h, c = _one_step(peer_autocast.autocast_train_step)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert h.dtype == c.dtype == torch.float32
    # bfloat16 matmuls (8-bit mantissa) move the loss, but only at that level
    rel = abs(float(loss) - float(ref_loss)) / float(ref_loss)
    assert 1e-6 < rel < 2e-2, rel
    w, w_ref = model.w_hh_v.detach(), ref_model.w_hh_v.detach()
    assert not torch.equal(w, w_ref)
    assert torch.allclose(w, w_ref, atol=2e-3)  # one Adam step of lr 1e-3 either way


def test_only_the_autograd_scan_is_accepted():
    with pytest.raises(SystemExit, match="only --scan autograd"):
        peer_autocast.main(["bench", "--scan", "bptt"])
