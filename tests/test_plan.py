"""``python -m lmscale.plan``'s flags: bad values are one line before the compile; --json's folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

HUGE = "--config.model.hidden=1000000"  # a compile of this would not end: errors must come first


def plan(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.plan", "--config=configs/quickstart.py",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag, message", [
    ("--devices=-1", "flag --devices=-1: -1 is not a non-negative integer"),
    ("--latency_us=-3", "flag --latency_us=-3: -3.0 is not a non-negative number"),
    ("--memory_gib=-2", "flag --memory_gib=-2: -2.0 is not a non-negative number"),
    ("--memory_gib=nan", "flag --memory_gib=nan: must be a finite number"),
    ("--flops_per_s=-1e12", "flag --flops_per_s=-1e12: -1000000000000.0 is not a non-negative number"),
    ("--bandwidth_gbps=inf", "flag --bandwidth_gbps=inf: must be a finite number"),
])
def test_bad_numbers_are_one_line_before_the_compile(flag, message):
    """--devices=-1 was a ZeroDivisionError traceback; --latency_us=-3 lowered the all-reduce
    time; --memory_gib=-2 or nan exited 0 without a word."""
    proc = plan(HUGE, flag)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {message}", proc.stderr[-2000:]


def test_json_folder_is_created_or_refused_before_the_compile(tmp_path):
    """--json in a missing folder was a FileNotFoundError traceback after the compile."""
    (tmp_path / "file").write_text("")
    proc = plan(HUGE, f"--json={tmp_path / 'file' / 'plan.json'}")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: --json={tmp_path / 'file' / 'plan.json'}: cannot create its folder (a file is "
        f"in the way)"), proc.stderr[-2000:]
    proc = plan(f"--json={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: --json={tmp_path} is a folder; expected a file name"), proc.stderr[-2000:]
    out = tmp_path / "new" / "deeper" / "plan.json"
    proc = plan("--devices=1", "--config.model.hidden=32", "--config.model.embed=8",
                "--config.train.per_device_batch_size=2", "--config.train.seq_len=8",
                f"--json={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["devices"] == 1


def test_latency_without_the_projection_flags_is_refused_before_the_compile():
    """--latency_us alone was dropped: no projection, no word."""
    proc = plan(HUGE, "--latency_us=5")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: a projection needs both --flops_per_s and --bandwidth_gbps (> 0), got 0 and 0"
    ), proc.stderr[-2000:]


def test_json_dash_is_the_json_alone_on_stdout():
    """--json=-: standard output parses as JSON (the tables were printed before it)."""
    proc = plan("--config.model.hidden=32", "--json=-", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["devices"] >= 1
    assert "FLOPs" in proc.stderr


def test_json_to_standard_output_is_the_json_alone():
    """--json=- (and /dev/stdout): standard output holds the JSON alone (| jq), the tables
    (the plan's, the fit's and the projection's) on stderr."""
    for target in ("-", "/dev/stdout"):
        proc = plan("--devices=1", "--config.model.hidden=32", "--config.model.embed=8",
                    "--config.train.per_device_batch_size=2", "--config.train.seq_len=8",
                    f"--json={target}", "--memory_gib=1", "--flops_per_s=1e12",
                    "--bandwidth_gbps=10", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        assert result["devices"] == 1 and result["fit"] and result["projection"]["rows"]
        assert "memory/device" in proc.stderr and "all-reduces" in proc.stderr


def test_json_to_a_closed_standard_output_is_refused_before_the_compile():
    """`plan --json=- >&-` compiled, then printed the plan into nothing and exited 0."""
    proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-m",
                           "lmscale.plan", "--config=configs/quickstart.py", HUGE, "--json=-"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: standard output is closed (>&-) and --json=- writes the plan there: pass "
        "--json=FILE"), proc.stderr[-2000:]


def test_tables_to_a_closed_standard_output_are_refused_before_the_compile():
    """Without --json the tables on standard output are the plan: `plan >&-` compiled, printed
    them into nothing and exited 0, as --json=- did."""
    proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-m",
                           "lmscale.plan", "--config=configs/quickstart.py", HUGE],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: standard output is closed (>&-) and the plan's tables go there: pass "
        "--json=FILE"), proc.stderr[-2000:]
