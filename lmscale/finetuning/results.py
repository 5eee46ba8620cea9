"""A fine-tune's final results: its best parameters predict all of val (multi-label
thresholds tuned there, thresholds.json) and test; val_predictions.csv and results.json."""

from __future__ import annotations

import os
from typing import Any

from lmscale.atomic import write_json
from lmscale.finetuning.data import Encoded
from lmscale.finetuning.predict import Predictor, write_predictions
from lmscale.transfer.labeled import Labeled, constant_labels
from lmscale.transfer.metrics import (classification_metrics, format_table, predict_labels,
                                      tune_thresholds)


def final_results(workdir: str, params: Any, predict: Predictor, enc: dict[str, Encoded],
                  splits: dict[str, Labeled], ft: Any, class_names: list[str],
                  best: dict[str, Any], is_main: bool, started: dict[str, Any]
                  ) -> dict[str, Any]:
    """Best parameters on all of val (thresholds tuned there) and on test; results.json
    (with ``started``: the LM the classifier started from)."""
    probs = {n: predict(params, enc[n].ids) for n in ("val", "test") if n in enc}
    thresholds = (tune_thresholds(probs["val"], enc["val"].labels, ft.threshold_metric,
                                  fixed=constant_labels(splits["train"], note=False))
                  if ft.multilabel else None)
    results = {"best": best, "thresholds": None if thresholds is None else
               dict(zip(class_names, thresholds.tolist())), "metrics": {}, "lm": started}
    for name, pr in probs.items():
        results["metrics"][name] = classification_metrics(pr, enc[name].labels, ft.multilabel,
                                                          class_names, thresholds)
    if is_main:
        if thresholds is not None:
            write_json(os.path.join(workdir, "thresholds.json"),
                       {"classes": class_names, "thresholds": thresholds.tolist(),
                        "step": best["step"], "tuned_on": ft.val,
                        "tuned_for": ft.threshold_metric}, indent=2)
        write_predictions(os.path.join(workdir, "val_predictions.csv"), splits["val"].texts,
                          probs["val"], predict_labels(probs["val"], ft.multilabel, thresholds),
                          class_names, ft.multilabel, gold=splits["val"].labels)
        write_json(os.path.join(workdir, "results.json"), results, indent=2)
        print(format_table(results["metrics"]))
    return results
