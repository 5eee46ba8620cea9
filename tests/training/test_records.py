"""Resume and checkpoints as records of the run: changed-config resumes refused naming the field,
a defined learning rate when train.steps is raised, a fresh start that archives, old
checkpoints without a newer model field, unreadable and newer-format checkpoints, params-only
inference, and the eval / progress behaviour of the command-line tools (unreadable
checkpoints: test_unreadable_checkpoints.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from lmscale.training.checkpoints import CheckpointError, CheckpointMismatchError
from lmscale.training.archive import archive_previous_run
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from lmscale.training.restore import load_trained
from tests.conftest import REPO, tiny_config, tiny_train_command, xla_flags
from tests.training.conftest import BASE, copy_run, steps_on_disk


def meta_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")


@pytest.mark.parametrize("key, value", [("train.seq_len", 8), ("data.split", "7,1,1"),
                                        ("data.tokenizer", "openai"), ("data.train", "python_stdlib")])


def test_resume_with_a_changed_data_field_is_refused_naming_it(base_run, tmp_path, key, value):
    corpus, workdir = copy_run(base_run, tmp_path)
    before = {name: open(os.path.join(workdir, name)).read() for name in ("config.json", "metrics.jsonl")}
    data_before = sorted(os.listdir(os.path.join(workdir, "data")))
    with pytest.raises(CheckpointMismatchError, match=f"trained with {key}=") as error:
        train(tiny_config(corpus, **{**BASE, "train.steps": 6, key: value}), workdir)
    assert "\n" not in str(error.value) and "config.resume = False" in str(error.value)  # API
    assert {name: open(os.path.join(workdir, name)).read() for name in before} == before
    assert sorted(os.listdir(os.path.join(workdir, "data"))) == data_before  # nothing lost
    assert steps_on_disk(workdir) == [2, 4]


def test_raising_train_steps_keeps_the_decay_horizon(base_run, tmp_path, capfd):
    """Linear decay to 0 over the first 4 steps: steps 5-6 run at the schedule's end (0), not
    at a learning rate that jumps back up; optim.decay_steps changes it explicitly."""
    corpus, workdir = copy_run(base_run, tmp_path)
    train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)
    records = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in records[4:]] == [0.0, 0.0]
    assert ("note: train.steps is 6 (it was 4); the learning rate keeps the decay horizon of "
            "4 steps the run started with (set optim.decay_steps to change it): past it the "
            "linear rate is 0, and those steps leave the weights as they are"
            ) in capfd.readouterr().err
    train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)  # nothing changed: no note
    assert "note: train.steps" not in capfd.readouterr().err
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["derived"]["decay_steps"] == 4 and config["derived"]["steps"] == 6
    # A changed decay setting (a config file edited between submissions) moves the horizon,
    # and the rate jumps at the resume: said (it was silent).
    train(tiny_config(corpus, **{**BASE, "train.steps": 8, "optim.decay_steps": 10}), workdir)
    assert ("note: optim.decay_steps 0 -> 10 since the checkpoint: the learning rate follows the "
            "new schedule from here, the decay horizon is 10 steps (it was 4)") in capfd.readouterr().err
    # config.json is the current config; the one it replaced is history
    old = json.load(open(os.path.join(workdir, "history", "config.4.json")))
    assert old["train"]["steps"] == 4


def test_a_new_peak_learning_rate_is_said_at_the_resume(base_run, tmp_path, capfd):
    """optim.lr 3e-3 -> 1e-3 at a resume changed the rate unsaid (history/ recorded it)."""
    corpus, workdir = copy_run(base_run, tmp_path)
    train(tiny_config(corpus, **{**BASE, "train.steps": 6, "optim.lr": 1e-3,
                                 "optim.decay_steps": 6}), workdir)
    err = capfd.readouterr().err
    assert ("note: the peak learning rate is 0.001 from here (it was 0.003): the schedule goes "
            "on at the new rate") in err, err


def test_a_constant_rate_run_extended_has_no_horizon_note(base_run, tmp_path, capfd):
    """A constant schedule has no decay horizon to keep: the note about it was noise."""
    corpus, workdir = copy_run(base_run, tmp_path)
    constant = {**BASE, "optim.schedule": "constant", "optim.warmup_steps": 0}
    train(tiny_config(corpus, **{**constant, "train.steps": 2}), str(tmp_path / "c"))
    capfd.readouterr()
    train(tiny_config(corpus, **{**constant, "train.steps": 4}), str(tmp_path / "c"))
    assert "decay horizon" not in capfd.readouterr().err


def test_a_decay_ending_before_the_run_is_said_as_it_starts(corpus, tmp_path, capfd):
    """optim.decay_steps=2 of a 3-step linear run: the run's own note on its steps at rate 0."""
    train(tiny_config(corpus, **{"train.steps": 3, "train.eval_every": 0, "optim.decay_steps": 2,
                                 "optim.warmup_steps": 0, "checkpoint.every": 3}),
          str(tmp_path / "run"))
    assert ("note: the linear decay reaches 0 at step 2 (optim.decay_steps): the run's steps 3-3 "
            "train at rate 0") in capfd.readouterr().err


def test_resume_false_archives_the_previous_run_and_starts_afresh(base_run, tmp_path):
    corpus, workdir = copy_run(base_run, tmp_path)
    config = tiny_config(corpus, **{**BASE, "train.steps": 2})
    config.resume = False
    train(config, workdir)
    assert steps_on_disk(workdir) == [2]
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [1, 2]
    (archived,) = os.listdir(os.path.join(workdir, "archive"))
    old = os.path.join(workdir, "archive", archived)
    assert sorted(int(s) for s in os.listdir(os.path.join(old, "checkpoints")) if s.isdigit()) == [2, 4]
    assert os.path.exists(os.path.join(old, "metrics.jsonl"))


def test_a_run_whose_parameters_stop_being_finite_saves_nothing_more(base_run, tmp_path):
    """A diverged run (here an lr of 3e38 from step 4 on: no longer finite by step 6; no loss logged before) is stopped at its next save with one error,
    and the good checkpoints are kept rather than rotated away by NaN ones."""
    from lmscale.training.loop import DivergedError
    corpus, workdir = copy_run(base_run, tmp_path)
    config = tiny_config(corpus, **{**BASE, "train.steps": 12, "optim.lr": 3e38,
                                    "optim.decay_steps": 4, "optim.schedule": "constant",
                                    "checkpoint.keep": 2, "train.log_every": 100})
    # (the loss of the steps since the last log, checked at the save, finds it first; the
    # parameters' check, when it is not: float16, a save right after a log, fine-tuning)
    with pytest.raises(DivergedError, match="(the parameters are|the training loss is) not "
                                            r"finite at step 6.* \(the latest: step 4, in "):
        train(config, workdir)
    assert steps_on_disk(workdir) == [2, 4] and load_trained(workdir).step == 4


def test_a_run_diverging_before_its_first_checkpoint_says_there_is_none(tmp_path, corpus):
    """It said "the checkpoints before it are kept ... resume from there" of an empty folder."""
    from lmscale.training.loop import DivergedError
    config = tiny_config(corpus, **{"train.steps": 12, "optim.lr": 3e38, "train.log_every": 100,
                                    "optim.schedule": "constant", "optim.warmup_steps": 0,
                                    "checkpoint.every": 4, "train.eval_every": 0})
    threads = {t.ident for t in threading.enumerate()}
    with pytest.raises(DivergedError, match="not finite at step 4: (not saved, and|the run "
                                            "diverged and is stopped unsaved;) no checkpoint "
                                            "was written before it(;|:) start over"):
        train(config, str(tmp_path / "run"))
    # What the run opened is closed (a notebook's run that raised kept TensorBoard's writer
    # thread, its queue's thread, the events file and pipes, one set a run)
    events = [f for f in os.listdir("/proc/self/fd")
              if "tfevents" in os.path.realpath(f"/proc/self/fd/{f}")]
    assert events == [], events
    left = [t.name for t in threading.enumerate() if t.ident not in threads and t.is_alive()
            and t.name != "tqdm_monitor"]
    assert left == [], left


def test_a_torn_metrics_line_is_dropped_and_a_broken_config_json_is_one_error(base_run, tmp_path,
                                                                             capfd):
    """A crash or a full disk mid-write leaves half a line in metrics.jsonl: the resume drops it
    (json.loads raised on it at every resume); a hand-broken config.json names itself (and the
    inference tools read the checkpoint's record of the config instead)."""
    corpus, workdir = copy_run(base_run, tmp_path)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 110, "split": "tr')
    train(tiny_config(corpus, **{**BASE, "train.steps": 6, "optim.decay_steps": 4}), workdir)
    assert [r["step"] for r in read_metrics(workdir) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    with open(os.path.join(workdir, "config.json"), "a") as f:
        f.write("{ broken")
    assert load_trained(workdir).step == 6
    assert "config.json is not valid JSON" in capfd.readouterr().err


def test_a_second_run_in_a_busy_workdir_is_refused(base_run, tmp_path):
    """Two trainers on one workdir interleaved checkpoints and metrics (one crashed in orbax);
    the second is now refused naming the first's pid, and the lock goes with its holder."""
    from lmscale.atomic import HOST
    from lmscale.training.workdir_lock import WorkdirInUseError, hold_workdir
    corpus, workdir = copy_run(base_run, tmp_path)
    held = hold_workdir(workdir)  # as a running trainer holds it
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    with pytest.raises(WorkdirInUseError, match=f"is in use by another run in this process "
                                                f"\\(pid {os.getpid()} on {HOST}\\)"):
        train(tiny_config(corpus, **{**BASE, "train.steps": 6, "optim.decay_steps": 4}), workdir)
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
    held.close()
    train(tiny_config(corpus, **{**BASE, "train.steps": 6, "optim.decay_steps": 4}), workdir)
    assert steps_on_disk(workdir)[-1] == 6
    # A run that failed in this process (its exception kept, as a notebook keeps it) released
    # the lock: the next run here is not refused (test_unreadable_latest_checkpoint... too).
    hold_workdir(workdir).close()


def test_a_checkpoint_from_before_a_model_field_existed_still_loads(base_run, tmp_path):
    """The checkpoint does not record model.weight_norm (as if written before the field was
    added): its default counts, for inference and for resuming; a non-default is refused."""
    corpus, workdir = copy_run(base_run, tmp_path)
    for step in steps_on_disk(workdir):
        meta = json.load(open(meta_path(workdir, step)))
        del meta["signature"]["model.weight_norm"]
        json.dump(meta, open(meta_path(workdir, step), "w"))
    assert load_trained(workdir).step == 4
    train(tiny_config(corpus, **{**BASE, "train.steps": 6, "optim.decay_steps": 4}), workdir)
    assert steps_on_disk(workdir)[-1] == 6
    with pytest.raises(CheckpointMismatchError, match="model.weight_norm is True there and False here"):
        train(tiny_config(corpus, **{**BASE, "train.steps": 8, "model.weight_norm": False}), workdir)


def test_checkpoint_from_a_newer_lmscale_is_refused(base_run, tmp_path):
    corpus, workdir = copy_run(base_run, tmp_path)
    meta = json.load(open(meta_path(workdir, 4)))
    assert meta["format"] == 2 and meta["config"]["train"]["steps"] == 4  # a record of the run
    meta["format"] = 99
    json.dump(meta, open(meta_path(workdir, 4), "w"))
    for attempt in (lambda: load_trained(workdir),
                    lambda: train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)):
        with pytest.raises(CheckpointError, match="written by a newer lmscale .checkpoint format 99"):
            attempt()


def test_inference_restores_params_only_on_any_device_count(base_run, tmp_path):
    """A batch-4 run (its carry has 4 rows) loads and scores on 3 devices."""
    _, workdir = base_run
    code = ("import jax, lmscale; assert len(jax.devices()) == 3; "
            f"lm = lmscale.load_lm({workdir!r}); print(lm.trained.step, float(lm.score(['the cat'])[0]))")
    env = {**os.environ, "XLA_FLAGS": xla_flags(3), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    step, bpc = proc.stdout.split()
    assert step == "4" and 0 < float(bpc) < 10


def test_readers_neither_create_nor_clean_a_workdirs_checkpoints(base_run, tmp_path):
    """Inference tools read a workdir without writing to it: a run folder without checkpoints
    is one line (no orbax thread traceback after it) and gets no checkpoints/ folder; a
    temporary checkpoint folder (a training run's save in progress) is left alone."""
    _, workdir = copy_run(base_run, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), empty / "config.json")
    proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={empty}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: {empty} holds no checkpoint ({empty}/checkpoints does not exist)"
    assert "Traceback" not in proc.stderr and os.listdir(empty) == ["config.json"]
    in_progress = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1733300000000000")
    shutil.copytree(os.path.join(workdir, "checkpoints", "4"), in_progress)
    assert load_trained(workdir).step == 4
    assert os.path.isdir(in_progress)
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint of step 3; its steps are "
                                                r"\[2, 4\]"):  # not "unreadable"
        load_trained(workdir, 3)


def test_a_run_refused_at_start_is_one_line_and_trains_nothing(tmp_path, corpus):
    """A validation split too small for one sequence is refused before the first step (it was
    found at the first validation, after training, with no checkpoint kept); the error is the
    last line, without orbax's cleanup-thread traceback after it (seen 2 runs in 3 once the
    workdir's checkpoints/ existed, so twice)."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("twelve bytes")
    workdir = tmp_path / "run"
    for _ in range(2):
        proc = subprocess.run(tiny_train_command(workdir, corpus, **{"data.val": str(tiny),
                                                                     "train.steps": 4}),
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == (
            "error: split 'val' has 12 tokens: too few for one sequence of seq_len 16")
        assert "Traceback" not in proc.stderr
        assert not os.path.exists(workdir / "metrics.jsonl")


def test_cli_logs_plain_progress_lines_and_eval_defaults_to_the_runs_val_split(tmp_path, corpus):
    workdir = tmp_path / "run"
    # progress_bar on (the default): stderr is a pipe, not a terminal, so plain lines.
    command = tiny_train_command(workdir, corpus, **{"train.steps": 4, "train.log_every": 2,
                                                     "train.eval_batch_size": 4,
                                                     "train.eval_steps": 2,
                                                     "train.progress_bar": True})
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    assert [l.split(":")[0] for l in proc.stderr.splitlines() if l.startswith("step ")] == \
        ["step 2/4", "step 4/4", "step 4"]  # the last is the validation line: progress too
    assert proc.stdout.splitlines()[-1].startswith("step 4: final val bpc ")  # the result, once
    assert proc.stdout.count("val bpc") == 1
    proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={workdir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    val = [r for r in read_metrics(str(workdir)) if r["split"] == "val"][-1]
    assert result["split"] == "val" and result["bpc"] == val["bpc"] and result["step"] == 4


def test_two_archives_in_one_second_keep_both(tmp_path, monkeypatch):
    """resume=false archives into archive/<second>/: a second archive in the same second
    merged into the first (its config.json and metrics.jsonl replaced the first's)."""
    from lmscale.training import archive
    monkeypatch.setattr(archive.time, "strftime", lambda fmt: "20261204-120000")  # one second
    workdir = tmp_path / "run"
    for run in ("first", "second"):
        (workdir / "checkpoints" / run).mkdir(parents=True)
        (workdir / "config.json").write_text(run)
        (workdir / "metrics.jsonl").write_text(run)
        archive.archive_previous_run(str(workdir))
    first, second = workdir / "archive" / "20261204-120000", workdir / "archive" / "20261204-120000-2"
    assert (first / "config.json").read_text() == "first" and (first / "checkpoints" / "first").is_dir()
    assert (second / "metrics.jsonl").read_text() == "second"
    assert os.listdir(second / "checkpoints") == ["second"]


def test_the_failed_restores_sibling_reads_print_nothing_when_collected():
    """A damaged checkpoint's other reads, never awaited once one failed, raise when Python
    collects them: eval printed 60-320 lines of them after its one error line. Those are
    dropped (by the hook checkpoints.py installs); any other unraisable exception still shows."""
    import types
    from lmscale.training.checkpoints import failed_restore_noise

    async def _read_array_index_and_device_put():
        pass

    async def other_coroutine():
        pass

    for make, error, dropped in (
            (_read_array_index_and_device_put,
             Exception("Encountered error while reading array index: (slice(0, 32, 1),)"), True),
            (other_coroutine, Exception("Encountered error while reading array index"), False),
            (_read_array_index_and_device_put, ValueError("something else"), False),
            (other_coroutine, RuntimeError("Event loop is closed"), True)):
        coro = make()
        unraisable = types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                           exc_traceback=None, err_msg=None, object=coro)
        assert failed_restore_noise(unraisable) == dropped, (make, error)
        coro.close()


def test_a_prepared_datasets_runs_resume_whatever_the_tokenizer_fields_say(tmp_path):
    """A prepared dataset brings its own tokenizer: the run trained on it whatever
    data.tokenizer said, so a resume is not refused over that field (it was: "trained with
    data.tokenizer='openai'", the value recorded but never used). data.sp_model with
    another tokenizer is refused: it would be ignored."""
    from lmscale.config import ConfigError, default_config, validate
    from lmscale.data.prepare import prepare_dataset
    from lmscale.training.resume import check_resumable
    text = tmp_path / "t.txt"
    text.write_text("some text to prepare. " * 400)
    data = prepare_dataset([str(text)], str(tmp_path / "ds"), split=(8, 1, 1), progress=False)
    old, new = default_config(), default_config()
    old.data.train = new.data.train = data
    old.data.tokenizer, new.data.tokenizer, new.data.vocab_size = "openai", "sentencepiece", 400
    check_resumable({"config": old.to_dict()}, new, "W")
    new.data.split = "9,1,1"  # the dataset's own split is used, whatever data.split says
    check_resumable({"config": old.to_dict()}, new, "W")
    new.train.seq_len = old.train.seq_len + 1
    with pytest.raises(CheckpointMismatchError, match="train.seq_len"):
        check_resumable({"config": old.to_dict()}, new, "W")
    bad = default_config()
    bad.data.train, bad.data.sp_model = str(text), str(tmp_path / "m.model")
    with pytest.raises(ConfigError, match="data.sp_model is for data.tokenizer=sentencepiece"):
        validate(bad)


def test_a_dataset_prepared_again_in_place_is_not_resumed_on(tmp_path, corpus):
    """prepare --overwrite into the run's dataset folder, then a resume: it went on silently
    with other data (steps_per_epoch 19 -> 21, losses apart from the uninterrupted run)."""
    from lmscale.data.prepare import prepare_dataset
    data = str(tmp_path / "ds")
    prepare_dataset(corpus, data, split=(8, 1, 1), shard_tokens=4096, progress=False)
    config = lambda steps: tiny_config(data, **{**BASE, "train.steps": steps})
    workdir = str(tmp_path / "run")
    train(config(4), workdir)
    train(config(6), workdir)  # the same dataset: resumes
    other = tmp_path / "other.txt"
    import glob
    other.write_text("".join(open(p).read() for p in sorted(glob.glob(corpus))).upper())
    prepare_dataset(str(other), data, split=(8, 1, 1), shard_tokens=4096, overwrite=True,
                    progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"was trained on the dataset .* its files "
                                                      r"have changed since \(prepared again\?\)"):
        train(config(8), workdir)


def test_a_resume_with_other_preparation_settings_is_refused_before_replacing_the_data(base_run, tmp_path):
    """data.shard_tokens changed on resume: WORKDIR/data was prepared again in place, and only
    then the resume refused (on the new fingerprint) with the old data gone."""
    corpus, workdir = copy_run(base_run, tmp_path)
    meta = os.path.join(workdir, "data", "metadata.json")
    before = open(meta).read()
    with pytest.raises(CheckpointMismatchError, match=r"prepared with data.shard_tokens=.*; resuming "
                                                      r"it with data.shard_tokens=20000 would prepare"):
        train(tiny_config(corpus, **{**BASE, "train.steps": 6, "data.shard_tokens": 20000}), workdir)
    assert open(meta).read() == before


def test_a_workdir_whose_data_request_lacks_newer_keys_resumes(base_run, tmp_path):
    """An older lmscale recorded fewer keys in data_request.json: a plain resume must not read
    that as changed preparation settings (refused) or prepare the data again."""
    corpus, workdir = copy_run(base_run, tmp_path)
    path = os.path.join(workdir, "data_request.json")
    request = json.load(open(path))
    request.pop("shard_tokens")
    json.dump(request, open(path, "w"))
    meta = open(os.path.join(workdir, "data", "metadata.json")).read()
    train(tiny_config(corpus, **{**BASE, "train.steps": 6}), workdir)
    assert open(os.path.join(workdir, "data", "metadata.json")).read() == meta


def test_resume_false_archives_what_was_set_aside(tmp_path):
    """unreadable_checkpoints/ and metrics.jsonl.damaged are the previous run's: archived."""
    (tmp_path / "unreadable_checkpoints" / "4-x").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')
    (tmp_path / "metrics.jsonl.damaged").write_text("garbage\n")
    target = archive_previous_run(str(tmp_path))
    assert sorted(os.listdir(target)) == ["metrics.jsonl", "metrics.jsonl.damaged",
                                          "unreadable_checkpoints"]
    assert sorted(os.listdir(tmp_path)) == ["archive"]


def test_resume_false_archives_a_damaged_best_json_too(tmp_path):
    """best.json.damaged (set aside by an earlier run) is the previous run's as well."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')
    (tmp_path / "best.json.damaged").write_text("{torn")
    target = archive_previous_run(str(tmp_path))
    assert sorted(os.listdir(target)) == ["best.json.damaged", "metrics.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["archive"]
