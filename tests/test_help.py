"""The tools' --help texts (their module docstrings) keep the commands as written: a
backslash ending a line of a command is shown, not a line continuation inside the string that
joins two lines into one with a run of spaces."""

from __future__ import annotations

import ast
import glob
import os

from tests.conftest import REPO


def test_line_continuations_in_module_docstrings_are_kept():
    joined = []
    for path in sorted(glob.glob(os.path.join(REPO, "lmscale", "**", "*.py"), recursive=True)):
        source = open(path, encoding="utf-8").read()
        body = ast.parse(source).body
        if not body or not isinstance(body[0], ast.Expr) or not isinstance(
                getattr(body[0], "value", None), ast.Constant):
            continue
        written = ast.get_source_segment(source, body[0])
        if "\\\n" in written and "\\\n" not in body[0].value.value:
            joined.append(os.path.relpath(path, REPO))
    assert joined == [], f"make these docstrings raw (r\"\"\"): {joined}"


def test_the_weights_flags_are_listed_by_each_tools_help():
    """--step and --best (cli.define_weights_flags) were listed under --helpfull only, filed
    under lmscale/cli.py: absl's --help shows the main module's flags."""
    import subprocess
    import sys
    for tool in ("lmscale.eval", "lmscale.generate", "lmscale.transfer"):
        out = subprocess.run([sys.executable, "-m", tool, "--help"], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
        text = out.stdout + out.stderr
        assert "--[no]best:" in text and "--step:" in text, tool
