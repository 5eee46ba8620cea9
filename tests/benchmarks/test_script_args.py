"""Benchmark scripts refuse arguments they cannot run with, in one line and a failing status
(``finetune_long_texts.py --steps 1`` failed in its child and exited 0;
``transfer_c_search.py --features 16`` ended in a NumPy traceback; ``featurize_long_tail.py
--help`` took ``--help`` for a file)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("script, args, said", [
    ("finetune_long_texts.py", ["--steps", "1"], "--steps must be at least 2, got 1"),
    ("transfer_c_search.py", ["--features", "4"], "--features must be at least 8, got 4"),
    ("featurize_long_tail.py", ["--help"], "python benchmarks/featurize_long_tail.py"),
])
def test_bad_arguments_are_refused(script, args, said):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-2000:]
