"""A multi-label column that is 0 in every training text: fine-tuning says so, and its
threshold stays 0.5 (tuned on val's rate it predicted the emotion for texts the head had
learned nothing of)."""

from __future__ import annotations

import csv
import json
import os

from tests.finetune.conftest import EMOTIONS, ft_config


def test_a_constant_label_is_said_and_keeps_its_train_value(sst_run, data, tmp_path, capfd):
    from lmscale.finetuning.loop import finetune
    with open(data["sem_train"], newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["surprise"] = "0"
    train = str(tmp_path / "no_surprise.csv")
    with open(train, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = str(tmp_path / "ft")
    finetune(ft_config(sst_run, train, data["sem_val"], **{
        "finetune.multilabel": True, "finetune.text_column": "Tweet",
        "finetune.label_column": EMOTIONS, "train.steps": 2, "train.eval_every": 2,
        "checkpoint.every": 2, "finetune.threshold_metric": "jaccard"}), run)
    err = capfd.readouterr().err
    assert err.count(f"note: {train}: label column 'surprise' is 0 in every text") == 1, err
    saved = json.load(open(os.path.join(run, "thresholds.json")))
    thresholds = dict(zip(saved["classes"], saved["thresholds"]))
    assert thresholds["surprise"] == 0.5
    assert sum(t != 0.5 for t in thresholds.values()) >= 5  # the others are tuned
