"""Sentiment transfer of a sweep's finished points (lmscale.transfer's library function).

Each ``ok`` point is transferred once: the results land in DIR/NAME/transfer/results.json
and a re-run reads them instead of featurizing again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable


@dataclasses.dataclass
class TransferSets:
    train: str
    val: str
    test: str | None = None
    text_column: str = "sentence"
    label_column: str = "label"

    def check(self) -> None:
        """Reads each labeled set once (files, columns, labels), so that a typo is found
        before the sweep trains, not after every point has (DataError naming it)."""
        from lmscale.data.errors import DataError
        from lmscale.transfer.labeled import label_columns, load_labeled
        if len(label_columns(self.label_column)) != 1:  # its report reads one binary task
            raise DataError(f"--label_column={self.label_column!r}: a sweep's transfer scores one "
                            "0/1 label column (the sentiment neuron's task); run lmscale.transfer "
                            "on a point for several labels")
        for path in (self.train, self.val, self.test):
            if path:
                load_labeled(path, text_column=self.text_column, label_column=self.label_column)


def transfer_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers a sweep report shows from a transfer results.json (a multi-label one, made
    by lmscale.transfer in a point's folder, has no neuron)."""
    a, n = results["all_features"], results.get("neuron") or {}
    return {"test_accuracy": a.get("test_accuracy"), "val_accuracy": a.get("val_accuracy"),
            "neuron": n.get("index"), "neuron_test_accuracy": n.get("test_accuracy"),
            "dimensions": results["features"]["dimensions"]}


def read_transfer(point_dir: str) -> dict[str, Any] | None:
    path = os.path.join(point_dir, "transfer", "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return transfer_summary(json.load(f))


def transfer_points(point_dirs: list[str], sets: TransferSets,
                    log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Transfers every point folder lacking results; returns {folder: summary} for all of them."""
    from lmscale.transfer.run import run_transfer
    out = {}
    for point_dir in point_dirs:
        summary = read_transfer(point_dir)
        if summary is None:
            log(f"sweep: transfer {os.path.basename(point_dir)}")
            results = run_transfer(point_dir, sets.train, sets.val, sets.test,
                                   text_column=sets.text_column, label_column=sets.label_column,
                                   baseline="none", examples=2)
            summary = transfer_summary(results)
        out[point_dir] = summary
    return out
