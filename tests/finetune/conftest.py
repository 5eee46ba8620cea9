"""Fixtures of the fine-tuning tests: the labeled data sets, cut to a few rows."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_data

# SemEval-2018 E-c's label columns, in its files' order
EMOTIONS = "anger,anticipation,disgust,fear,joy,love,optimism,pessimism,sadness,surprise,trust"


def run_tool(module: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` on the CPU; asserts it exits 0 (``ok``) or not."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert (p.returncode == 0) == ok, p.stderr[-2000:]
    return p


def _head(src: Path, dst: Path, rows: int) -> str:
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        lines = [next(reader) for _ in range(rows + 1)]
    with open(dst, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    return str(dst)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("labeled")
    sst, sem = shared_data("sst_binary"), shared_data("semeval2018_ec")
    return {"sst_train": _head(sst / "train.csv", d / "sst_train.csv", 256),
            "sst_val": _head(sst / "val.csv", d / "sst_val.csv", 64),
            "sem_train": _head(sem / "train.csv", d / "sem_train.csv", 128),
            "sem_val": _head(sem / "val.csv", d / "sem_val.csv", 64)}


def ft_config(init_from: str, train: str, val: str, **overrides):
    """A tiny fine-tune's locked config: 8 steps of 16 texts from ``init_from`` on ``train``,
    validated on ``val`` every 4 steps; ``overrides``: {"section.field": value}."""
    from lmscale.config import default_config
    c = default_config()
    c.init_from = init_from
    c.finetune.train, c.finetune.val = train, val
    c.train.steps, c.train.batch_size, c.train.log_every = 8, 16, 2
    c.train.eval_every, c.train.eval_batch_size, c.train.progress_bar = 4, 32, False
    c.checkpoint.every = 4
    c.finetune.bucket_width = 128  # few batch shapes: few compilations
    c.optim.lr, c.finetune.head_lr, c.optim.warmup_steps = 3e-3, 1e-2, 0
    c.optim.schedule = "constant"
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    c.lock()
    return c
