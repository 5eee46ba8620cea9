"""Fine-tuning an imported LM (``lmscale.convert``) keeps the provenance that came with it."""

from __future__ import annotations

import os

from lmscale.config import load_config
from tests.pretrained.test_import_walk import imported_workdir


def test_a_fine_tune_of_an_import_keeps_its_provenance(tmp_path, data):
    from lmscale.finetuning.loop import finetune
    from tests.finetune.conftest import ft_config
    workdir, _ = imported_workdir(tmp_path)
    run = str(tmp_path / "ft")
    finetune(ft_config(workdir, data["sst_train"], data["sst_val"],
                       **{"train.steps": 2, "train.eval_every": 0, "checkpoint.every": 2}), run)
    _, derived = load_config(os.path.join(run, "config.json"))
    assert derived["pretrained"]["format"] == "sentiment-discovery"
    assert derived["pretrained"]["path"].endswith("lm.pt")
