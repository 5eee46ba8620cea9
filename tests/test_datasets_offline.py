"""lmscale.datasets without a network: the error says what to put where, by hand."""

from __future__ import annotations

import socket

import pytest

from lmscale.data.errors import DataError
from lmscale.datasets import fetch


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
