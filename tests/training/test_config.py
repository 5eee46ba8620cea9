"""Config validation, derived values, and the saved resolved config."""

import json
import subprocess
import sys

import pytest

from lmscale.config import (ConfigError, default_config, derive, load_config, save_config, scaled_lr,
                            validate, with_global_batch)
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


def test_per_device_batch_gives_the_global_batch():
    c = locked(**{"train.per_device_batch_size": 256, "train.batch_size": 7})
    validate(c, num_devices=8)  # batch_size is replaced, so 7 is no error
    resolved = with_global_batch(c, 8)
    assert resolved.train.batch_size == 2048 and c.train.batch_size == 7
    with pytest.raises(AttributeError):
        resolved.train.batch_sizee = 1  # still locked


@pytest.mark.parametrize("rule,batch,cap,expected", [
    ("none", 2048, 0.0, 5e-4),
    ("linear", 256, 0.0, 1e-3),
    ("sqrt", 512, 0.0, 1e-3),
    ("linear", 32768, 3e-3, 3e-3),  # the paper's 32k run: 5e-4 x 256 capped at 3e-3
    ("sqrt", 32768, 3e-3, 3e-3),
])
def test_learning_rate_rules(rule, batch, cap, expected):
    optim = locked(**{"optim.lr": 5e-4, "optim.base_batch_size": 128, "optim.lr_scaling": rule,
                      "optim.lr_max": cap}).optim
    assert scaled_lr(optim, batch) == pytest.approx(expected)


def test_derived_lr_uses_the_global_batch():
    c = with_global_batch(locked(**{"train.per_device_batch_size": 64, "optim.lr_scaling": "linear",
                                    "optim.lr": 5e-4, "optim.base_batch_size": 128}), 4)
    d = derive(c, steps_per_epoch=100)
    assert d["batch_size"] == 256 and d["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("key,value,match", [
    ("precision.compute", "float8", "precision.compute"),
    ("optim.lr_scaling", "cubic", "optim.lr_scaling"),
    ("model.kind", "gru", "model.kind"),
    ("optim.schedule", "exp", "optim.schedule"),
    ("train.seq_len", 0, "train.seq_len"),
    ("data.split", "1,1", "data.split"),
    # slanted_triangular has no warmup; the warmup stretched its horizon past the run
    ("optim.warmup_steps", 1000, "warmup_steps=1000 does not apply to the slanted_triangular"),
    # Adam's: b1 = 1.5 ran ten steps, then stopped on parameters "not finite" (blaming lr/clip)
    ("optim.b1", 1.5, r"optim.b1 \(Adam's moment decay\) must be in \[0, 1\), got 1.5"),
    ("optim.b2", -1.0, r"optim.b2 \(Adam's moment decay\) must be in \[0, 1\), got -1.0"),
    ("optim.eps", 0.0, "optim.eps must be > 0, got 0.0"),
])
def test_bad_values_name_the_key(key, value, match):
    extra = {"optim.schedule": "slanted_triangular"} if key == "optim.warmup_steps" else {}
    with pytest.raises(ConfigError, match=match):
        validate(locked(**{key: value}, **extra))


@pytest.mark.parametrize("key", ["checkpoint.every", "train.log_every", "train.steps",
                                 "checkpoint.keep", "train.eval_batch_size"])
def test_fine_tunings_step_counts_are_checked_too(key):
    """The settings both tools share are checked in validate_run_settings, which fine-tuning
    calls: checkpoint.every=0 passed it and failed with a ZeroDivisionError after the first step."""
    from lmscale.config import validate_run_settings
    with pytest.raises(ConfigError, match=f"{key} must be a positive integer, got 0"):
        validate_run_settings(locked(**{key: 0}))


@pytest.mark.parametrize("key,value", [("optim.lr", float("nan")), ("optim.clip", float("nan")),
                                       ("optim.lr_max", float("inf")),
                                       ("optim.weight_decay", float("nan")),
                                       ("precision.loss_scale_init", float("inf"))])
def test_a_number_that_is_nan_or_infinite_is_refused_by_training_and_fine_tuning(key, value):
    """--config.optim.lr=nan passed ``lr <= 0`` (False for NaN), trained, and stopped on
    parameters that were not finite, advising a lower optim.lr."""
    from lmscale.config import validate_run_settings
    for check in (validate, validate_run_settings):
        with pytest.raises(ConfigError, match=f"{key} must be a finite number, got {value!r}"):
            check(locked(**{key: value}))


@pytest.mark.parametrize("key", ["optim.decay_steps", "optim.warmup_steps", "train.steps"])
def test_the_first_step_count_past_int32_is_refused(key):
    """2**31 itself is past int32's largest (2**31 - 1): refused, as 3e9 is."""
    with pytest.raises(ConfigError, match=f"^{key}=2147483648 is more steps than a run counts"):
        validate(locked(**{key: 2**31}))


@pytest.mark.parametrize("key", ["optim.decay_steps", "optim.warmup_steps", "train.steps"])
def test_a_step_count_past_int32_is_refused_by_training_and_fine_tuning(key):
    """The compiled step counts steps in int32: optim.decay_steps=3e9 (meant as "no decay")
    passed the checks, and the first step stopped with an OverflowError traceback."""
    import jax
    import jax.numpy as jnp

    from lmscale.config import validate_run_settings
    from lmscale.training.schedules import make_schedule
    for check in (validate, validate_run_settings):
        with pytest.raises(ConfigError, match=f"^{key}=3000000000 is more steps than a run "
                                              f"counts \\(at most 2\\*\\*31 - 1"):
            check(locked(**{key: 3 * 10**9}))
    validate(locked(**{key: 2**31 - 1}))
    if key == "train.steps":  # bounded by train.epochs (awd's configs: 10**9 "bounded by epochs")
        validate(locked(**{key: 3 * 10**9, "train.epochs": 1.0}))
    else:  # the largest a schedule's compiled step takes
        warmup = 2**31 - 2 if key == "optim.warmup_steps" else 0
        schedule = make_schedule("linear", 1e-3, warmup_steps=warmup, decay_steps=2**31 - 1,
                                 ratio=100.0, cut_frac=0.002)
        assert float(jax.jit(schedule)(jnp.asarray(5, jnp.int32))) >= 0.0


def test_locked_config_rejects_typo():
    c = locked()
    with pytest.raises(AttributeError):
        c.model.hiden = 3


def test_a_config_file_that_forgot_to_lock_still_has_its_typos_refused(tmp_path):
    """c.model.hiden in a file without c.lock() adds a field nothing reads: refused, naming
    it and the field meant, before the workdir is made. A misspelt --config path is one line."""
    config = tmp_path / "unlocked.py"
    config.write_text("from lmscale.config import default_config\n\n\ndef get_config():\n"
                      "    c = default_config()\n    c.model.hiden = 64\n    return c\n")
    workdir = tmp_path / "run"
    returns_dict = tmp_path / "returns_dict.py"  # an AttributeError traceback before
    returns_dict.write_text("def get_config():\n    return {'model': {'hidden': 32}}\n")
    for path, message in ((config, "error: unknown config field model.hiden (did you mean "
                                   "model.hidden?): lmscale/config.py lists every field"),
                          (returns_dict, f"error: --config={returns_dict}: get_config() returned a "
                                         "dict, not an ml_collections.ConfigDict (start from "
                                         "lmscale.config.default_config() and end with c.lock())"),
                          (tmp_path / "missing.py", "error: --config: [Errno 2] No such file or "
                                                    f"directory: '{tmp_path / 'missing.py'}'")):
        proc = subprocess.run([sys.executable, "-m", "lmscale.train", f"--config={path}",
                               f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [message]
        assert not workdir.exists()


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


def test_config_files_load_without_importing_jax():
    """The tools parse their flags, and so run a config file, before they may restart their
    process (training/host_memory.py): JAX, whose import is most of a start-up, comes after."""
    from tests.conftest import script_result
    loaded = script_result(
        "import glob, importlib.util, json, sys\n"
        "for path in sorted(glob.glob('configs/*.py')):\n"
        "    spec = importlib.util.spec_from_file_location('config_file', path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    module.get_config()\n"
        "heavy = ('jax', 'jaxlib', 'flax', 'optax', 'orbax')\n"
        "print(json.dumps({'files': len(glob.glob('configs/*.py')),\n"
        "                  'heavy': sorted(m for m in sys.modules if m.split('.')[0] in heavy)}))\n")
    assert loaded["files"] >= 10 and loaded["heavy"] == []


def test_epochs_that_are_a_whole_step_in_float_noise_end_there():
    """0.28 x 25 = 7.000000000000001: train.epochs=0.28 at 25 steps an epoch ran 8 steps, and
    train.eval_every_epochs=0.28 validated at step 7 and again at the end, step 8."""
    from lmscale.config import horizon
    c = locked(**{"train.steps": 10**6, "train.epochs": 0.28})
    assert horizon(c, 25) == (7, 7)


def test_no_config_file_sets_a_validation_step_count_that_eval_every_epochs_ignores():
    """train.eval_every_epochs > 0 ignores train.eval_every: the CPU awd configs, built on
    awd_lstm_word.py / awd_lstm_char.py, kept their eval_every=100 / 200 (NT-ASGD's passes,
    benchmarks/README.md's numbers) and validated once an epoch instead, unsaid."""
    import glob

    from lmscale.config import config_from_file, default_config
    default = default_config().train.eval_every
    ignored = [path for path in sorted(glob.glob("configs/*.py"))
               if (c := config_from_file(path).train).eval_every_epochs > 0
               and c.eval_every != default]
    assert ignored == []


def test_a_missing_data_train_is_named():
    """data.train = None in a notebook was "no such file or directory: None"."""
    from lmscale.config import ConfigError, validate
    for bad in (None, "  "):
        c = default_config()
        with c.unlocked():
            c.data.train = bad
        with pytest.raises(ConfigError, match=f"data.train must name the training text .*got {bad!r}"):
            validate(c, 1)


@pytest.mark.parametrize("flag, message", [
    ("--config.nosuch=3", "error: unknown config key 'nosuch' in --config.nosuch=3"),
    ("--config.model.hiden=3", "error: unknown config key 'hiden' in --config.model.hiden=3. "
                               "Did you mean \"hidden\" instead of \"hiden\"?"),
    ("--config.model.hidden.x=3", "error: unknown config key 'x' in --config.model.hidden.x=3")])
def test_an_unknown_override_key_is_named(tmp_path, flag, message):
    """A top-level typo read "unknown config key '\\"'. nosuch \\"" (audit)."""
    proc = subprocess.run([sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
                           f"--workdir={tmp_path / 'run'}", flag], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [message]


def test_a_file_without_get_config_is_named(tmp_path):
    """A sweep file (or any file without get_config) given as --config read "unknown config
    key 'config_config'" (audit)."""
    proc = subprocess.run([sys.executable, "-m", "lmscale.train",
                           "--config=configs/sweeps/lr_rules.py", f"--workdir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --config=configs/sweeps/lr_rules.py defines no get_config()")


def test_paper_configs_follow_the_seeds_published_schedules():
    """sentiment-discovery's published settings (experiments/train_mlstm_singlenode.sh:
    --lr 3e-3 --decay-style linear --constant-decay 100000 --train-iters 73000;
    analysis/reproduction.md: "a linear decay rate over 100k steps for global batch sizes
    greater than 2048"; train_transformer_singlenode.sh: --train-iters 670000 --decay-style
    cosine; arguments.py: --relu-dropout 0.1). The 32k config had decayed to 0 over 3 epochs
    (~13.7k steps) and the 8-GPU one over 1 epoch, both said to be the seed's rule."""
    from lmscale.config import config_from_file, derive, with_global_batch
    one_node = with_global_batch(config_from_file("configs/mlstm4096_8gpu.py"), 8)
    d = derive(one_node, steps_per_epoch=73_000)  # the seed's 73k steps of 2048 x 256
    assert (one_node.train.batch_size, d["lr"], d["steps"], d["decay_steps"]) == (2048, 3e-3, 73_000, 100_000)
    headline = with_global_batch(config_from_file("configs/mlstm4096_128gpu.py"), 128)
    d = derive(headline, steps_per_epoch=4_563)  # 3.83e10 characters / (32768 x 256)
    assert (headline.train.batch_size, d["lr"], d["steps"], d["decay_steps"]) == (32768, 3e-3, 13_689, 100_000)
    transformer = config_from_file("configs/transformer_amazon.py")
    assert (transformer.train.steps, transformer.optim.schedule) == (670_000, "cosine")
    assert (transformer.model.dropout, transformer.model.ff_dropout, transformer.model.attn_dropout) == (0.1, 0.1, 0.0)


def test_a_negative_batch_is_named_as_such_not_as_indivisible():
    with pytest.raises(ConfigError, match="train.batch_size must be a positive integer, got -3"):
        validate(locked(**{"train.batch_size": -3}), 2)


def test_variable_bptt_lengths_are_checked_against_the_kinds_bound():
    """The longest drawn length against the kind's own check (a model with a length bound
    failed at the step that drew it: the check was the transformer's config field only)."""
    c = default_config()
    c.data.train = "corpus"
    c.model.kind, c.model.max_len = "transformer", 64
    c.train.variable_bptt, c.train.seq_len = True, 50  # lengths up to 65 rounded to 5: 65
    with pytest.raises(ConfigError, match=r"^train.variable_bptt draws sequences of \d+ to 65 "
                       r"tokens \(train.bptt_max=65, .*: a drawn length of 65 exceeds model.max_len=64"):
        validate(c)
    c.train.bptt_max, c.train.bptt_bucket = 66, 8  # 66 rounded down to 8: 64, within the bound
    validate(c)


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999])
def test_seed_outside_a_keys_32_bits_is_refused(seed):
    """A JAX key keeps 32 bits: seed -1 trained exactly as 2**32 - 1, silently."""
    def with_seed(value):
        c = locked()
        c.seed = value
        return c
    with pytest.raises(ConfigError, match=f"seed must be in \\[0, 2\\*\\*32\\).*got {seed}"):
        validate(with_seed(seed))
    validate(with_seed(2**32 - 1))


@pytest.mark.parametrize("path,where", [(("optim", "lr"), "config.json"), (("seed",), "config.json"),
                                        (("data", "val"), "config file")])
def test_a_field_left_none_is_one_config_error(tmp_path, path, where):
    """``null`` in an edited config.json (or ``= None`` in a config file) was a TypeError
    traceback in the checks ('<=' not supported between NoneType and int)."""
    import json as json_lib
    from lmscale.config import ConfigError, default_config, load_config, validate_run_settings
    record = default_config().to_dict()
    holder = record
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = None
    if where == "config.json":
        file = tmp_path / "config.json"
        file.write_text(json_lib.dumps(record))
        config, _ = load_config(str(file))
    else:
        config = default_config()
        config.data.val = None
    with pytest.raises(ConfigError, match=rf"^{'.'.join(path)} is None \(null\)"):
        validate(config, 1)
    with pytest.raises(ConfigError, match=rf"^{'.'.join(path)} is None \(null\)"):
        validate_run_settings(config)  # fine-tuning's checks


@pytest.mark.parametrize("key,value,message", [
    ("data.txt_mode", "para", "data.txt_mode must be 'file' or 'line', got 'para'"),
    ("data.shard_tokens", 0, "data.shard_tokens must be a positive integer, got 0")])
def test_data_preparation_fields_are_named_with_their_section(key, value, message):
    """Refused at preparation as "txt_mode must be ..." / "shard_tokens must be ..." (audit)."""
    with pytest.raises(ConfigError, match=f"^{message}$"):
        validate(locked(**{key: value}), 1)


@pytest.mark.parametrize("key,value", [("finetune.train", "labels.csv"), ("finetune.head_lr", 0.5)])
def test_an_lm_run_refuses_fine_tuning_settings(key, value):
    """lmscale.train --config=configs/finetune_sst.py trained an LM on data.train (the default
    python_stdlib) and recorded finetune.* in config.json as if applied, without a word."""
    with pytest.raises(ConfigError, match=rf"^{key}={value!r}: finetune\.\* settings are "
                                          rf"read by lmscale\.finetune"):
        validate(locked(**{key: value}))
    validate(locked())  # the defaults pass
