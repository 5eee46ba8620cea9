"""``python -m lmscale.transfer``: flags refused in one line before the LM is read."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.transfer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def labeled(tmp_path) -> str:
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\ngood,1\nbad,0\n")
    return str(path)


def test_batch_size_below_one_is_refused(tmp_path):
    """--batch_size=0 (or -3) featurized one row at a time, without a word."""
    train = labeled(tmp_path)
    for n in ("0", "-3"):
        p = run_tool(f"--workdir={tmp_path}", f"--train={train}", f"--val={train}",
                     f"--batch_size={n}")
        assert p.returncode == 1 and p.stderr.strip() == (
            f"error: flag --batch_size={n}: {n} is not a positive integer"
        ), p.stderr[-2000:]


def test_test_file_that_is_the_training_file_is_refused_and_a_val_file_noted(tmp_path):
    """--test=--train's file gave a "test" accuracy of the texts the classifier was fit on;
    --val=--train's chose C on them, unsaid."""
    train = labeled(tmp_path)
    os.symlink(train, tmp_path / "link.csv")
    for test in (train, str(tmp_path / "link.csv")):
        p = run_tool(f"--workdir={tmp_path}", f"--train={train}", f"--val={test}",
                     f"--test={test}")
        said = [line for line in p.stderr.strip().splitlines()
                if not line.startswith("hint: ")]  # a CPU with AMX: the bfloat16 hint first
        assert p.returncode == 1 and said == [
            f"note: --val={test} is the --train file: C is chosen (the largest wins), and val "
            f"scores reported, on the texts the classifier is fit on; give held-out texts for a "
            f"meaningful choice",
            f"error: --test={test} is the --train file: its scores would be measured on the "
            f"texts the classifier was fit on; give held-out texts or leave --test out"
        ], p.stderr[-2000:]


def test_a_link_out_of_the_output_or_feature_folder_is_refused_before_the_lm_is_read(tmp_path):
    """A run folder from elsewhere whose transfer/results.json, or features/ file, links to a
    user's file: refused naming it, not written through (nor the cache moved elsewhere)."""
    import pytest

    from lmscale.cli import OutputError
    from lmscale.transfer.run import run_transfer
    train = labeled(tmp_path)
    outside = tmp_path / "bashrc"
    outside.write_text("kept\n")
    for folder, name in (("transfer", "results.json"), ("features", "train.npz")):
        workdir = tmp_path / f"run_{folder}"
        (workdir / folder).mkdir(parents=True)
        os.symlink(outside, workdir / folder / name)
        with pytest.raises(OutputError, match=rf"{folder}/{name} is a symbolic link to "
                                              rf"{outside}, outside "):
            run_transfer(str(workdir), train, train)
    assert outside.read_text() == "kept\n"


def test_a_folder_named_like_a_labeled_file_is_a_one_line_error(tmp_path):
    """A folder named ``x.csv`` (Spark's ``df.write.csv("x.csv")``) or ``x.jsonl`` was an
    IsADirectoryError traceback (classify and finetune read the files the same way)."""
    train = labeled(tmp_path)
    for name in ("spark.csv", "spark.jsonl"):
        folder = tmp_path / name
        folder.mkdir()
        p = run_tool(f"--workdir={tmp_path}", f"--train={folder}", f"--val={train}")
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1] == (  # after a CPU's --compute hint, if any
            f"error: {folder} is a folder, not a file: give the file in it to read")
