"""End-to-end training on a generated corpus: learning, metrics, checkpoints, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmscale.data.errors import DataError
from lmscale.training.checkpoints import CheckpointMismatchError
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import REPO, lowered_programs, tiny_config, tiny_train_command, write_corpus

COMPARED = ("step", "split", "loss", "bpc", "lr", "grad_norm")


def strip(records):
    return [{k: r[k] for k in COMPARED if k in r} for r in records]


def test_train_writes_metrics_config_checkpoints_and_learns(tmp_path, corpus, capsys):
    workdir = str(tmp_path / "run")
    result = train(tiny_config(corpus, **{"train.steps": 40, "optim.lr": 1e-2}), workdir)
    params = json.load(open(os.path.join(workdir, "config.json")))["derived"]["params"]
    # what trains, progress bar or not (a size of another kind was ignored unsaid)
    assert (f"model: mlstm hidden 32 embed 16 layers 1, {params:,} parameters, vocabulary 257"
            in capsys.readouterr().err)
    records = read_metrics(workdir)
    train_records = [r for r in records if r["split"] == "train"]
    val_records = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train_records] == list(range(2, 41, 2))
    assert [r["step"] for r in val_records] == list(range(4, 41, 4))
    for r in train_records:
        assert {"lr", "chars_per_s", "bpc"} <= set(r)
    assert val_records[-1]["bpc"] < 0.6 * val_records[0]["bpc"]  # it learns the corpus
    assert result["val"]["bpc"] == val_records[-1]["bpc"]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["model"]["hidden"] == 32 and config["derived"]["steps"] == 40
    import importlib.metadata  # what the run was made with, to reproduce it
    software = config["derived"]["software"]
    import jax
    assert software["jax"] == jax.__version__ and software["lmscale"] == importlib.metadata.version(
        "lmscale") and {"python", "flax", "optax", "orbax-checkpoint", "numpy"} <= set(software)
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                  if s.isdigit()) == [32, 36, 40]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb")))


def test_rerun_of_a_finished_run_says_so_and_writes_nothing(tmp_path, corpus, capsys):
    workdir = str(tmp_path / "run")
    config = tiny_config(corpus, **{"train.steps": 8})
    first = train(config, workdir)
    files = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, fs in os.walk(workdir) for f in fs if not f.startswith(".lock")}
    capsys.readouterr()
    again = train(config, workdir)  # printed nothing and returned no val record before
    assert again["already_trained"] and again["step"] == 8
    # the same keys as a run that trained: a notebook reads either without a KeyError
    assert set(again) == set(first) and not first["already_trained"]
    assert again["stopped_by_rule"] is False
    assert again["val"] == first["val"] and again["train"]["step"] == 8
    said = capsys.readouterr().err
    assert "is already trained to step 8 (train.steps=8): nothing to do" in said
    # From the API (a notebook), config fields, not flags; raising train.steps alone trained
    # on at the decayed rate 0 (the advice did nothing).
    assert config.optim.schedule == "linear" and ("Its linear learning rate reached 0 at step 8: "
            "raise config.train.steps and config.optim.decay_steps to train on, or "
            "config.resume = False to start over") in said
    after = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, fs in os.walk(workdir) for f in fs if not f.startswith(".lock")}
    assert after == files  # no checkpoint, config or metrics rewritten


def test_a_run_stopped_after_its_readers_ctrl_c_ends_quietly(tmp_path, corpus):
    """`lmscale.train ... | tee train.log` and Ctrl-C: tee is gone before the run's stop line,
    which on stdout was a BrokenPipeError traceback and exit status 1 (the checkpoint saved)."""
    workdir = tmp_path / "run"
    proc = subprocess.Popen(tiny_train_command(workdir, corpus, **{
        "train.steps": 100000, "train.log_every": 1, "checkpoint.every": 100000}), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader (tee, killed by the same Ctrl-C) is gone
    deadline = time.time() + 300
    while time.time() < deadline:  # in the steps
        try:
            if any(r["step"] >= 2 for r in read_metrics(str(workdir))):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err, err[-2000:]
    assert "stopped by signal 2 at step" in err


def test_a_reader_that_left_before_the_final_validation_line_is_no_traceback(tmp_path, corpus):
    """`lmscale.train ... | head -1`: the reader gone, the final "val bpc" line met a closed
    pipe after the run's files were all written (a BrokenPipeError traceback, exit 1)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a user's stdout
    proc = subprocess.Popen(tiny_train_command(tmp_path / "run", corpus, **{
        "train.steps": 2, "train.eval_every": 2, "checkpoint.every": 2}), cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader left before the result
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err, err[-2000:]
    assert [r["step"] for r in read_metrics(str(tmp_path / "run")) if r["split"] == "val"] == [2]


def test_an_interrupt_in_a_notebook_says_so_and_returns_the_last_validation(tmp_path, corpus,
                                                                            capfd):
    """A notebook's interrupt button (SIGINT) stops train() at a checkpoint and returns; with
    no progress bar nothing said it stopped or, re-run, that it resumed, and the result had no
    "val" (the notebook's next line raised KeyError)."""
    import signal
    import threading
    import time

    from lmscale.training.metrics import read_metrics
    workdir = str(tmp_path / "run")
    first = train(tiny_config(corpus, **{"train.steps": 4, "train.eval_every": 4}), workdir)

    def interrupt() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if any(r["step"] >= 8 for r in read_metrics(workdir)):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    capfd.readouterr()
    thread = threading.Thread(target=interrupt)
    thread.start()
    result = train(tiny_config(corpus, **{"train.steps": 100000, "train.eval_every": 0,
                                          "train.log_every": 1}), workdir)
    thread.join()
    out, err = capfd.readouterr()
    assert result["stopped"] and result["stopped_by_signal"] == signal.SIGINT
    assert result["val"] == first["val"]  # the run's last validation (step 4)
    assert f"resuming {workdir} from its checkpoint at step 4" in err
    assert f"stopped by signal 2 at step {result['step']}; checkpoint saved" in err


def test_resume_equals_uninterrupted(tmp_path, corpus):
    # decay_steps fixed so that the first half of the split run has the same schedule.
    overrides = {"optim.decay_steps": 12, "model.dropout": 0.0}
    full = str(tmp_path / "full")
    train(tiny_config(corpus, **overrides), full)
    split_run = str(tmp_path / "split")
    train(tiny_config(corpus, **overrides, **{"train.steps": 6}), split_run)
    with lowered_programs() as built:
        train(tiny_config(corpus, **overrides), split_run)
    # the resumed run restores into the state's shapes: its initial state is never computed
    assert built and not [name for name in built if "initial_train_state" in name], built
    a = strip(read_metrics(full))
    b = [r for r in strip(read_metrics(split_run)) if not (r["step"] == 6 and r["split"] == "val")]
    assert a == b  # bitwise: floats compared exactly


def test_resume_with_dropout_and_two_layers_equals_uninterrupted(tmp_path, corpus):
    overrides = {"optim.decay_steps": 8, "model.dropout": 0.3, "model.layers": 2,
                 "train.steps": 8, "model.kind": "lstm"}
    full = str(tmp_path / "full")
    train(tiny_config(corpus, **overrides), full)
    split_run = str(tmp_path / "split")
    # Stop at a log boundary (log_every=2): the last step of a run always logs its window.
    train(tiny_config(corpus, **{**overrides, "train.steps": 4}), split_run)
    train(tiny_config(corpus, **overrides), split_run)
    a = strip(read_metrics(full))
    b = strip(read_metrics(split_run))
    assert a == b


def test_sigterm_checkpoints_and_rerun_resumes(tmp_path, corpus):
    """A real process stopped by SIGTERM saves its state; the same command finishes the run."""
    workdir = tmp_path / "run"
    args = tiny_train_command(workdir, corpus, **{
        "train.steps": 100000, "optim.decay_steps": 100, "train.log_every": 1,
        "train.eval_batch_size": 4, "checkpoint.every": 100000})
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = read_metrics(str(workdir))[-1]["step"]
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps and steps[-1] >= stopped
    # Re-running the same command (with a reachable end) continues from the checkpoint.
    finish = [a.replace("train.steps=100000", f"train.steps={steps[-1] + 3}") for a in args]
    done = subprocess.run(finish, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    train_steps = [r["step"] for r in read_metrics(str(workdir)) if r["split"] == "train"]
    assert train_steps == list(range(1, steps[-1] + 4))


def test_workdir_with_another_model_is_refused(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 2}), workdir)
    before = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(CheckpointMismatchError, match="model.hidden is 32 there and 48 here"):
        train(tiny_config(corpus, **{"train.steps": 4, "model.hidden": 48}), workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_sequence_longer_than_a_shard_is_refused(tmp_path):
    corpus = write_corpus(tmp_path / "c", files=1, lines=20)  # ~20 lines -> shards of ~100 chars
    with pytest.raises(DataError, match="sequence longer than a shard"):
        train(tiny_config(corpus, **{"train.seq_len": 200, "train.batch_size": 1}), str(tmp_path / "run"))
    # No empty checkpoints/ is left; the prepared data stays for the next try.
    assert sorted(os.listdir(tmp_path / "run")) == [".lock", "data", "data_request.json"]


def test_missing_data_path_cli_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
         f"--workdir={tmp_path / 'run'}", f"--config.data.train={tmp_path / 'nope.txt'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "nope.txt" in lines[0]
    assert not (tmp_path / "run").exists()  # the workdir it made held only .lock
    (tmp_path / "mine").mkdir()  # one that was there before stays
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.train", "--config=configs/quickstart.py",
         f"--workdir={tmp_path / 'mine'}", f"--config.data.train={tmp_path / 'nope.txt'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and (tmp_path / "mine").is_dir()


def test_eval_tool_on_text_file_and_split(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 8}), workdir)
    text = tmp_path / "held_out.txt"
    text.write_text("the cat sat on the mat and the dog ran to the big red house.\n" * 20)
    for data, extra in ((str(text), []), (os.path.join(workdir, "data"), ["--split=test"])):
        proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={workdir}",
                               f"--data={data}", *extra], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["step"] == 8 and 0 < result["bpc"] < 8.1 and result["chars"] > 0
        assert result["split"] == ("all" if data == str(text) else "test")
    # A text is scored to the end of each row: steps of 16 and the rows' shorter tails give the
    # targets and nats of one step over each whole row (the carry continues the rows).
    from lmscale.training.evaluate_trained import evaluate_data
    from lmscale.training.restore import load_trained
    lm = load_trained(workdir)
    n = len(lm.tokenizer.encode(text.read_text()))
    in_steps = evaluate_data(lm, str(text), batch_size=3, seq_len=16, max_steps=0)
    whole_rows = evaluate_data(lm, str(text), batch_size=3, seq_len=n // 3 - 1, max_steps=0)
    assert in_steps["tokens"] == whole_rows["tokens"] == 3 * (n // 3 - 1)
    assert (n // 3 - 1) % 16 != 0  # so there is a tail
    assert in_steps["loss"] == pytest.approx(whole_rows["loss"], rel=1e-5)
    short = tmp_path / "short.txt"
    short.write_text("twelve bytes")
    with pytest.raises(DataError, match=rf"^the text of {short} has 12 tokens: too few for one "):
        # it named the temporary dataset's "split 'train'"
        evaluate_data(lm, str(short), seq_len=16)
    # the run's own seq_len (not given): a text shorter than one sequence is read whole
    assert evaluate_data(lm, str(short), batch_size=1)["tokens"] == 11


def test_eval_tool_without_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={tmp_path}",
                           f"--data={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "error:" in proc.stderr and "config.json" in proc.stderr


def test_first_train_record_throughput_leaves_out_the_compile(tmp_path, corpus):
    """The first step compiles the program (seconds on this CPU, against milliseconds a step):
    the first record's chars/s is timed from the end of that step, like the others' (windows
    of 31-32 steps: a 0.4 s pause of a loaded machine halved a window of 8 tiny steps)."""
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 96, "train.log_every": 32, "train.eval_every": 0,
                                 "checkpoint.every": 100}), workdir)
    rates = [r["chars_per_s"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert len(rates) == 3
    assert rates[0] > 0.3 * min(rates[1:]), rates


def test_eval_tool_reads_the_run_as_it_trained_and_checks_its_flags(tmp_path):
    """A bfloat16 run's validation BPC again, exactly (eval read float32 weights as float32:
    7.044961 against a logged 7.045263); the run's CSV column; one-line flag errors."""
    import csv
    rows = [{"id": i, "sentence": "the cat sat on the mat and the dog ran. " * 3} for i in range(60)]
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "sentence"])
        w.writeheader()
        w.writerows(rows)
    workdir = str(tmp_path / "run")
    train(tiny_config(str(data), **{"train.steps": 4, "train.eval_every": 4,
                                    "data.text_column": "sentence",
                                    "precision.compute": "bfloat16"}), workdir)
    logged = [r for r in read_metrics(workdir) if r["split"] == "val"][-1]["bpc"]
    eval_ = lambda *args: subprocess.run([sys.executable, "-m", "lmscale.eval",
                                          f"--workdir={workdir}", *args], cwd=REPO,
                                         capture_output=True, text=True, timeout=120)
    proc = eval_()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bpc"] == logged and result["compute"] == "bfloat16"
    assert result["workdir"] == os.path.abspath(workdir) and result["best"] is False
    proc = eval_(f"--data={data}")  # the run's data.text_column, not 'text'
    assert proc.returncode == 0, proc.stderr
    proc = eval_("--batch_size=-1")
    assert proc.returncode != 0 and "--batch_size" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_of_a_transformer_past_its_max_len_is_one_line(tmp_path, corpus):
    from tests.conftest import TINY_TRANSFORMER
    workdir = str(tmp_path / "t")
    train(tiny_config(corpus, **{**TINY_TRANSFORMER, "train.steps": 2}), workdir)
    max_len = json.load(open(os.path.join(workdir, "config.json")))["model"]["max_len"]
    proc = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={workdir}",
                           f"--seq_len={max_len + 1}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"longer than the transformer model's max_len={max_len}" in proc.stderr


def test_a_resume_whose_first_step_is_logged_leaves_out_the_compile(tmp_path, corpus, capsys):
    """Stopped at 7 and resumed, logging every 8 (or every step): the resumed first step
    was logged with the compile's seconds as its throughput (503 against 85 k chars/s). It
    is logged with null rates and its seconds as first_step_s; the next records are rates.
    The resumed run says it resumed (it did not)."""
    workdir = str(tmp_path / "run")
    settings = {"train.log_every": 8, "train.eval_every": 0, "checkpoint.every": 100}
    train(tiny_config(corpus, **{**settings, "train.steps": 7}), workdir)
    capsys.readouterr()
    train(tiny_config(corpus, **{**settings, "train.steps": 24, "train.progress_bar": True}),
          workdir)
    err = capsys.readouterr().err
    assert f"resuming {workdir} from its checkpoint at step 7 (of 24)" in err, err
    assert "step 8/24: " in err and "first step " in err and "(compiling)" in err, err
    records = {r["step"]: r for r in read_metrics(workdir) if r["split"] == "train"}
    assert sorted(records) == [7, 8, 16, 24]
    assert records[8]["chars_per_s"] is None and records[8]["first_step_s"] > 0
    assert records[16]["chars_per_s"] > 0 and records[24]["chars_per_s"] > 0


def test_a_validation_inside_the_first_window_keeps_its_first_step_s(tmp_path, corpus):
    """Validating every 2 steps, logging every 4: the validation at step 2 restarted the
    window's timing and dropped the compiling first step's seconds with it; the record at
    step 4 had rates and no first_step_s (a checkpoint inside the window did the same)."""
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 8, "train.log_every": 4, "train.eval_every": 2,
                                 "checkpoint.every": 3}), workdir)
    records = {r["step"]: r for r in read_metrics(workdir) if r["split"] == "train"}
    assert records[4]["first_step_s"] > 0 and records[4]["chars_per_s"] > 0, records[4]
    assert "first_step_s" not in records[8] and records[8]["chars_per_s"] > 0, records[8]


def test_a_resume_in_another_precision_keeps_the_count_of_skipped_steps(tmp_path, corpus,
                                                                        capsys):
    """float16 from a 2^32 loss scale skips its first steps; resumed in bfloat16 (a new loss
    scale), the logged ``skipped`` went back to 0, as if none had been skipped. The change is
    said (only history/ recorded it)."""
    workdir = str(tmp_path / "run")
    base = {"train.log_every": 1, "train.eval_every": 0, "checkpoint.every": 4}
    train(tiny_config(corpus, **{**base, "train.steps": 4, "precision.compute": "float16"}), workdir)
    skipped = [r["skipped"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert skipped[-1] > 0, skipped
    capsys.readouterr()
    train(tiny_config(corpus, **{**base, "train.steps": 6, "precision.compute": "bfloat16"}), workdir)
    assert ("note: resuming in bfloat16 (the checkpoint trained in float16): no loss scale"
            in capsys.readouterr().err)
    resumed = [r for r in read_metrics(workdir) if r["split"] == "train" and r["step"] > 4]
    assert [r["skipped"] for r in resumed] == [skipped[-1]] * 2
    assert [r["loss_scale"] for r in resumed] == [1.0, 1.0]


def test_the_ends_extra_validation_comes_after_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    """With eval_every past the end, the run's last validation (the whole split at
    train.eval_steps=0) ran before the final save: a stop signal waited for it, and a
    scheduler's kill after its grace lost every step since the last checkpoint (a WT103-sized
    vocabulary: 16 CPU-minutes, nothing saved). The weights are saved first now."""
    from lmscale.training import loop
    seen = []
    real = loop.evaluate_split

    def spy(*args, **kwargs):  # what the disk holds when the final validation starts
        names = os.listdir(tmp_path / "run" / "checkpoints")
        seen.append(any(n.split(".")[0] == "6" for n in names))  # "6" or its save in progress
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_split", spy)
    loop.train(tiny_config(corpus, **{"train.steps": 6, "train.eval_every": 100,
                                      "checkpoint.every": 4}), str(tmp_path / "run"))
    assert seen == [True]
