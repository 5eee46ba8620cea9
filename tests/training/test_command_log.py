"""WORKDIR/commands.log: each start of a run recorded as a command that runs it again."""

from __future__ import annotations

import os
import subprocess
import sys

from lmscale.training.command_log import RECORDED_ENV, invocation, record_command

from tests.conftest import REPO, tiny_train_command


def test_a_notebook_start_is_a_comment_and_arguments_are_quoted(tmp_path, monkeypatch):
    assert invocation(["ipykernel_launcher.py", "-f", "k.json"], module="") == (
        "# started from Python: ipykernel_launcher.py -f k.json")
    monkeypatch.chdir(tmp_path)
    for name in RECORDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    line = invocation(["/x/lmscale/train.py", "--workdir=runs/a b", "--config.data.train=it's.txt"],
                      module="lmscale.train")
    assert line == (f"cd {tmp_path} && XLA_FLAGS=--xla_force_host_platform_device_count=8 "
                    f"{sys.executable} -m lmscale.train '--workdir=runs/a b' "
                    "'--config.data.train=it'\"'\"'s.txt'")
    record_command(str(tmp_path / "missing"), 0, 1, 1)  # an unwritable log is no reason to stop


def test_the_recorded_command_resumes_the_run_from_another_folder(tmp_path, corpus):
    """A run started with relative paths, re-run by pasting its log's command elsewhere."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    command = tiny_train_command("runs/cmd", corpus, **{"train.steps": 4})
    command[3] = f"--config={REPO}/configs/quickstart.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    first = subprocess.run(command, cwd=start, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    log = (start / "runs" / "cmd" / "commands.log").read_text().splitlines()
    assert len(log) == 2 and log[0].startswith("# ") and "start at step 0, 1 process x 2 devices" in log[0]
    assert log[1].startswith(f"cd {start} && XLA_FLAGS=--xla_force_host_platform_device_count=2 ")
    assert f"-m lmscale.train --config={REPO}/configs/quickstart.py --workdir=runs/cmd " in log[1]
    again = subprocess.run(["bash", "-c", log[1].replace("train.steps=4", "train.steps=6")],
                           cwd=elsewhere, capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert again.returncode == 0, again.stderr[-2000:]
    log = (start / "runs" / "cmd" / "commands.log").read_text().splitlines()
    assert len(log) == 4 and "start at step 4, 1 process x 2 devices" in log[2]
    assert not os.listdir(elsewhere)


def test_a_link_out_of_the_workdir_is_refused_not_written_through(tmp_path, corpus):
    """A run folder from elsewhere (tar keeps links) with commands.log -> ~/.bashrc: training
    in it appended the command line to the user's file."""
    import pytest

    from lmscale.training.checkpoints import CheckpointError
    from lmscale.training.loop import train
    from tests.conftest import tiny_config
    outside, workdir = tmp_path / "bashrc", tmp_path / "run"
    outside.write_text("# the user's own\n")
    workdir.mkdir()
    os.symlink(outside, workdir / "commands.log")
    with pytest.raises(CheckpointError, match=r"commands\.log is a symbolic link to .*bashrc, "
                                              r"outside .*run: writing it would write that file"):
        train(tiny_config(corpus, **{"train.steps": 2}), str(workdir))
    assert outside.read_text() == "# the user's own\n"
    os.remove(workdir / "commands.log")
    os.symlink("../run/inside.log", workdir / "commands.log")  # a link within the run: kept
    (workdir / "inside.log").write_text("")
    train(tiny_config(corpus, **{"train.steps": 2}), str(workdir))
    assert "started from Python" in (workdir / "inside.log").read_text()
