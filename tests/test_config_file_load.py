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


def test_a_config_file_not_named_py_loads_and_a_failed_one_leaves_no_module(tmp_path):
    """SourceFileLoader.load_module() took any file name; spec_from_file_location finds no
    loader for one not ending in .py ("cannot load config file")."""
    from lmscale.cli import _json_config_parser
    parser = _json_config_parser()("config")
    cfg = tmp_path / "quick.cfg"
    cfg.write_text(open(os.path.join(REPO, "configs", "quickstart.py")).read())
    assert parser.parse(str(cfg)).model.kind == "mlstm"
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    sys.modules.pop("config_config", None)
    try:
        parser.parse(str(bad))
    except SyntaxError:
        pass
    assert "config_config" not in sys.modules
