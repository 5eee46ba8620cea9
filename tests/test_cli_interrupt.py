"""A tool started in the background by a script stops on SIGINT (its shell ignores SIGINT for
`&` jobs: `kill -INT` and the script's Ctrl-C did nothing to lmscale.transfer, eval, ...)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = f"""
{sys.executable} -c "
import time
from lmscale.cli import parse_flags
parse_flags(['tool'])
print('ready', flush=True)
time.sleep(120)
" > out.txt 2>&1 &
pid=$!
until grep -q ready out.txt 2>/dev/null; do sleep 0.2; done
kill -INT $pid
wait $pid
echo rc=$?
"""


def test_a_background_tool_stops_on_sigint(tmp_path):
    run = subprocess.run(["bash", "-c", f"cd {tmp_path}; export PYTHONPATH={REPO}; {SCRIPT}"],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.strip().endswith("rc=130"), (run.stdout, (tmp_path / "out.txt").read_text())
