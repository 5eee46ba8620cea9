"""--config=FILE.py is loaded without importlib's deprecated load_module()."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_config_file_loads_with_deprecation_warnings_as_errors(tmp_path):
    """ml_collections' loader called SourceFileLoader.load_module() (deprecated since Python
    3.10, slated for removal): with -W error::DeprecationWarning every tool refused its
    --config=FILE.py ("error: DeprecationWarning: the load_module() method is deprecated")."""
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-m", "lmscale.plan",
         f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
         "--config.model.hidden=32", "--config.model.embed=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert "load_module" not in proc.stderr
    assert "hidden 32" in proc.stdout
