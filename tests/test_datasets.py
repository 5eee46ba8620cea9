"""lmscale.datasets: download through a local HTTP server (a mirror), verify, cache, fail cleanly."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from lmscale.data.errors import DataError
from lmscale.datasets import REGISTRY, data_path, fetch, sha256_of
from tests.conftest import REPO, SHARED_DATA, SHARED_DATA_MISSING

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
pytestmark = pytest.mark.skipif(not SHAKESPEARE.exists(), reason=SHARED_DATA_MISSING)


class _Server:
    """Serves MIRROR/NAME/FILE from a folder; ``mode`` "ok", "truncate" or "corrupt"."""

    def __init__(self, root: str) -> None:
        self.root, self.mode, self.requests = root, "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests += 1
                path = os.path.join(server.root, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = open(path, "rb").read()
                if server.mode == "garbage":  # not HTTP at all
                    self.wfile.write(b"GARBAGE\r\n\r\n")
                    return
                if server.mode == "chunked_cut":  # a chunked reply that stops mid-chunk
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     + b"%x\r\n" % 5000 + data[:2000])
                    return
                if server.mode == "slow":  # whole, in 64 KiB pieces: fetches overlap
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(0, len(data), 1 << 16):
                        self.wfile.write(data[i:i + (1 << 16)])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                body = data[:len(data) // 2] if server.mode == "truncate" else data
                if server.mode == "corrupt":
                    body = b"X" + data[1:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "mirror" / "tinyshakespeare"
    root.mkdir(parents=True)
    shutil.copy(SHAKESPEARE, root / "input.txt")
    server = _Server(str(tmp_path / "mirror"))
    monkeypatch.setenv("LMSCALE_DATA_MIRROR", server.url)
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path / "cache"))
    yield server
    server.close()


def test_fetch_verifies_caches_and_never_downloads_twice(mirror, tmp_path):
    folder = fetch("tinyshakespeare")
    assert folder == str(tmp_path / "cache" / "tinyshakespeare")
    assert sha256_of(os.path.join(folder, "input.txt")) == REGISTRY["tinyshakespeare"].files[0].sha256
    assert mirror.requests == 1
    assert fetch("tinyshakespeare") == folder and mirror.requests == 1  # cached


@pytest.mark.parametrize("mode,match", [("truncate", "transfer ended after"),
                                        ("corrupt", "is not the expected")])
def test_bad_transfers_leave_nothing(mirror, tmp_path, mode, match):
    mirror.mode = mode
    with pytest.raises(DataError, match=match):
        fetch("tinyshakespeare", str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("mode", ["garbage", "chunked_cut"])
def test_a_reply_that_is_not_http_or_cut_short_is_one_line(mirror, tmp_path, mode):
    mirror.mode = mode  # http.client's BadStatusLine / IncompleteRead were tracebacks
    with pytest.raises(DataError, match=r"cannot download .*not an HTTP reply, or one cut short"):
        fetch("tinyshakespeare", str(tmp_path / "out"), timeout=5)
    assert os.listdir(tmp_path / "out") == []


def test_a_folder_it_cannot_write_is_one_line_not_a_download_error(mirror, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"cannot create \S*afile/sub for tinyshakespeare's files "
                                        r"\(Not a directory\)"):
        fetch("tinyshakespeare", str(tmp_path / "afile" / "sub"))
    (tmp_path / "out" / "input.txt").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(DataError, match=r"^cannot write \S*input.txt \(Is a directory\)"):
        fetch("tinyshakespeare", str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["input.txt"] and mirror.requests == 1


def test_two_threads_fetching_one_file_both_succeed_and_never_expose_a_broken_file(mirror,
                                                                                  tmp_path):
    """One process's fetches shared the temporary name FILE.part-PID: the first renamed the
    other's half-written file into place (1 MiB of NULs), the second failed."""
    mirror.mode = "slow"
    results, want = [], REGISTRY["tinyshakespeare"].files[0].sha256
    path = tmp_path / "out" / "input.txt"

    def go():
        try:
            results.append(fetch("tinyshakespeare", str(tmp_path / "out")))
        except DataError as e:
            results.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    threads[0].start()
    time.sleep(0.6)
    threads[1].start()
    while any(t.is_alive() for t in threads):
        if path.exists():
            assert sha256_of(str(path)) == want
        time.sleep(0.01)
    assert results == [str(tmp_path / "out")] * 2
    assert os.listdir(tmp_path / "out") == ["input.txt"]


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LMSCALE_DATA_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DataError, match=r"cannot download .* put the file there by hand as .*input.txt"):
        fetch("tinyshakespeare", str(tmp_path / "out"), timeout=5)
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        fetch("nope")


def test_cli_fetch_prints_the_folder_and_usage(mirror, tmp_path):
    env = {**os.environ, "LMSCALE_DATA_MIRROR": mirror.url}
    out = subprocess.run([sys.executable, "-m", "lmscale.datasets", "fetch", "tinyshakespeare",
                          f"--to={tmp_path / 'ts'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(tmp_path / "ts")]  # $(...) takes the folder alone
    assert f"--config.data.train={tmp_path / 'ts'}/input.txt" in out.stderr
    # `| head -1` (README) closed the pipe before the usage line: a BrokenPipeError traceback
    piped = subprocess.run(f"{sys.executable} -m lmscale.datasets fetch tinyshakespeare "
                           f"--to={tmp_path / 'ts'} | head -1", shell=True, cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert piped.stdout.strip() == str(tmp_path / "ts") and "Traceback" not in piped.stderr


def test_registry_checksums_match_the_known_copies(tmp_path, monkeypatch):
    """The shared copies are the published files: fetching into their folder downloads nothing."""
    for name, folder in (("sst_binary", SHARED_DATA / "sst_binary"),
                         ("tinyshakespeare", SHARED_DATA / "tinyshakespeare")):
        monkeypatch.setenv("LMSCALE_DATA_MIRROR", "http://127.0.0.1:9")  # unreachable
        assert fetch(name, str(folder)) == str(folder)


def test_a_config_reading_an_unfetched_data_set_says_how_to_fetch_it(tmp_path, monkeypatch):
    from lmscale.data.sources import iter_pieces
    monkeypatch.setenv("LMSCALE_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"input.txt \(not fetched yet: python -m lmscale.datasets "
                                        r"fetch tinyshakespeare\)"):
        list(iter_pieces([data_path("tinyshakespeare", "input.txt")]))
    from lmscale.transfer.labeled import load_labeled  # fine-tuning's and transfer's reader
    with pytest.raises(DataError, match=r"train.csv: no such file \(not fetched yet: python -m "
                                        r"lmscale.datasets fetch sst_binary\)"):
        load_labeled(data_path("sst_binary", "train.csv"))
    with pytest.raises(DataError, match=r"train.csv: no such file \(SemEval-2018 Task 1 E-c is "
                                        r"given out by the task's organizers .* train.csv and "
                                        r"val.csv, or set --config.finetune.train/val\)"):
        load_labeled(data_path("semeval2018_ec", "train.csv"))  # not fetchable: how to get it
    with pytest.raises(DataError, match=r"no such file or directory: \S*elsewhere.txt$"):
        list(iter_pieces([str(tmp_path / "elsewhere.txt")]))


def test_no_home_folder_is_one_line_not_a_tilde_folder_here(tmp_path, monkeypatch):
    """HOME unset and a user id with no passwd entry (a container's): expanduser("~") stays
    "~", and the cache was made as a literal ./~/.cache/lmscale in the working folder."""
    monkeypatch.delenv("LMSCALE_DATA", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # what Python gives then
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"no home folder .*HOME is unset .* set LMSCALE_DATA"):
        fetch("tinyshakespeare")
    assert os.listdir(tmp_path) == []
    # --to=DIR needs no home folder: the remedy the error names is taken (here a file given,
    # which fetch refuses on its own before any download)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match=r"a_file is a file, not a folder"):
        fetch("tinyshakespeare", to=str(tmp_path / "a_file"))
