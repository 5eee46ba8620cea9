"""A run's config.json given back as --config resumes the run: ``resume=false`` is what one
start did (archive, start afresh), not a setting of the run; replayed from config.json, a
rerun archived the run it meant to resume and trained from step 0."""

from __future__ import annotations

import os
import subprocess
import sys

from lmscale.config import default_config, load_config, save_config
from tests.conftest import REPO, tiny_train_command


def test_saved_resume_false_is_read_back_true(tmp_path):
    c = default_config()
    c.resume = False
    c.lock()
    save_config(c, {}, str(tmp_path / "config.json"))
    assert load_config(str(tmp_path / "config.json"))[0].resume is True


def test_a_rerun_from_config_json_resumes_and_an_explicit_false_still_archives(tmp_path, corpus):
    workdir = tmp_path / "run"
    first = subprocess.run(tiny_train_command(workdir, corpus, "--config.resume=false",
                                              **{"train.steps": 4}),
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = [sys.executable, "-m", "lmscale.train", f"--config={workdir / 'config.json'}",
             f"--workdir={workdir}", "--config.train.steps=6"]
    rerun = subprocess.run(again, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not os.path.exists(workdir / "archive")  # resumed at 4, not archived and restarted
    assert "start at step 4" in (workdir / "commands.log").read_text()
    fresh = subprocess.run([*again, "--config.resume=false"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert fresh.returncode == 0 and len(os.listdir(workdir / "archive")) == 1, fresh.stderr[-2000:]
