"""``run_sweep``'s own lines."""

from __future__ import annotations

import json
import os

import pytest

from lmscale.sweeps import SweepError, run_sweep
from lmscale.sweeps.runner import Runner
from lmscale.sweeps.workdir import lock_sweep
from tests.conftest import fill_disk
from tests.sweeps.conftest import base_config, write_sweep


def test_at_a_time_is_at_most_the_points_to_run(tiny, tmp_path, monkeypatch):
    """--parallel=8 on a 2-point sweep said "(8 at a time)"."""
    monkeypatch.setattr(Runner, "run", lambda self, points: None)  # the line, not the training
    sweep_file = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)
    lines: list[str] = []
    out = tmp_path / "out"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), parallel=8,
              log=lines.append)
    assert lines[0] == f"sweep: 2 points in {out} (2 at a time)"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), parallel=1,
              log=lines.append)
    assert lines[2] == f"sweep: 2 points in {out} (1 at a time)"


def test_recorded_times_carry_their_utc_offset(tiny, tmp_path, monkeypatch):
    """sweep.json's "created" and sweep_runs.jsonl's "time" were local clock times without a
    zone, beside commands.log's UTC ones: a folder on a cluster read from elsewhere (TZ=Asia/
    Kathmandu) could not be placed in time."""
    import datetime
    import time
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    try:
        sweep_file = write_sweep(tmp_path / "s.py", """
            def get_sweep():
                return {"grid": {"train.steps": [2]}}
        """)
        out = tmp_path / "out"
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(out), parallel=1,
                  log=lambda line: None)
    finally:
        monkeypatch.undo()
        time.tzset()
    created = json.loads((out / "sweep.json").read_text())["created"]
    ran = json.loads((out / "sweep_runs.jsonl").read_text().splitlines()[-1])["time"]
    for stamp in (created, ran):
        when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z")
        assert when.utcoffset() == datetime.timedelta(hours=5, minutes=45), stamp
        now = datetime.datetime.now(datetime.timezone.utc)
        assert abs((now - when).total_seconds()) < 600, stamp


def test_a_sweep_refused_as_in_use_leaves_sweep_json_alone(tiny, tmp_path, monkeypatch):
    """An extended grid started while another sweep held the folder was refused ("in use")
    but had already recorded its points in sweep.json: the first command was refused after."""
    monkeypatch.setattr(Runner, "run", lambda self, points: None)
    small = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)
    big = write_sweep(tmp_path / "b.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3, 1e-2]}}
    """)
    out = tmp_path / "out"
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), small, str(out), log=lambda line: None)
    before = json.loads((out / "sweep.json").read_text())
    held = lock_sweep(str(out))  # the first sweep, still running
    try:
        with pytest.raises(SweepError, match="in use"):
            run_sweep(base_config(tiny), str(tiny / "tiny.py"), big, str(out), log=lambda line: None)
    finally:
        held.release()
    assert json.loads((out / "sweep.json").read_text()) == before
    run_sweep(base_config(tiny), str(tiny / "tiny.py"), small, str(out), log=lambda line: None)


def test_a_refused_non_sweep_folder_keeps_no_lock_file(tiny, tmp_path, monkeypatch):
    """The lock, taken before claim, left .sweep.lock in a user's folder refused as no sweep's."""
    monkeypatch.setattr(Runner, "run", lambda self, points: None)
    sweep_file = write_sweep(tmp_path / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not a sweep folder"):
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(mine),
                  log=lambda line: None)
    assert sorted(os.listdir(mine)) == ["notes.txt"]


def test_a_sweep_folder_with_a_link_out_is_refused_before_its_lock(tmp_path):
    """A sweep folder from elsewhere whose point's train.log links to a user's file: the
    runner appended each trainer's output to it (a security review)."""
    outside, sweep = tmp_path / "bashrc", tmp_path / "sweep"
    outside.write_text("# the user's own\n")
    (sweep / "lr_0.001").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    os.symlink(outside, sweep / "lr_0.001" / "train.log")
    with pytest.raises(SweepError, match=r"train\.log is a symbolic link to .*bashrc, outside "):
        lock_sweep(str(sweep))
    assert not (sweep / ".sweep.lock").exists() and outside.read_text() == "# the user's own\n"


def test_a_failure_while_starting_the_points_is_not_hidden_by_the_report(tiny, small_disk):
    """The disk filling as the first point started: the error said "the disk is full writing
    report.md", the report that the ``finally`` then tried, not the point's own write."""
    import errno
    sweep_file = write_sweep(small_disk / "s.py", """
        def get_sweep():
            return {"grid": {"optim.lr": [1e-3, 3e-3]}}
    """)

    def fill(line: str) -> None:
        if " points in " in line:  # the disk full from here on
            fill_disk(small_disk)

    with pytest.raises(OSError) as e:
        run_sweep(base_config(tiny), str(tiny / "tiny.py"), sweep_file, str(small_disk / "out"),
                  parallel=1, log=fill)
    assert e.value.errno == errno.ENOSPC
    assert "report" not in str(e.value.filename)
