"""The tools' persistent compilation cache: where it lives, how it is turned off, and a second
run reading the training step back instead of compiling it."""

from __future__ import annotations

import os
import subprocess
import sys

from lmscale.compile_cache import cache_folder, default_folder, use_compile_cache
from tests.conftest import REPO


def test_folder_from_the_environment():
    assert cache_folder({"HOME": "/h"}) == default_folder({"HOME": "/h"})
    assert default_folder({"XDG_CACHE_HOME": "/x"}) == "/x/lmscale/xla"
    assert cache_folder({"LMSCALE_COMPILE_CACHE": "/c"}) == "/c"
    assert cache_folder({"LMSCALE_COMPILE_CACHE": "~/c"}) == os.path.expanduser("~/c")
    for off in ("off", "OFF", "0", "", "none"):
        assert cache_folder({"LMSCALE_COMPILE_CACHE": off}) is None
    # JAX's own variable wins: JAX reads it itself.
    assert cache_folder({"JAX_COMPILATION_CACHE_DIR": "/j", "LMSCALE_COMPILE_CACHE": "off"}) == "/j"


def test_off_and_an_unusable_folder_leave_the_cache_off(tmp_path, capsys):
    assert use_compile_cache({"LMSCALE_COMPILE_CACHE": "off"}) is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert use_compile_cache({"LMSCALE_COMPILE_CACHE": str(blocker / "xla")}) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: no compilation cache") and "LMSCALE_COMPILE_CACHE" in err


def _train(workdir, corpus, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
         f"--workdir={workdir}", f"--config.data.train={corpus}", "--config.data.split=8,1,1",
         "--config.model.hidden=32", "--config.model.embed=16", "--config.train.batch_size=4",
         "--config.train.seq_len=16", "--config.train.steps=2", "--config.train.eval_every=0",
         "--config.train.progress_bar=False"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_second_run_reads_the_training_step_from_the_cache(tmp_path, corpus):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(LMSCALE_COMPILE_CACHE=str(cache), JAX_LOG_COMPILES="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # tiny programs compile fast
    first = _train(tmp_path / "a", corpus, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert any(name.startswith("jit_train_step-") for name in os.listdir(cache))
    assert "cache hit for 'jit_train_step'" not in first.stderr
    second = _train(tmp_path / "b", corpus, env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr
