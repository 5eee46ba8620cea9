"""A fine-tune's best state: saved in WORKDIR/best/ with its record (step, metric, value),
which WORKDIR/best.json mirrors once the save is on disk; a resume reads the record back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from lmscale.atomic import write_json
from lmscale.training.checkpoints import Checkpointer


def keep_best(best_ckpt: Checkpointer, state: Any, meta: dict[str, Any], best_path: str,
              is_main: bool) -> None:
    """Saves the best state with its record (``meta["best"]``), and names it in best.json once
    it is on disk: written beside an asynchronous save, best.json named a step a failed save
    or a kill never completed (keep=1 having deleted the old)."""
    best_ckpt.save(state, meta)
    best_ckpt.wait()
    if is_main:
        write_json(best_path, meta["best"], indent=2)


def recorded_best(best_ckpt: Checkpointer, best_path: str, is_main: bool,
                  score: Callable[[int], dict[str, Any]]) -> dict[str, Any] | None:
    """The best state so far of a resumed fine-tune: the record in its best checkpoint (what a
    stop between the save and best.json left: best.json written again from it); an older
    run's best.json when it names the checkpoint kept; else ``score(step)`` of the kept
    weights (an older run stopped between its save and best.json: scored again, not taken
    over by a worse state); None when it kept none."""
    step = best_ckpt.latest_step()
    if step is None:
        return None
    best = best_ckpt.read_meta(step).get("best")
    if best is None and os.path.exists(best_path):  # saved before the record travelled with it
        best = json.loads(Path(best_path).read_text())
        if int(best["step"]) != step:
            best = None
    if best is None:
        best = score(step)
    if is_main:
        write_json(best_path, best, indent=2)
    return best
