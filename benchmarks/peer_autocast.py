"""The PyTorch peer's ``bench`` with its forward under ``torch.autocast`` (CPU, bfloat16).

    ~/torch-peer/bin/python benchmarks/peer_autocast.py [--peer PATH] bench --hidden 1024 \
        --batch 64 --seq 64 --steps 5 --warmup 2 --threads 2 --scan autograd

What a PyTorch user does for mixed precision on a CPU: float32 parameters and Adam, the
forward (and so the matmuls of the backward) in bfloat16 where autocast casts, the loss in
float32. Loads ``../shared/peer/torch_mlstm.py`` (unchanged) from its path and replaces only
its ``train_step`` with one that wraps the forward in autocast; the bench, the model and the
timing are the peer's own. Only ``--scan autograd`` runs this way: the peer's hand-written
backward writes into float32 ``out=`` buffers, which autocast's bfloat16 results cannot fill.
Prints the peer's JSON line with ``"autocast": "bfloat16"`` added.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
except ModuleNotFoundError as e:  # run with the lmscale venv's python by mistake
    raise SystemExit(f"peer_autocast: {sys.executable} has no {e.name}: run it with the peer's "
                     f"interpreter (python3 -m venv ~/torch-peer; ~/torch-peer/bin/pip install "
                     f"torch; ~/torch-peer/bin/python benchmarks/peer_autocast.py ...)") from None

DEFAULT_PEER = Path(__file__).resolve().parents[2] / "shared" / "peer" / "torch_mlstm.py"


def load_peer(path: Path):
    """Imports the peer's module from ``path``."""
    if not path.is_file():
        raise SystemExit(f"peer_autocast: no peer at {path} (give --peer)")
    spec = importlib.util.spec_from_file_location("torch_mlstm_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def autocast_train_step(model, opt, tokens, targets, state, clip=1.0):
    """The peer's step (forward, mean cross-entropy, backward, clip, Adam) with the forward
    under bfloat16 autocast and the cross-entropy on float32 logits."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (h, c), _, _ = model(tokens, state)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.detach(), (h.detach().float(), c.detach().float())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", type=Path, default=DEFAULT_PEER)
    a, rest = ap.parse_known_args(argv)
    if "--scan" in rest and rest[rest.index("--scan") + 1] != "autograd":
        raise SystemExit("peer_autocast: only --scan autograd runs under autocast "
                         "(the hand-written backward's out= buffers are float32)")
    peer = load_peer(a.peer)
    peer.train_step = autocast_train_step
    printed = []
    real_print = print

    def capture(*args, **kwargs):  # the peer prints its record; tag it before it goes out
        if args and isinstance(args[0], str) and args[0].startswith("{"):
            rec = json.loads(args[0])
            rec["autocast"] = "bfloat16"
            printed.append(rec)
            args = (json.dumps(rec),) + args[1:]
        real_print(*args, **kwargs)

    peer.print = capture
    peer.main(rest)
    if not printed:
        sys.exit("peer_autocast: the peer printed no JSON record")


if __name__ == "__main__":
    main()
