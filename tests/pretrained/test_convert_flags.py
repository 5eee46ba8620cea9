"""``python -m lmscale.convert``: a flag that would be ignored, or a --to of the wrong kind,
is one ``error:`` line before anything is read or written."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.pretrained import reference as ref


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("flags") / "openai")
    ref.write_openai_files(folder, 8, 16, seed=3)
    return folder


def convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "lmscale.convert", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    ((), "--layout=lmscale writes a workdir, not a .pt file; give a folder name, or "
         "--layout=sentiment-discovery to write a .pt file"),
    (("--layout=openai",), "--layout=openai writes a folder, not a .pt file; give a folder "
                           "name, or --layout=sentiment-discovery to write a .pt file"),
])
def test_a_pt_destination_of_a_folder_layout_is_refused(openai_files, tmp_path, args, message):
    """--to=X.pt with a folder layout made a folder named X.pt."""
    dst = tmp_path / "model.pt"
    proc = convert("--from=openai", f"--src={openai_files}", f"--to={dst}", *args)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: --to={dst}: {message}", \
        proc.stderr[-2000:]
    assert not dst.exists()


@pytest.mark.parametrize("args, message", [
    (("--step=777",), "--step picks a checkpoint of an lmscale workdir (--from=lmscale); "
                      "--from=openai has one set of weights: drop --step"),
    (("--batch_size=4", "--layout=openai"), "--batch_size sets train.batch_size of a written "
     "workdir (--layout=lmscale); --layout=openai records none: drop it"),
    (("--batch_size=4", "--layout=sentiment-discovery"), "--batch_size sets train.batch_size of "
     "a written workdir (--layout=lmscale); --layout=sentiment-discovery records none: drop it"),
    (("--step=-5",), "flag --step=-5: expected a checkpoint step, or -1 (the latest)"),
    (("--pt_vocab=256",), "--pt_vocab sets the rows of a written .pt (--layout="
                          "sentiment-discovery); --layout=lmscale has its own: drop it"),
])
def test_flags_that_would_be_ignored_are_refused(openai_files, tmp_path, args, message):
    """--step with a non-lmscale --from, --batch_size with a layout that records none, and
    --step=-5 (taken as -1, the latest) were silently ignored."""
    dst = tmp_path / "out"
    proc = convert("--from=openai", f"--src={openai_files}", f"--to={dst}", *args)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {message}", proc.stderr[-2000:]
    assert not dst.exists()



@pytest.mark.parametrize("layout", ["lmscale", "openai"])
def test_a_killed_converts_partial_output_is_no_destination(openai_files, tmp_path, layout):
    """convert wrote into DST file by file: killed, it left a partial folder (0.npy..7.npy, or
    checkpoints/ without config.json) that the same command then refused ("already exists").
    It writes DST.tmp-HOST-PID and renames it; a dead process's is removed by the next."""
    from lmscale.atomic import HOST
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    dst = tmp_path / "out"
    partial = tmp_path / f"out.tmp-{HOST}-{gone}"
    partial.mkdir()
    (partial / "0.npy").write_bytes(b"half")
    proc = convert("--from=openai", f"--src={openai_files}", f"--to={dst}", f"--layout={layout}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not partial.exists() and f"removed {partial}, left by a convert" in proc.stderr
    assert (dst / ("config.json" if layout == "lmscale" else "14.npy")).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_an_export_to_pt_without_torch_names_the_destination(openai_files, tmp_path):
    dst = tmp_path / "lm.pt"
    r = convert("--from=openai", f"--src={openai_files}", f"--to={dst}",
                "--layout=sentiment-discovery")
    assert r.returncode != 0
    assert f"error: {dst}: PyTorch files need torch" in r.stderr, r.stderr
    assert ".tmp-" not in r.stderr and not os.listdir(tmp_path)


def test_an_empty_destination_is_refused_first(openai_files):
    """--to= converted everything, then said "No such file or directory: '.tmp-...' -> ''"."""
    r = convert("--from=openai", f"--src={openai_files}", "--to=")
    assert r.returncode != 0 and "--to is empty" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-2000:]


def test_an_export_says_the_step_it_read(openai_files, tmp_path):
    """Exporting the latest checkpoint of a run still training: the summary names the step read
    (the openai and .pt layouts record none in their files; eval, generate, transfer say it)."""
    import json
    run = str(tmp_path / "run")
    assert convert("--from=openai", f"--src={openai_files}", f"--to={run}").returncode == 0
    done = convert("--from=lmscale", f"--src={run}", f"--to={tmp_path / 'out'}", "--layout=openai")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == 0
