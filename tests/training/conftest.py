"""A finished tiny training run the record and resume-message tests copy and change."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import tiny_config, write_corpus

# 4 steps, checkpoints at 2 and 4, a train record each step, no validation during training.
BASE = {"train.steps": 4, "train.log_every": 1, "train.eval_every": 0, "train.eval_steps": 1,
        "checkpoint.every": 2}


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> tuple[str, str]:
    """(corpus glob, workdir) of a finished BASE run, copied by each test that changes it."""
    from lmscale.training.loop import train
    root = tmp_path_factory.mktemp("base_run")
    corpus = write_corpus(root / "corpus")
    workdir = str(root / "run")
    train(tiny_config(corpus, **BASE), workdir)
    return corpus, workdir


def copy_run(base_run, tmp_path) -> tuple[str, str]:
    """A copy of ``base_run``'s workdir in ``tmp_path`` (its prepared data its own: data.train
    names the raw corpus)."""
    corpus, workdir = base_run
    target = str(tmp_path / "run")
    shutil.copytree(workdir, target)
    return corpus, target


def steps_on_disk(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in ``workdir``, ascending."""
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())

