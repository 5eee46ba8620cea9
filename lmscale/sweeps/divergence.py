"""Divergence of a run, read off its training records.

A run has diverged at the first train record whose loss is not finite, or exceeds
``factor`` times the lowest training loss logged before it (its running minimum). Train
records average the loss over ``train.log_every`` steps, so a single noisy step does not
trip it. The runner applies this to ``metrics.jsonl`` while a point trains (and stops it
with SIGTERM) and once more after it exits.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

DEFAULT_FACTOR = 1.5


def find_divergence(records: list[dict[str, Any]], factor: float = DEFAULT_FACTOR) -> dict[str, Any] | None:
    """The first diverged train record as ``{"step", "loss", "reason"}``, or None; a loss
    that is not finite is None (Python's ``NaN``/``Infinity`` are not JSON: JavaScript's,
    Go's and Rust's parsers refused the sweep's status files)."""
    best = math.inf
    for record in records:
        if record.get("split") != "train":
            continue
        loss = record.get("loss")
        if loss is None or not math.isfinite(loss):  # loss null: sweep_status.json stays JSON
            return {"step": record["step"], "loss": None,
                    "reason": f"non-finite loss at step {record['step']}"}
        if loss > factor * best:
            return {"step": record["step"], "loss": loss,
                    "reason": f"loss {loss:.3f} at step {record['step']} > {factor:g} x running minimum {best:.3f}"}
        best = min(best, loss)
    return None


def read_records(workdir: str) -> list[dict[str, Any]]:
    """The records of ``workdir/metrics.jsonl`` (none if absent); a line being written is skipped,
    as is a whole line that is no record (hand-edited, damaged: ``read_metrics`` leaves it out
    too, and a resume moves it to metrics.jsonl.damaged)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # half-written: read it next time
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records
