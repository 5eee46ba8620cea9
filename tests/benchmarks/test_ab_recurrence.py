"""benchmarks/ab_recurrence.py: each file given is the recurrence its step runs (a
recurrent_loops.py variant under the current custom_vjp, or a whole recurrent_vjp.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

TINY = ["--hidden", "16", "--batch", "2", "--seq", "4", "--rounds", "1", "--steps", "1"]


def _run(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/ab_recurrence.py", "--files",
                           ",".join(files), *TINY], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_loops_variant_is_the_one_run(tmp_path):
    """The current loops and the current whole layer each time a step; a loops variant whose
    forward fails makes the run fail with its message, so its loops are the ones traced."""
    p = _run("lmscale/models/recurrent_loops.py", "lmscale/models/recurrent_vjp.py")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [l for l in p.stdout.splitlines() if "median" in l and "chars/s" in l]
    assert [l.split(":")[0] for l in lines] == ["lmscale/models/recurrent_loops.py",
                                                "lmscale/models/recurrent_vjp.py"]
    source = (REPO / "lmscale" / "models" / "recurrent_loops.py").read_text()
    marker = '    """The forward loop.'
    assert marker in source
    variant = tmp_path / "loops_variant.py"
    variant.write_text(source.replace(marker, '    raise RuntimeError("the variant ran")\n'
                                      + marker, 1))
    p = _run(str(variant))
    assert p.returncode != 0 and "the variant ran" in p.stderr
