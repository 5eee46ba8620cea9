"""benchmarks/missing_requirements.py: names what a Python lacks of a pyproject's requirements."""

import importlib.metadata
import json
import subprocess
import sys

import pytest

from benchmarks.missing_requirements import requirements, unmet

NUMPY = importlib.metadata.version("numpy")


def _pyproject(tmp_path, deps, extras=None):
    lines = ["[project]", 'name = "x"', f"dependencies = {json.dumps(deps)}"]
    if extras:
        lines.append("[project.optional-dependencies]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in extras.items()]
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_names_absent_and_out_of_range_requirements_only(tmp_path):
    path = _pyproject(tmp_path, ["numpy>=1.0", "numpy<1.0", "no-such-dist-lmscale>=2"],
                      {"test": ["pytest>=1"]})
    reqs = requirements(path, ["test"])
    assert [r.name for r in reqs] == ["numpy", "numpy", "no-such-dist-lmscale", "pytest"]
    assert unmet(reqs) == [f"numpy<1.0 (have {NUMPY})", "no-such-dist-lmscale"]


def test_single_requirements_picked_from_extras(tmp_path):
    path = _pyproject(tmp_path, ["numpy"], {"test": ["pytest>=1", "no-such-dist-lmscale"]})
    assert [str(r) for r in requirements(path, [], ["pytest"])] == ["numpy", "pytest>=1"]
    with pytest.raises(SystemExit, match="no optional requirement named 'nose'"):
        requirements(path, [], ["nose"])


def test_marker_for_another_python_is_skipped(tmp_path):
    path = _pyproject(tmp_path, ['no-such-dist-lmscale; python_version < "3.0"'])
    assert unmet(requirements(path, [])) == []


def test_unknown_extra_is_an_error_naming_the_file(tmp_path):
    path = _pyproject(tmp_path, [], {"test": []})
    with pytest.raises(SystemExit, match="pyproject.toml: no optional extra"):
        requirements(path, ["gpu"])


def test_this_repository_needs_nothing_here():
    # The environment the tests run in has everything pyproject.toml asks for.
    out = subprocess.run([sys.executable, "benchmarks/missing_requirements.py", "--extras", "test"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
