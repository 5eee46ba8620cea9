"""A fine-tune whose parameters stop being finite: stopped with one error, nothing kept."""

from __future__ import annotations

import os

import pytest

from tests.finetune.conftest import ft_config


def test_a_diverged_fine_tune_stops_and_keeps_no_nan_classifier(sst_run, data, tmp_path):
    """A fine-tune whose parameters stopped being finite (here an infinite learning rate)
    ran to its end, kept its NaN classifier as the "best" (one class predicted for every
    text) and saved NaN checkpoints: it stops at its first evaluation with the LM loop's
    one error, writes no best weights, and closes what it opened."""
    import threading

    from lmscale.finetuning.loop import finetune
    from lmscale.training.diverged import DivergedError
    threads = {t.ident for t in threading.enumerate()}
    config = ft_config(sst_run, data["sst_train"], data["sst_val"],
                       **{"optim.lr": 3e38, "finetune.head_lr": 3e38})
    run = tmp_path / "ft"
    with pytest.raises(DivergedError, match=r"^the parameters are not finite at step 4: not "
                                            r"saved, and no checkpoint was written before it; "
                                            r"start over \(config.resume = False\) with a lower "
                                            r"optim.lr, finetune.head_lr or optim.clip$"):
        finetune(config, str(run))
    assert not (run / "best.json").exists() and not (run / "results.json").exists()
    events = [f for f in os.listdir("/proc/self/fd")
              if "tfevents" in os.path.realpath(f"/proc/self/fd/{f}")]
    assert events == []
    assert [t.name for t in threading.enumerate()
            if t.ident not in threads and t.name != "tqdm_monitor"] == []
