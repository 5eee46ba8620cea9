"""Records the tools write survive a full disk or a read-only folder: written atomically (an
earlier good file is kept), the error one line naming the file and the cause; a run's
config.json is accepted back as --config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, fill_disk, tiny_train_command, write_corpus


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.fixture
def read_only(tmp_path):
    """read_only(folder) -> a read-only bind mount of ``folder`` (root only), unmounted after."""
    mounts = []

    def mount(folder: Path) -> Path:
        target = tmp_path / f"ro{len(mounts)}"
        target.mkdir()
        made = subprocess.run(["mount", "--bind", str(folder), str(target)], capture_output=True)
        if made.returncode:
            pytest.skip("cannot bind-mount here (needs root)")
        mounts.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_names_the_file(small_disk):
    from lmscale.atomic import write_json
    path = small_disk / "record.json"
    write_json(str(path), {"good": 1})
    fill_disk(small_disk)
    with pytest.raises(OSError) as caught:
        write_json(str(path), {"big": "x" * 3_000_000})
    assert caught.value.filename == str(path)
    assert json.loads(path.read_text()) == {"good": 1}
    assert sorted(p.name for p in small_disk.iterdir()) == ["fill", "record.json"]


def test_heatmap_html_and_png_are_written_atomically(small_disk):
    from lmscale.transfer import plots
    traces = [np.linspace(-1, 1, 5)]
    plots.heatmap_html(["hello"], traces, str(small_disk / "h.html"), unit=1)
    before = (small_disk / "h.html").read_text()
    fill_disk(small_disk)
    with pytest.raises(OSError):
        plots.heatmap_html(["hello" * 20000], [np.zeros(100000)], str(small_disk / "h.html"), unit=1)
    assert (small_disk / "h.html").read_text() == before
    with pytest.raises(OSError):
        plots.heatmap_png(["hello"], traces, str(small_disk / "h.png"), unit=1)
    assert not (small_disk / "h.png").exists()
    assert not [p for p in small_disk.iterdir() if ".tmp-" in p.name]


def test_run_cli_turns_a_full_disk_or_read_only_folder_into_one_line(capsys):
    import errno

    from lmscale.cli import run_cli

    def fails(e: OSError):
        def fn():
            raise e
        return fn

    with pytest.raises(SystemExit) as ended:
        run_cli(fails(OSError(errno.ENOSPC, "No space left on device", "/x/out.json.tmp-12")))
    assert ended.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the disk is full writing /x/out.json (No space left on device)")
    from lmscale.atomic import temporary_name
    long = "/x/" + "p" * 246 + ".json"  # its temporary file's name begins cut short
    with pytest.raises(SystemExit):  # it named a file "/x/ppp...p~5eead783faff669c"
        run_cli(fails(OSError(errno.ENOSPC, "No space left on device", temporary_name(long))))
    err = capsys.readouterr().err
    assert f"writing {long[:200]}" in err and "p... (No space left on device)" in err
    assert "~" not in err
    with pytest.raises(SystemExit):
        run_cli(fails(OSError(errno.EROFS, "Read-only file system", "/ro/samples.json")))
    assert capsys.readouterr().err.strip() == ("error: cannot write /ro/samples.json "
                                              "(Read-only file system)")
    with pytest.raises(SystemExit):  # a file-size limit (ulimit -f): was a traceback
        run_cli(fails(OSError(errno.EFBIG, "File too large", "/x/f.npz.tmp-host-12")))
    assert capsys.readouterr().err.strip() == (
        "error: a file outgrew the file-size limit (ulimit -f) or the file system's writing "
        "/x/f.npz (File too large): raise the limit or write elsewhere, and run again")
    with pytest.raises(SystemExit):  # unchanged
        run_cli(fails(FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope")))
    assert capsys.readouterr().err.strip() == "error: [Errno 2] No such file or directory: '/nope'"
    with pytest.raises(SystemExit):  # a name past NAME_MAX: was a traceback
        run_cli(fails(OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "w" * 256)))
    assert capsys.readouterr().err.strip() == (f"error: cannot access /x/{'w' * 256} "
                                              f"(File name too long)")
    with pytest.raises(SystemExit):  # no file named
        run_cli(fails(OSError(errno.ENAMETOOLONG, "File name too long")))
    assert capsys.readouterr().err.strip() == "error: a name is too long (File name too long)"
    with pytest.raises(OSError):  # other OSErrors are not the user's: a traceback
        run_cli(fails(OSError(errno.EIO, "Input/output error")))


def test_generate_on_a_full_disk_keeps_the_earlier_samples(sst_run, small_disk):
    out = small_disk / "gen"
    command = [sys.executable, "-m", "lmscale.generate", f"--workdir={sst_run}", "--prompt=The",
               f"--output={out}"]
    first = subprocess.run([*command, "--length=8"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    good = (out / "samples.json").read_text()
    fill_disk(small_disk)
    proc = subprocess.run([*command, "--length=300", "--samples=40"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr)
    assert f"the disk is full writing {out}/samples.json" in line
    assert (out / "samples.json").read_text() == good


def test_generate_in_a_read_only_workdir_says_to_pass_output(sst_run, tmp_path, read_only):
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("generate", "transfer"))
    ro = read_only(workdir)
    proc = subprocess.run([sys.executable, "-m", "lmscale.generate", f"--workdir={ro}",
                           "--prompt=x", "--length=5"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr)
    assert f"cannot write in {ro}/generate" in line and "--output=" in line


def test_transfer_from_a_read_only_workdir_caches_features_in_the_output(sst_run, tmp_path,
                                                                          read_only, capsys):
    from lmscale.cli import OutputError
    from lmscale.training.restore import load_trained
    from lmscale.transfer.run import run_transfer
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("generate", "transfer",
                                                                    "features"))
    ro = read_only(workdir)
    rows = ["sentence,label"] + [f"{w} movie {i},{i % 2}" for i in range(12)
                                 for w in (["good"] if i % 2 else ["bad"])]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "t.csv")
    with pytest.raises(OutputError, match=rf"cannot write in {ro}/transfer .*; pass output=FOLDER"):
        run_transfer(str(ro), csv, csv, baseline="none", Cs=[1.0], examples=1)
    out = tmp_path / "out"
    lm = load_trained(str(ro))
    run_transfer(str(ro), csv, csv, output=str(out), baseline="none", Cs=[1.0], examples=1, lm=lm)
    assert f"the features are cached in {out}/features" in capsys.readouterr().err
    assert len(list((out / "features").glob("*.npz"))) == 1
    elsewhere = tmp_path / "feats"
    run_transfer(str(ro), csv, csv, output=str(out), baseline="none", Cs=[1.0], examples=1, lm=lm,
                 features_dir=str(elsewhere))
    assert len(list(elsewhere.glob("*.npz"))) == 1
    run_transfer(str(ro), csv, csv, output=str(tmp_path / "out2"), baseline="none", Cs=[1.0],
                 examples=1, lm=lm, features_dir="")
    assert not (tmp_path / "out2" / "features").exists()


def test_transfer_cli_has_a_features_dir_flag():
    proc = subprocess.run([sys.executable, "-m", "lmscale.transfer", "--helpfull"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert "--features_dir" in proc.stdout


def _train(workdir, corpus, *flags, **overrides):
    return subprocess.run(tiny_train_command(workdir, corpus, *flags, **overrides), cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_a_torn_data_request_is_one_line_saying_to_delete_it(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=100)
    workdir = tmp_path / "w"
    first = _train(workdir, corpus, **{"train.steps": 2, "checkpoint.every": 2})
    assert first.returncode == 0, first.stderr[-2000:]
    request = workdir / "data_request.json"
    assert json.loads(request.read_text())  # written (atomically: no leftover temporary file)
    assert not list(workdir.glob("data_request.json.tmp-*"))
    request.write_text(request.read_text()[:20])
    proc = _train(workdir, corpus, **{"train.steps": 4, "checkpoint.every": 2})
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr)
    assert f"{request} is unreadable (not valid JSON" in line and "delete it" in line
    request.write_text("")
    line = _one_error_line(_train(workdir, corpus, **{"train.steps": 4}).stderr)
    assert "data_request.json is unreadable" in line
    request.unlink()  # as the message says: the run goes on
    proc = _train(workdir, corpus, **{"train.steps": 4, "checkpoint.every": 2})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(request.read_text())


def test_a_runs_config_json_is_accepted_as_config(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=2, lines=100)
    first = _train(tmp_path / "a", corpus, **{"train.steps": 2, "checkpoint.every": 2,
                                              "model.hidden": 24})
    assert first.returncode == 0, first.stderr[-2000:]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "lmscale.train",
                           f"--config={tmp_path}/a/config.json", f"--workdir={tmp_path}/b",
                           "--config.train.steps=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["model"] == saved["model"] and again["model"]["hidden"] == 24
    assert again["train"] == {**saved["train"], "steps": 3}
    assert again["derived"]["steps"] == 3  # derived is worked out again, not applied
    assert again["derived"]["dataset"] == os.path.join(str(tmp_path / "b"), "data")
    (tmp_path / "bad.json").write_text('{"model": {"hiden": 3}}')
    proc = subprocess.run([sys.executable, "-m", "lmscale.train", f"--config={tmp_path}/bad.json",
                           f"--workdir={tmp_path}/c"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    assert "unknown config key model.hiden" in _one_error_line(proc.stderr)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """atomic_write's PATH.tmp-PID stayed for good after a SIGKILL (a feature cache's block,
    up to ~134 MB, whole beside the real one); the next write of PATH removes this machine's
    dead writers' (a live one's, or another machine's, is left)."""
    import subprocess
    import sys

    from lmscale.atomic import HOST, write_json
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    path = tmp_path / "results.json"
    left = [tmp_path / f"results.json.tmp-{HOST}-{gone}", tmp_path / f"results.json.tmp-{HOST}-{alive.pid}",
            tmp_path / f"results.json.tmp-elsewhere-{gone}"]
    try:
        for f in left:
            f.write_text("{half")
        write_json(str(path), {"a": 1})
    finally:
        alive.kill()
    assert [f.exists() for f in left] == [False, True, True] and path.read_text() == '{"a": 1}'


def test_dev_stdout_keeps_the_callers_encoding(tmp_path):
    """/dev/stdout written through sys.stdout: in the encoding the caller opened it with
    (UTF-8), not the stream's (a latin-1 terminal raised UnicodeEncodeError)."""
    import subprocess
    import sys
    out = tmp_path / "out.csv"
    code = ("from lmscale.atomic import atomic_write\n"
            "with atomic_write('/dev/stdout', 'w', newline='', encoding='utf-8') as f:\n"
            "    f.write('caf\\u00e9 \\u2603\\r\\n')\n")
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True,
                       env={**__import__("os").environ, "PYTHONIOENCODING": "latin-1"})
    assert out.read_bytes() == "café ☃\r\n".encode("utf-8")


def test_what_is_renamed_into_place_is_on_the_disk_first(tmp_path, monkeypatch):
    """No write was flushed before its rename: after a power loss a file renamed over the old
    one (best.json, a feature block) or a prepared dataset's shard could be empty. The file is
    fsynced before the rename and its folder after (os.fsync observed, not replaced)."""
    from lmscale import atomic
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "record.json"
    atomic.write_json(str(target), {"a": 1})
    assert synced[0] == atomic.temporary_name(str(target)) and synced[-1] == str(tmp_path)
    assert json.loads(target.read_text()) == {"a": 1}
    synced.clear()
    tmp = tmp_path / "out.tmp"
    (tmp / "train").mkdir(parents=True)
    (tmp / "train" / "shard_0.bin").write_bytes(b"\1" * 100)
    (tmp / "metadata.json").write_text("{}")
    (tmp_path / "out").mkdir()  # an old output: moved aside, replaced
    atomic.publish(str(tmp), str(tmp_path / "out"))
    assert {str(tmp / "train" / "shard_0.bin"), str(tmp / "metadata.json"), str(tmp),
            str(tmp / "train")} <= set(synced[:-1])
    assert synced[-1] == str(tmp_path)  # the rename itself
    assert (tmp_path / "out" / "train" / "shard_0.bin").read_bytes() == b"\1" * 100


def test_a_short_numpy_write_on_a_full_disk_names_the_file_and_enospc(tmp_path, monkeypatch):
    """np.save into a real file writes by ``tofile``, whose short write on a full disk is an
    OSError with no errno ("N requested and M written"): it reached the user as a traceback."""
    import errno as errno_module
    from lmscale import atomic
    monkeypatch.setattr(atomic, "_disk_full", lambda path: True)
    path = str(tmp_path / "f.npy")
    with pytest.raises(OSError) as e:
        with atomic.atomic_write(path, "wb"):
            raise OSError("221440 requested and 127968 written")
    assert e.value.errno == errno_module.ENOSPC and e.value.filename == path
    assert os.listdir(tmp_path) == []


def test_an_errno_less_oserror_with_room_on_the_disk_is_not_said_as_enospc(tmp_path, monkeypatch):
    """Only a full file system turns numpy's errno-less short write into ENOSPC: with room
    left, the error is raised as it was (not blamed on the disk)."""
    import errno
    from lmscale import atomic
    room = type("St", (), {"f_bavail": 1 << 20, "f_frsize": 4096})()
    full = type("St", (), {"f_bavail": 0, "f_frsize": 4096})()
    path = str(tmp_path / "f.npy")
    monkeypatch.setattr(atomic.os, "statvfs", lambda p: room)
    with pytest.raises(OSError) as e:
        with atomic.atomic_write(path, "wb"):
            raise OSError("something else")
    assert e.value.errno is None and str(e.value) == "something else"
    monkeypatch.setattr(atomic.os, "statvfs", lambda p: full)
    with pytest.raises(OSError) as e:
        with atomic.atomic_write(path, "wb"):
            raise OSError("221440 requested and 127968 written")
    assert e.value.errno == errno.ENOSPC and e.value.filename == path
    assert os.listdir(tmp_path) == []


def test_a_name_near_name_max_is_written_and_a_killed_writers_temporary_file_removed(tmp_path):
    """A valid 246-byte output name (classify's predictions, prepare's folder) failed once the
    work was done: its temporary name PATH.tmp-HOST-PID passed the 255 bytes of NAME_MAX."""
    import subprocess
    import sys

    from lmscale.atomic import publish, temporary_name, write_json
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    for name in ("p" * 246 + ".json", "é" * 123 + ".json"):
        path = tmp_path / name
        tmp = temporary_name(str(path))
        left = Path(tmp.rsplit("-", 1)[0] + f"-{gone}")
        left.write_text("{half")
        write_json(str(path), {"a": 1})
        assert path.read_text() == '{"a": 1}' and not left.exists()
        assert len(os.path.basename(tmp).encode()) <= 255 and tmp.startswith(str(path)[:-30])
        os.makedirs(tmp)
        publish(tmp, str(tmp_path / ("q" * 250)))  # a folder (prepare, convert): an old one
        os.makedirs(tmp)  # moved aside to a trash name of the same length
        publish(tmp, str(tmp_path / ("q" * 250)))
    assert sorted(os.listdir(tmp_path)) == sorted(["p" * 246 + ".json", "é" * 123 + ".json",
                                                   "q" * 250])


def test_a_marked_name_is_the_name_while_it_fits_and_else_cut_to_fit(tmp_path):
    """NAME.trash-HOST-PID, with the longest PID (7 digits), within NAME_MAX's 255 bytes: a
    name is kept whole while it fits and cut to fit past that, and two long names alike but
    for their ends are kept apart (each one's temporary files would be the other's)."""
    from lmscale.atomic import HOST, marked_name
    room = 255 - len(f".trash-{HOST}-".encode()) - 7
    for char in ("p", "é"):  # 1 and 2 bytes a character
        for size in range(room - 2, room + 3):
            name = "a" * (size % len(char.encode())) + char * (size // len(char.encode()))
            marked = marked_name(name)
            assert len(name.encode()) == size
            assert marked == name if size <= room else len(marked.encode()) in (room - 1, room)
            (tmp_path / f"{marked}.trash-{HOST}-4194303").write_text("")  # the file system's
    assert marked_name("p" * 300 + "a") != marked_name("p" * 300 + "b")
