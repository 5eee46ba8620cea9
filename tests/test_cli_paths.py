"""``~`` in the tools' path flags and config fields: a shell leaves it in "--workdir=~/x"
(only an argument that starts with it is expanded), and the tools wrote to ./~/x."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def _tool(module: str, home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_tilde_in_path_flags_and_config_fields_is_the_home_folder(tmp_path):
    text = tmp_path / "home" / "corpus.txt"
    text.parent.mkdir()
    text.write_text("the cat sat on the mat.\n" * 400)
    p = _tool("lmscale.prepare", tmp_path / "home", "--input=~/corpus.txt", "--output=~/prepared",
              "--split=8,1,1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "home" / "prepared" / "metadata.json").exists()
    assert not os.path.exists(os.path.join(REPO, "~"))
    csv = tmp_path / "home" / "labeled.csv"
    csv.write_text("sentence,label\ngood,1\nbad,0\n")
    p = _tool("lmscale.finetune", tmp_path / "home", "--config=configs/finetune_sst.py",
              "--workdir=~/ft", "--config.init_from=~/no_lm", "--config.finetune.train=~/labeled.csv",
              "--config.finetune.val=~/labeled.csv", "--config.finetune.test=")
    assert p.returncode == 1
    assert f"{tmp_path}/home/no_lm" in p.stderr, p.stderr  # init_from expanded, the data read
    assert not os.path.exists(os.path.join(REPO, "~"))


def test_a_run_in_a_workdir_under_the_home_folder(tmp_path):
    from tests.conftest import TINY_TRAIN_FLAGS
    home = tmp_path / "home"
    (home / "text").mkdir(parents=True)
    (home / "text" / "a.txt").write_text("the cat sat on the mat.\n" * 400)
    flags = [f"--config.{k}={v}" for k, v in TINY_TRAIN_FLAGS.items()]
    p = _tool("lmscale.train", home, "--config=configs/quickstart.py", "--workdir=~/run",
              "--config.data.train=~/text/a.txt", "--config.train.steps=2", *flags)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (home / "run" / "config.json").exists() and not os.path.exists(os.path.join(REPO, "~"))
