"""``python -m lmscale.eval``'s flags."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_max_steps_below_minus_one_is_one_line_error(tmp_path):
    """--max_steps=-5 was taken as -1 (the run's train.eval_steps); only 0 and -1 have a meaning."""
    p = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={tmp_path}",
                        "--max_steps=-5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: flag --max_steps=-5: expected a count of batches, 0 (the whole split) or -1 (the "
        "run's train.eval_steps)"), p.stderr[-2000:]
