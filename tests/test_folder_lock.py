"""Two runs writing one output folder: each run's files are written while it holds the
folder's lock (``lmscale.folder_lock``), so the files left come from one run."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

NOTE = "is writing into"


def _held(folder: Path) -> int:
    """An fd holding ``folder``'s write lock, as another lmscale process writing there would."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _waits_then_writes(command: list[str], folder: Path, written: Path) -> str:
    """Starts ``command`` while ``folder``'s lock is held; checks it waits (saying so) without
    writing ``written``, then writes it once the lock is released. Returns its stderr."""
    fd = _held(folder)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        err, deadline = "", time.monotonic() + 300
        while NOTE not in err and time.monotonic() < deadline and proc.poll() is None:
            err += os.read(proc.stderr.fileno(), 65536).decode()
        assert NOTE in err, err[-3000:]
        time.sleep(0.5)
        assert proc.poll() is None and not written.exists()
    finally:
        os.close(fd)
    out, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, (err + rest)[-3000:]
    assert written.exists()
    return err + rest


def test_the_lock_waits_for_its_holder_and_says_so(tmp_path, capsys, monkeypatch):
    from lmscale import folder_lock
    monkeypatch.setattr(folder_lock, "NOTE_AFTER_S", 0.2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lmscale.folder_lock import writing_into\n"
         f"with writing_into({str(tmp_path)!r}, 'transfer'):\n"
         "    print('held', flush=True); time.sleep(1.5)\n"
         f"    open({str(tmp_path / 'first')!r}, 'w').close()"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with folder_lock.writing_into(str(tmp_path), "transfer"):
        assert (tmp_path / "first").exists()  # the holder finished its files first
    holder.wait(timeout=60)
    err = capsys.readouterr().err
    assert f"note: another transfer is writing into {tmp_path}; waiting" in err
    with folder_lock.writing_into(str(tmp_path), "transfer"):  # free: taken at once, no note
        pass
    assert capsys.readouterr().err == ""


def test_transfer_classify_and_generate_write_their_files_after_another_writer(sst_run, tmp_path):
    rows = ["sentence,label"] + [f"{'good' if i % 2 else 'bad'} movie {i},{i % 2}"
                                 for i in range(12)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    csv, out = str(tmp_path / "t.csv"), tmp_path / "out"
    out.mkdir()
    err = _waits_then_writes(
        [sys.executable, "-m", "lmscale.transfer", f"--workdir={sst_run}", f"--train={csv}",
         f"--val={csv}", f"--output={out}", "--baseline=none", "--C=1",
         "--features_dir="], out, out / "results.json")
    assert "another transfer is writing into" in err
    preds = tmp_path / "p" / "preds.csv"
    preds.parent.mkdir()
    _waits_then_writes(
        [sys.executable, "-m", "lmscale.classify", f"--workdir={out}", f"--input={csv}",
         f"--output={preds}", "--labels=label", "--text_column=sentence"], preds.parent, Path(f"{preds}.metrics.json"))
    gen = tmp_path / "gen"
    gen.mkdir()
    _waits_then_writes([sys.executable, "-m", "lmscale.generate", f"--workdir={sst_run}",
                        "--prompt=The", "--length=8", f"--output={gen}"], gen,
                       gen / "samples.json")


def test_a_folder_moved_away_is_said(tmp_path):
    """A training run with resume=false archives WORKDIR/transfer while a transfer runs: one
    line naming the folder, not "[Errno 2] No such file or directory: .../neuron_histogram.png"."""
    import pytest

    from lmscale.cli import OutputError
    from lmscale.folder_lock import writing_into
    out = tmp_path / "transfer"
    out.mkdir()
    os.rename(out, tmp_path / "archived")
    with pytest.raises(OutputError, match="moved or removed while this transfer ran"):
        with writing_into(str(out), "transfer"):
            pass
    out.mkdir()
    (tmp_path / "archived").rename(tmp_path / "a2")
    with writing_into(str(out), "transfer"):  # there: fine
        pass
