"""generate's input checks and record on an imported OpenAI model: non-finite settings are
refused in one line, samples.json names the state a unit was held in, and OpenAI's raw
files given as the run get the convert command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmscale.data.errors import DataError
from lmscale.generation import generate
from tests.conftest import REPO
from tests.transfer.conftest import random_lm


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[str, str]:
    """(OpenAI's files of a tiny random model, the workdir imported from them)."""
    from lmscale.pretrained.openai import load_openai
    from lmscale.pretrained.workdir import write_workdir
    from tests.pretrained import reference as ref
    root = tmp_path_factory.mktemp("gen")
    files, workdir = str(root / "openai"), str(root / "run")
    ref.write_openai_files(files, 8, 16, seed=3)
    write_workdir(load_openai(files), workdir)
    return files, workdir


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.generate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("setting", [{"temperature": float("nan")}, {"temperature": float("inf")},
                                     {"top_p": float("nan")}, {"neuron_value": float("nan")},
                                     {"neuron_value": float("-inf")}])
def test_non_finite_settings_are_refused(setting):
    lm = random_lm()
    [(name, value)] = setting.items()
    kwargs = {"neuron": 2} if name == "neuron_value" else {}
    with pytest.raises(DataError, match=rf"^{name} must be a finite number, got {value}$"):
        generate(lm, "hi", 4, **kwargs, **setting)


def test_cli_refuses_nan_in_one_line(imported, tmp_path):
    _, workdir = imported
    for flag in ("--neuron_value=nan", "--temperature=nan"):
        proc = run_generate(f"--workdir={workdir}", "--prompt=hi", "--length=4", "--neuron=2",
                            flag, f"--output={tmp_path}")
        assert proc.returncode == 1 and "\x00" not in proc.stdout
        assert proc.stderr.strip().splitlines() == [
            f"error: {flag[2:].split('=')[0]} must be a finite number, got nan"], proc.stderr[-2000:]
        assert not (tmp_path / "samples.json").exists()


def test_samples_json_records_the_state_a_unit_was_held_in(imported, tmp_path):
    """No --neuron_state and no transfer: the unit is held in the model's first state (the
    mLSTM's cell state), and samples.json says so (it said null)."""
    _, workdir = imported
    proc = run_generate(f"--workdir={workdir}", "--prompt=This movie is", "--length=6",
                        "--temperature=0", "--neuron=3", "--neuron_value=3",
                        f"--output={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "samples.json").read_text())
    assert record["neuron"] == 3 and record["neuron_state"] == "cell"


def test_openais_raw_files_as_the_run_name_the_convert_command(imported, tmp_path):
    files, _ = imported
    proc = run_generate(f"--workdir={files}", "--prompt=hi", "--length=4", f"--output={tmp_path}")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {files} holds OpenAI's released weights")
    assert f"python -m lmscale.convert --from=openai --src={files} --to=WORKDIR" in line
