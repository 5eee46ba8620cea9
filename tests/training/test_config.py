"""Config validation, derived values, and the saved resolved config."""

import json
import subprocess
import sys

import pytest

from lmscale.config import ConfigError, default_config, derive, load_config, save_config, validate
from tests.conftest import REPO


def locked(**changes):
    c = default_config()
    for key, value in changes.items():
        section, name = key.split(".")
        c[section][name] = value
    c.lock()
    return c


def test_batch_not_divisible_by_devices_names_both_numbers():
    with pytest.raises(ConfigError, match=r"train.batch_size=10 .* 4 devices"):
        validate(locked(**{"train.batch_size": 10, "train.eval_batch_size": 8}), num_devices=4)


@pytest.mark.parametrize("key,value,match", [
    ("model.kind", "gru", "model.kind"),
    ("optim.schedule", "exp", "optim.schedule"),
    ("train.seq_len", 0, "train.seq_len"),
    ("data.split", "1,1", "data.split"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        validate(locked(**{key: value}))


def test_locked_config_rejects_typo():
    c = locked()
    with pytest.raises(AttributeError):
        c.model.hiden = 3


def test_derive_epochs_and_decay():
    c = locked(**{"train.steps": 1000, "train.epochs": 2.0, "optim.decay_epochs": 1.0})
    d = derive(c, steps_per_epoch=300)
    assert d["steps"] == 600 and d["decay_steps"] == 300
    assert d["tokens_per_step"] == c.train.batch_size * c.train.seq_len


def test_save_and_load_round_trip(tmp_path):
    c = locked(**{"model.hidden": 123})
    save_config(c, {"steps": 5}, str(tmp_path / "config.json"))
    loaded, derived = load_config(str(tmp_path / "config.json"))
    assert loaded.model.hidden == 123 and derived == {"steps": 5}
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["train"]["steps"] == c.train.steps


def test_cli_unknown_config_key_fails_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
         f"--workdir={workdir}", "--config.model.hiden=12"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "hiden" in proc.stderr
    assert not workdir.exists()
