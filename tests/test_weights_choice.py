"""Which of a run's weights the tools read: --step and --best in eval, generate and transfer
(generate and transfer read only the latest before: the weights kept as validated best, the
model awd-lstm-lm reports, could be scored but not sampled or transferred), what the outputs
record, and the way on past an unreadable newest checkpoint."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, tiny_config, write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 steps that improve, then 8 at a learning rate that makes it worse: best/ holds an
    earlier step than the latest checkpoint (16)."""
    from lmscale.training.loop import train
    root = tmp_path_factory.mktemp("weights")
    corpus = write_corpus(root / "corpus")
    workdir = str(root / "run")
    settings = {"train.eval_every": 4, "checkpoint.every": 4, "checkpoint.keep_best": True,
                "checkpoint.keep": 5}
    train(tiny_config(corpus, **settings, **{"train.steps": 8}), workdir)
    train(tiny_config(corpus, **settings, **{"train.steps": 16, "optim.lr": 5.0, "train.divergence_factor": 0.0,
                                              "optim.warmup_steps": 0}), workdir)
    best = json.load(open(os.path.join(workdir, "best.json")))
    assert best["step"] < 16, best  # the premise: the late steps validated worse
    texts = root / "labeled.csv"
    with open(texts, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        for i in range(40):
            w.writerow([f"the {'red' if i % 2 else 'big'} cat sat on mat {i}.", i % 2])
    return workdir, best["step"], str(texts)


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_generate_samples_from_the_best_weights_or_a_given_step(run, tmp_path):
    workdir, best_step, _ = run
    for flag, step, best in (("--best", best_step, True), ("--step=4", 4, False)):
        out = tmp_path / flag.strip("-").replace("=", "")
        proc = _tool("lmscale.generate", f"--workdir={workdir}", f"--output={out}", flag,
                     "--length=8", "--samples=1")
        assert proc.returncode == 0, proc.stderr[-2000:]
        lm = json.loads((out / "samples.json").read_text())["lm"]
        assert lm["step"] == step and lm.get("best", False) is best, lm


def test_transfer_from_the_best_weights_and_its_classifier_reads_them_again(run, tmp_path):
    workdir, best_step, texts = run
    out = tmp_path / "transfer"
    proc = _tool("lmscale.transfer", f"--workdir={workdir}", f"--train={texts}",
                 f"--val={texts}", f"--output={out}", "--best", "--baseline=none",
                 "--C=0.125,1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["lm"]["step"] == best_step and results["lm"]["best"] is True
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.training.restore import load_trained, weights_fingerprint
    clf = load_classifier(str(out))
    assert weights_fingerprint(clf.lm) == weights_fingerprint(load_trained(workdir, best=True))
    assert weights_fingerprint(clf.lm) != weights_fingerprint(load_trained(workdir))
    probs = clf.predict_proba(["the red cat sat on mat 1."])
    assert probs.shape == (1, 2)


def test_an_unreadable_newest_checkpoint_names_the_step_before_it(run, tmp_path):
    import shutil
    workdir, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    for path in glob.glob(str(copy / "checkpoints" / "16" / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 100:
            os.truncate(path, 100)
    proc = _tool("lmscale.eval", f"--workdir={copy}")
    assert proc.returncode == 1
    assert "is unreadable" in proc.stderr and "--step=12 reads the one before it" in proc.stderr, \
        proc.stderr[-2000:]
    proc = _tool("lmscale.eval", f"--workdir={copy}", "--step=12")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_fine_tuning_starts_from_the_best_weights_given_as_run_best(run, tmp_path):
    """--config.init_from=RUN/best: a fine-tune could start only from a run's latest
    checkpoint (and RUN/best was "not an lmscale LM workdir")."""
    from lmscale.finetuning.loop import finetune
    from lmscale.training.restore import load_trained
    from tests.finetune.conftest import ft_config
    workdir, best_step, texts = run
    ft = str(tmp_path / "ft")
    finetune(ft_config(os.path.join(workdir, "best"), texts, texts, **{
        "train.steps": 2, "train.eval_every": 2, "checkpoint.every": 2,
        "train.batch_size": 8}), ft)
    derived = json.load(open(os.path.join(ft, "config.json")))["derived"]
    assert derived["lm_step"] == best_step
    assert load_trained(os.path.join(workdir, "best")).best


def test_run_best_given_as_the_workdir_is_the_runs_best_weights_with_the_runs_outputs(run, tmp_path):
    """--workdir=RUN/best read the best weights but wrote RUN/best/generate and
    RUN/best/transfer (inside the orbax folder; that classifier could not be loaded), and
    eval said "best": false."""
    workdir, best_step, texts = run
    best_dir = os.path.join(workdir, "best")
    proc = _tool("lmscale.eval", f"--workdir={best_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["best"] is True and said["step"] == best_step and said["workdir"] == workdir
    proc = _tool("lmscale.generate", f"--workdir={best_dir}", "--length=4", "--samples=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lm = json.loads(open(os.path.join(workdir, "generate", "samples.json")).read())["lm"]
    assert lm["best"] is True and lm["workdir"] == workdir
    assert not os.path.exists(os.path.join(best_dir, "generate"))
    from lmscale.finetuning.classifier import load_classifier
    from lmscale.transfer.run import run_transfer
    results = run_transfer(best_dir, texts, texts, output=str(tmp_path / "t"), baseline="none",
                           Cs=[1.0])
    assert results["lm"]["best"] is True and results["lm"]["workdir"] == workdir
    assert load_classifier(str(tmp_path / "t")).lm.best


def test_a_start_from_that_is_no_run_is_refused_before_any_data_is_prepared(tmp_path):
    from lmscale.config import ConfigError
    from lmscale.training.loop import train
    from tests.conftest import tiny_config, write_corpus
    corpus = write_corpus(tmp_path / "corpus", files=1)
    work = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.start_from='.*nope/best' is no lmscale LM run"):
        train(tiny_config(corpus, **{"train.start_from": str(tmp_path / "nope" / "best")}),
              str(work))
    assert not (work / "data").exists() and not (work / "checkpoints").exists()


def test_the_packages_load_lm_takes_best(run):
    """README: `load_lm(workdir, best=True)`; lmscale.load_lm (the package's) had no best."""
    import lmscale
    workdir, best_step, _ = run
    assert lmscale.load_lm(workdir, best=True).trained.step == best_step
    assert lmscale.load_lm(os.path.join(workdir, "best")).trained.best


def test_eval_of_run_best_splits_the_host_as_the_run_did(run, tmp_path):
    """--workdir=RUN/best evaluated on one device where the run trained on two (it looked
    for RUN/best/config.json): a loss ~1e-7 off the logged one. In a fresh process, as the
    tools call it before JAX starts, on a copy of the run's record saying 2 devices."""
    workdir, _, _ = run
    record = json.load(open(os.path.join(workdir, "config.json")))
    record["derived"]["devices"] = 2
    copy = tmp_path / "two"
    (copy / "best").mkdir(parents=True)
    (copy / "config.json").write_text(json.dumps(record))
    code = ("import sys; from lmscale.training.host_devices import split_host_like_run; "
            "print(split_host_like_run(sys.argv[1]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    got = [subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120).stdout.strip()
           for path in (copy, copy / "best")]
    assert got == ["2", "2"], got


def test_generate_imports_beside_convert_whose_step_flag_it_shares():
    """lmscale.convert defines --step (the same meaning): importing lmscale.generate after it
    in one process (the test suite's workers) raised DuplicateFlagError."""
    code = "import lmscale.convert, lmscale.generate; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("layout", ["pt", "openai"])
def test_a_start_from_at_weights_still_to_import_names_the_convert_command(tmp_path, layout):
    """train.start_from at a sentiment-discovery .pt or OpenAI's folder of .npy files (what a
    user holding those weights tries first): the convert command to run, as eval's --workdir
    says, not only "no config.json there"."""
    from lmscale.config import ConfigError
    from lmscale.training.loop import train
    corpus = write_corpus(tmp_path / "corpus", files=1)
    if layout == "pt":
        src = tmp_path / "mlstm.pt"
        src.write_bytes(b"PK")  # never read: the name and kind say what it is
        want = "lmscale.convert --from=sentiment-discovery"
    else:
        src = tmp_path / "model"
        src.mkdir()
        (src / "0.npy").write_bytes(b"")
        want = "lmscale.convert --from=openai"
    work = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"train.start_from=.*{want} --src=.* --to=WORKDIR, "
                                          f"then pass (--)?config.train.start_from=WORKDIR"):
        train(tiny_config(corpus, **{"train.start_from": str(src)}), str(work))
    assert not (work / "data").exists() and not (work / "checkpoints").exists()


def test_init_from_in_an_lm_run_names_train_start_from(tmp_path):
    """An LM run given fine-tuning's init_from (a user continuing an imported model): the
    refusal names train.start_from, the way to start a new run from those weights."""
    from lmscale.config import ConfigError
    from lmscale.training.loop import train
    corpus = write_corpus(tmp_path / "corpus", files=1)
    with pytest.raises(ConfigError, match=r"init_from=.* (--)?config\.train\.start_from=.*imported"):
        config = tiny_config(corpus)
        config.init_from = str(tmp_path / "imported")
        train(config, str(tmp_path / "run"))


def test_the_best_weights_and_a_step_together_are_refused_before_anything_is_read(tmp_path):
    """load_lm(best=True, step=N) (or RUN/best with a step) names two weights: one error,
    before the run's records or weights are read."""
    from lmscale.config import ConfigError
    from lmscale.training.restore import load_trained
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{")  # RUN/best is told by it; not read
    for workdir, best in ((tmp_path / "run", True), (tmp_path / "run" / "best", False)):
        with pytest.raises(ConfigError, match=r"the best weights and step 2 name two different "
                                              r"weights of .*run: give one"):
            load_trained(str(workdir), step=2, best=best)


def test_best_weights_of_a_run_stopped_before_its_first_checkpoint_are_read(tmp_path):
    """A run killed (or diverged) after a validation kept its best weights, before its first
    checkpoint: --best said "holds no checkpoint" and the validated weights could not be read;
    without --best the error now points to them."""
    import shutil

    import numpy as np
    import lmscale
    from lmscale.training.loop import train
    corpus = write_corpus(tmp_path / "corpus")
    workdir = str(tmp_path / "run")
    train(tiny_config(corpus, **{"train.steps": 4, "train.eval_every": 2,
                                 "checkpoint.every": 4, "checkpoint.keep_best": True}), workdir)
    best_step = json.load(open(os.path.join(workdir, "best.json")))["step"]
    want = lmscale.load_lm(workdir, best=True).score(["the cat sat on the mat."])
    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # as if killed before step 4's save
    lm = lmscale.load_lm(workdir, best=True)
    assert lm.trained.step == best_step and lm.trained.best
    np.testing.assert_array_equal(lm.score(["the cat sat on the mat."]), want)
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint; the weights it validated "
                                                r"best are kept: read them with best"):
        lmscale.load_lm(workdir)
    # best.json naming weights best/ does not hold: each error sent the user to the other
    shutil.rmtree(os.path.join(workdir, "best", str(best_step)))
    for best in (False, True):
        with pytest.raises(FileNotFoundError, match=r"run holds no checkpoint \("):
            lmscale.load_lm(workdir, best=best)
