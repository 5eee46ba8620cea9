"""Sweep test helpers: a tiny config file and sweep files written into a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_corpus

TINY_CONFIG = """
from lmscale.config import default_config


def get_config():
    c = default_config()
    c.data.train = {corpus!r}
    c.data.split = "8,1,1"
    c.model.hidden = 16
    c.model.embed = 8
    c.train.steps = 20
    c.train.batch_size = 4
    c.train.seq_len = 16
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.eval_batch_size = 4
    c.train.eval_steps = 2
    c.train.progress_bar = False
    c.optim.lr = 3e-3
    c.checkpoint.every = 100000
    c.lock()
    return c
"""


def write_sweep(path: Path, body: str) -> str:
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with corpus/ and tiny.py (a 16-unit mLSTM, 20 steps of 4 x 16 characters)."""
    root = tmp_path_factory.mktemp("sweep")
    corpus = write_corpus(root / "corpus", files=2, lines=200)
    (root / "tiny.py").write_text(TINY_CONFIG.format(corpus=corpus))
    return root


def base_config(root: Path):
    from lmscale.config import config_from_file
    return config_from_file(str(root / "tiny.py"))
