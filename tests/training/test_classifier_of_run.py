"""A classifier saved from a run's weights (lmscale.transfer) when the run changes under it:
retrained in place, or its step rotated away by a run still training."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lmscale import load_classifier
from lmscale.training.loop import train
from lmscale.training.restore import load_trained
from lmscale.transfer.run import run_transfer
from tests.conftest import REPO, tiny_config
from tests.training.conftest import BASE, copy_run
from tests.training.conftest import steps_on_disk


def transfer_kept(workdir: str, tmp_path) -> tuple[object, str]:
    """(a 24-row labeled CSV, the folder of a transfer of ``workdir`` fit on it)."""
    labeled = tmp_path / "labeled.csv"
    labeled.write_text("sentence,label\n" + "".join(
        f"{'a fine and warm film' if i % 2 else 'a dull and cold film'} {i},{i % 2}\n"
        for i in range(24)))
    kept = str(tmp_path / "kept")
    run_transfer(workdir, str(labeled), str(labeled), output=kept, baseline="none", Cs=[1.0],
                 examples=0)
    return labeled, kept


def test_a_retrained_workdir_neither_reuses_features_nor_a_classifier_of_its_old_weights(
        base_run, tmp_path):
    """Retrained in place (resume=false, same steps): transfer/ and features/ go to the archive
    with the run; the features cache, keyed by the weights' content, misses; a classifier
    saved elsewhere, fit on the old weights, is refused instead of reading the new ones."""
    corpus, workdir = copy_run(base_run, tmp_path)
    labeled, kept = transfer_kept(workdir, tmp_path)
    run_transfer(workdir, str(labeled), str(labeled), baseline="none", Cs=[1.0], examples=0)
    old_features = sorted(os.listdir(os.path.join(workdir, "features")))
    config = tiny_config(corpus, **BASE)
    config.resume, config.seed = False, 1
    train(config, workdir)
    assert steps_on_disk(workdir) == [2, 4] and load_trained(workdir).step == 4
    (archived,) = os.listdir(os.path.join(workdir, "archive"))
    old = os.path.join(workdir, "archive", archived)
    assert sorted(os.listdir(os.path.join(old, "features"))) == old_features
    assert os.path.exists(os.path.join(old, "transfer", "classifier.json"))
    assert not os.path.exists(os.path.join(workdir, "transfer"))
    with pytest.raises(ValueError, match="fit on the features of other weights .* re-run lmscale.transfer"):
        load_classifier(kept)
    proc = subprocess.run([sys.executable, "-m", "lmscale.classify", f"--workdir={kept}",
                           f"--input={labeled}", "--text_column=sentence",
                           f"--output={tmp_path / 'p.csv'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "re-run lmscale.transfer" in proc.stderr
    run_transfer(workdir, str(labeled), str(labeled), output=kept, baseline="none", Cs=[1.0],
                 examples=0)
    assert len(os.listdir(os.path.join(workdir, "features"))) == 1  # featurized anew
    load_classifier(kept).predict(["a fine film"])


def test_a_classifier_of_a_step_a_running_run_rotated_away_says_re_run_transfer(base_run, tmp_path):
    """A transfer of a run still training, classified later: its step was rotated away
    (checkpoint.keep); was "RUN holds no checkpoint of step N; its steps are [...]"."""
    corpus, workdir = copy_run(base_run, tmp_path)
    labeled, kept = transfer_kept(workdir, tmp_path)
    latest = steps_on_disk(workdir)[-1]
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(latest)))  # as a rotation removes it
    with pytest.raises(FileNotFoundError, match=f"fit on step {latest} of .* no longer holds it "
                                                f".* re-run lmscale.transfer"):
        load_classifier(kept)
