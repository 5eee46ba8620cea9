"""Sentiment transfer of a sweep's finished points (lmscale.transfer's library function).

Each ``ok`` point is transferred once: the results land in DIR/NAME/transfer/results.json
and a re-run reads them instead of featurizing again — unless they were made from other
labeled sets (then transferred again: a re-run naming new sets reported the old sets'
numbers under the new command). A point whose transfer fails is named; the others go on.
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
        from lmscale.transfer.labeled import check_held_out, label_columns, load_labeled
        if len(label_columns(self.label_column)) != 1:  # its report reads one binary task
            raise DataError(f"--label_column={self.label_column!r}: a sweep's transfer scores one "
                            "0/1 label column (the sentiment neuron's task); run lmscale.transfer "
                            "on a point for several labels")
        for path in (self.train, self.val, self.test):
            if path:
                load_labeled(path, text_column=self.text_column, label_column=self.label_column)
        # A test set that is the train file fails every point's transfer (lmscale.transfer
        # refuses it): refused here, before the sweep trains them all.
        check_held_out(self.train, self.val, self.test,
                       ("--transfer_train", "--transfer_val", "--transfer_test"),
                       "C is chosen (the largest wins)")


def transfer_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers a sweep report shows from a transfer results.json (a multi-label one, made
    by lmscale.transfer in a point's folder, has no neuron)."""
    a, n = results["all_features"], results.get("neuron") or {}
    return {"test_accuracy": a.get("test_accuracy"), "val_accuracy": a.get("val_accuracy"),
            "neuron": n.get("index"), "neuron_test_accuracy": n.get("test_accuracy"),
            "neuron_val_accuracy": n.get("val_accuracy"),
            "dimensions": results["features"]["dimensions"]}


def read_transfer(point_dir: str) -> dict[str, Any] | None:
    """The summary of a point's transfer results; None without them."""
    results = _read_results(point_dir)
    return None if results is None else transfer_summary(results)


def _read_results(point_dir: str) -> dict[str, Any] | None:
    """A point's transfer results.json; None without one (or a torn or hand-damaged one, without
    the numbers a report shows: transferred again)."""
    path = os.path.join(point_dir, "transfer", "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except ValueError:
        return None
    shown = isinstance(results, dict) and all(isinstance(results.get(k), dict)
                                              for k in ("all_features", "features"))
    return results if shown else None


def _made_from(results: dict[str, Any], sets: TransferSets) -> bool:
    """Whether ``results`` were made from ``sets`` (each split's file, compared as paths)."""
    recorded = results.get("data") or {}
    same_file = lambda a, b: os.path.realpath(os.path.expanduser(str(a))) == \
        os.path.realpath(os.path.expanduser(str(b)))  # noqa: E731
    for name, spec in (("train", sets.train), ("val", sets.val), ("test", sets.test)):
        source = (recorded.get(name) or {}).get("source")
        if bool(spec) != (source is not None) or (spec and not same_file(source, spec)):
            return False
    columns = results.get("columns") or {}  # recorded since this check: compared when there
    return all(columns.get(k, v) == v for k, v in (("text", sets.text_column),
                                                   ("label", sets.label_column)))


def _edited_since(point_dir: str, sets: TransferSets) -> bool:
    """Whether a labeled file was written after the point's results.json (edited in place:
    compared as paths only, its old accuracies stayed in the report)."""
    made = os.path.getmtime(os.path.join(point_dir, "transfer", "results.json"))
    for spec in (sets.train, sets.val, sets.test):
        path = os.path.expanduser(str(spec)) if spec else ""
        if path and os.path.isfile(path) and os.path.getmtime(path) > made:
            return True
    return False


def transfer_points(point_dirs: list[str], sets: TransferSets, log: Callable[[str], None]
                    ) -> dict[str, str]:
    """Transfers every point folder lacking results from ``sets`` (the report reads them from
    the folders); returns {folder: the one-line error} of those whose transfer failed."""
    from lmscale.config import ConfigError
    from lmscale.data.errors import DataError
    from lmscale.training.checkpoints import CheckpointError
    from lmscale.transfer.run import run_transfer
    failed = {}
    for point_dir in point_dirs:
        name = os.path.basename(point_dir)
        results = _read_results(point_dir)
        again = ""
        if results is not None:
            if not _made_from(results, sets):
                again = " (again: its results were made from other labeled sets)"
            elif _edited_since(point_dir, sets):
                again = " (again: a labeled file was written since its results)"
            else:
                continue
        log(f"sweep: transfer {name}{again}")
        try:
            run_transfer(point_dir, sets.train, sets.val, sets.test, text_column=sets.text_column,
                         label_column=sets.label_column, baseline="none", examples=2)
        except (ConfigError, DataError, CheckpointError, FileNotFoundError, OSError) as e:
            failed[point_dir] = str(e)
            log(f"sweep: transfer {name} failed: {e}")
    return failed
