"""The suite's file-by-file xdist scheduling (tests/xdist_scheduling.py) when a worker dies: the
crashed test is reported failed, every other test runs, and the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FILES = {
    "test_a.py": "def test_a1(): pass\ndef test_a2(): pass\ndef test_a3(): pass\n",
    # a worker that dies mid-file, as a segfault in a native library would take it down
    "test_b.py": "import os\ndef test_crash(): os._exit(1)\ndef test_after(): pass\n",
    "test_c.py": "def test_c1(): pass\n",  # a file of one test, run by the replacement worker
    "test_d.py": "import os\ndef test_last(): pass\ndef test_crash_last(): os._exit(1)\n",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crashed_worker_fails_its_test_and_the_run_goes_on(tmp_path: Path, workers: int):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this folder is the run's root
    (tmp_path / "conftest.py").write_text(
        "from tests.xdist_scheduling import pytest_xdist_make_scheduler  # noqa: F401\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    command = [sys.executable, "-m", "pytest", "-n", str(workers), "--dist", "loadfile",
               "-p", "no:cacheprovider", "-rA"]
    try:  # xdist 3.8's own scheduler never ended this run (both worker counts)
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={**env, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the run hung after a worker crashed: {hung.stdout!r}")
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "INTERNALERROR" not in run.stdout + run.stderr, run.stdout[-3000:]
    assert "= 2 failed, 6 passed in " in run.stdout.strip().splitlines()[-1], run.stdout[-3000:]
    for crashed in ("test_b.py::test_crash", "test_d.py::test_crash_last"):
        assert f"FAILED {crashed} - worker 'gw" in run.stdout, run.stdout[-3000:]
    for passed in ("test_a.py::test_a3", "test_b.py::test_after", "test_c.py::test_c1",
                   "test_d.py::test_last"):
        assert f"PASSED {passed}" in run.stdout, run.stdout[-3000:]
