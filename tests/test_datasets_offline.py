"""lmscale.datasets without a network: the error says what to put where, by hand."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from lmscale.data.errors import DataError
from lmscale.datasets import fetch
from tests.conftest import REPO


@pytest.fixture
def offline(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LMSCALE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path))
    return tmp_path


def test_offline_error_names_every_file_of_the_set(offline):
    with pytest.raises(DataError, match=r"put the file there by hand as .*sst_binary/train\.csv "
                                        r".*sst_binary also needs val\.csv, test\.csv in "):
        fetch("sst_binary")


def test_offline_error_says_the_file_there_is_not_the_one(offline):
    (offline / "tinyshakespeare").mkdir()
    (offline / "tinyshakespeare" / "input.txt").write_text("not it\n")
    with pytest.raises(DataError, match=r"the file there now has sha256 [0-9a-f]{64}, not that one"):
        fetch("tinyshakespeare")


def test_fetch_to_a_file_is_one_line(tmp_path):
    """--to naming a file: a DataError naming it, not FileExistsError's traceback."""
    f = tmp_path / "a_file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        fetch("sst_binary", str(f))
    r = subprocess.run([sys.executable, "-m", "lmscale.datasets", "fetch", "sst_binary",
                        f"--to={f}"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "is a file, not a folder" in r.stderr
    assert f"error: --to={f}:" in r.stderr  # the tool names its flag


def test_fetch_to_a_file_from_python_names_the_argument(tmp_path):
    """fetch(to=...) from a notebook: its argument, not the tool's --to= flag."""
    f = tmp_path / "a_file.txt"
    f.write_text("x")
    with pytest.raises(DataError) as e:
        fetch("sst_binary", str(f))
    assert str(e.value).startswith(f"to={f}: ") and "--" not in str(e.value)


def test_fetching_a_by_hand_set_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path))  # was "unknown data set", configs name it
    with pytest.raises(DataError, match=r"semeval2018_ec cannot be fetched into \S*semeval2018_ec: "
                                        r"SemEval-2018 Task 1 E-c is given out"):
        fetch("semeval2018_ec")


def test_a_file_in_the_cache_names_lmscale_data_not_an_unpassed_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path))
    (tmp_path / "tinyshakespeare").write_text("")
    with pytest.raises(DataError, match=r"^\$LMSCALE_DATA/tinyshakespeare: \S+ is a file"):
        fetch("tinyshakespeare")


def test_a_failed_fetch_lists_only_the_files_still_missing(offline, monkeypatch):
    """train.csv and test.csv already verified in the folder, val.csv failing: the error asks
    for val.csv alone (it listed every other file of the set, those already there too)."""
    import dataclasses
    import hashlib
    from lmscale import datasets
    folder = offline / "sst_binary"
    folder.mkdir()
    files = []
    for remote in datasets.REGISTRY["sst_binary"].files:
        content = f"{remote.name}\n".encode()
        if remote.name != "val.csv":
            (folder / remote.name).write_bytes(content)
        files.append(dataclasses.replace(remote, sha256=hashlib.sha256(content).hexdigest()))
    monkeypatch.setitem(datasets.REGISTRY, "sst_binary", dataclasses.replace(
        datasets.REGISTRY["sst_binary"], files=tuple(files)))
    with pytest.raises(DataError, match=r"sst_binary/val\.csv") as e:
        datasets.fetch("sst_binary")
    assert "also needs" not in str(e.value), str(e.value)


def test_fetch_to_a_folder_in_the_home_folder(offline, tmp_path):
    """--to=~/DIR (a shell leaves "~" after "=" as it is) was ./~/DIR, made in the current
    folder; it is DIR in the home folder, as the other tools' path flags take it."""
    import os
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "lmscale.datasets", "fetch", "tinyshakespeare",
                        "--to=~/data"], capture_output=True, text=True, cwd=here, env=env,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr  # offline: not fetched
    assert f"put the file there by hand as {home / 'data' / 'input.txt'} " in r.stderr, r.stderr
    assert (home / "data").is_dir() and not (here / "~").exists()
