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
    run = run_pytest(tmp_path, FILES, workers)  # xdist 3.8's own never ended (both counts)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "INTERNALERROR" not in run.stdout + run.stderr, run.stdout[-3000:]
    assert "= 2 failed, 6 passed in " in run.stdout.strip().splitlines()[-1], run.stdout[-3000:]
    for crashed in ("test_b.py::test_crash", "test_d.py::test_crash_last"):
        assert f"FAILED {crashed} - worker 'gw" in run.stdout, run.stdout[-3000:]
    for passed in ("test_a.py::test_a3", "test_b.py::test_after", "test_c.py::test_c1",
                   "test_d.py::test_last"):
        assert f"PASSED {passed}" in run.stdout, run.stdout[-3000:]


def test_a_crashed_test_s_report_says_how_its_worker_died(tmp_path: Path):
    """A segfault's report quotes the worker's fatal-error dump (the signal, the test's line);
    one that left none says so. The dump went to the worker's stderr, far above the report."""
    run = run_pytest(tmp_path, {
        "test_a.py": "import ctypes\ndef test_segfault():\n    ctypes.string_at(0)\n"
                     "def test_after(): pass\n",
        "test_b.py": "import os\ndef test_exit(): os._exit(3)\n"}, workers=1)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "1 passed" in run.stdout, out[-3000:]
    report = run.stdout.split("crashed while running 'test_a.py::test_segfault'\n")[1]
    assert report.startswith("its fatal-error dump (faulthandler):\nFatal Python error: "
                             "Segmentation fault\n\nCurrent thread "), out[-3000:]
    assert 'test_a.py", line 3 in test_segfault' in report.split("\n\n")[1], report
    assert "worker 'gw1' crashed while running 'test_b.py::test_exit'\nit left no fatal-error " \
           "dump: it exited (os._exit), or was killed by a signal" in run.stdout, out[-3000:]


def run_pytest(folder: Path, files: dict[str, str], workers: int,
               conftest: str = "") -> subprocess.CompletedProcess:
    """``pytest -n workers --dist loadfile`` over ``files`` in ``folder`` with the suite's
    scheduler (and ``conftest``); fails the calling test where the run does not end in 60 s."""
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "pytest.ini").write_text("[pytest]\n")  # this folder is the run's root
    (folder / "conftest.py").write_text(
        "from tests.xdist_scheduling import (  # noqa: F401\n"
        "    pytest_configure_node, pytest_handlecrashitem, pytest_sessionstart,\n"
        "    pytest_xdist_make_scheduler)\n"
        + conftest)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    command = [sys.executable, "-m", "pytest", "-n", str(workers), "--dist", "loadfile",
               "-p", "no:cacheprovider", "-rA"]
    try:
        return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=60,
                              env={**env, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the run hung after a worker crashed: {hung.stdout!r}")


def test_a_replacement_worker_that_collects_other_tests_ends_the_run(tmp_path: Path):
    """A test module that fails to import in the replacement worker only (here by its name; a
    crash can leave a half-written file behind): the run's tests cannot be sent to that worker,
    and the run, which waited for it to take the crashed worker's files, hung."""
    run = run_pytest(tmp_path, {
        "test_a.py": "import os\ndef test_crash(): os._exit(1)\ndef test_after(): pass\n",
        "test_z.py": "import os\nassert os.environ['PYTEST_XDIST_WORKER'] != 'gw1'\n"
                     "def test_z1(): pass\n"}, workers=1)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "INTERNALERROR" not in out, out[-3000:]
    assert "FAILED test_a.py::test_crash - worker 'gw0' crashed" in run.stdout, out[-3000:]
    assert "Different tests were collected between gw0 and gw1" in run.stdout, out[-3000:]


def test_a_worker_that_dies_before_the_first_distribution_is_replaced(tmp_path: Path):
    """gw0 collects, then dies while gw1 still collects: its collection counted towards the
    two the first distribution waits for, and that was sent to gw1 before gw1 had collected
    (an internal error, KeyError)."""
    died = tmp_path / "gw0-died"
    conftest = (f"import os, pytest\n@pytest.hookimpl(tryfirst=True)\n"
                f"def pytest_runtestloop(session):  # in gw0, once its collection is sent\n"
                f"    if os.environ.get('PYTEST_XDIST_WORKER') == 'gw0':\n"
                f"        open({str(died)!r}, 'w').close()\n        os._exit(1)\n")
    run = run_pytest(tmp_path, {
        "test_a.py": f"import os, time\n"
                     f"if os.environ['PYTEST_XDIST_WORKER'] == 'gw1':\n"
                     f"    while not os.path.exists({str(died)!r}):\n        time.sleep(0.1)\n"
                     f"    time.sleep(3)  # gw0's replacement has started\n"
                     f"def test_a1(): pass\ndef test_a2(): pass\n",
        "test_b.py": "def test_b1(): pass\n"}, workers=2, conftest=conftest)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "INTERNALERROR" not in out, out[-3000:]
    assert "= 3 passed in " in run.stdout.strip().splitlines()[-1], out[-3000:]
