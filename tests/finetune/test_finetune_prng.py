"""A fine-tune's random keys follow the implementation it began with, whatever
``JAX_DEFAULT_PRNG_IMPL`` says when it resumes (training's: tests/training/test_prng_impl.py)."""

from __future__ import annotations

import os

from tests.finetune.conftest import ft_config


def test_a_fine_tune_begun_under_rbg_keys_resumes_without_them(sst_run, data, tmp_path):
    """JAX_DEFAULT_PRNG_IMPL=rbg when a fine-tune began, unset when it resumed: its key of 4
    words was an unreadable checkpoint."""
    import jax
    from lmscale.config import load_config
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    workdir = str(tmp_path / "ft")
    overrides = {"finetune.head_dropout": 0.2, "train.eval_every": 0, "checkpoint.every": 2}
    with jax.default_prng_impl("rbg"):
        finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                           **{**overrides, "train.steps": 2}), workdir)
    result = finetune(ft_config(sst_run, data["sst_train"], data["sst_val"],
                                **{**overrides, "train.steps": 4}), workdir)
    assert not result["stopped"] and not result["already_trained"]
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"][-1] == 4
    assert load_config(os.path.join(workdir, "config.json"))[1]["prng_impl"] == "rbg"
