"""A run's random keys follow the implementation it began with (``derived.prng_impl``), whatever
``JAX_DEFAULT_PRNG_IMPL`` says when it resumes: rbg's keys have 4 words, threefry's 2, and a
run begun under one and resumed under the other read its key as an unreadable checkpoint
("no checkpoint is left before it: start afresh")."""

from __future__ import annotations

import os

import jax
import pytest

from lmscale.config import load_config
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import tiny_config

STEPS = {"model.dropout": 0.1, "train.eval_every": 0, "checkpoint.every": 2, "train.log_every": 1}


def _losses(workdir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


@pytest.mark.parametrize("began, resumed", [("rbg", "threefry2x32"), ("threefry2x32", "rbg")])
def test_a_run_resumes_under_another_default_implementation_as_it_began(tmp_path, corpus,
                                                                       began, resumed):
    run, twin = str(tmp_path / "run"), str(tmp_path / "twin")
    with jax.default_prng_impl(began):
        train(tiny_config(corpus, **STEPS, **{"train.steps": 2}), run)
    with jax.default_prng_impl(resumed):
        assert train(tiny_config(corpus, **STEPS, **{"train.steps": 4}), run)["step"] == 4
    with jax.default_prng_impl(began):
        train(tiny_config(corpus, **STEPS, **{"train.steps": 4}), twin)
    assert _losses(run) == _losses(twin)  # the same dropout masks: the same run
    assert load_config(os.path.join(run, "config.json"))[1]["prng_impl"] == began
