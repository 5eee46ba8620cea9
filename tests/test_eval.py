"""``python -m lmscale.eval``'s flags."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_max_steps_below_minus_one_is_one_line_error(tmp_path):
    """--max_steps=-5 was taken as -1 (the run's train.eval_steps); only 0 and -1 have a meaning."""
    p = subprocess.run([sys.executable, "-m", "lmscale.eval", f"--workdir={tmp_path}",
                        "--max_steps=-5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: flag --max_steps=-5: expected a count of batches, 0 (the whole split) or -1 (the "
        "run's train.eval_steps)"), p.stderr[-2000:]


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_closed_standard_output_is_refused_before_the_work(tmp_path):
    """`eval ... >&-` scored the data, printed its only product into nothing (Python's print
    with no stdout) and exited 0: the result lost without a word."""
    p = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-m",
                        "lmscale.eval", f"--workdir={tmp_path / 'not-read'}"], cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: standard output is closed (>&-) and the result (one JSON line) goes there: "
        "redirect it to a file (> result.json)"), p.stderr[-2000:]


def test_step_below_minus_one_is_one_line_error(tmp_path):
    """--step=-7 was taken as -1 (the latest checkpoint)."""
    p = run_eval(f"--workdir={tmp_path}", "--step=-7")
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: flag --step=-7: expected a checkpoint step, or -1 (the latest)"), p.stderr[-2000:]


def test_split_and_text_options_that_text_files_ignore_are_refused(tmp_path):
    """A .txt --data was read whole ("split": "all"), its --split and --text_column ignored;
    refused before the workdir (here empty) is read."""
    text = tmp_path / "small.txt"
    text.write_text("some text\n")
    p = run_eval(f"--workdir={tmp_path}", f"--data={text}", "--split=test")
    assert p.returncode == 1 and p.stderr.strip() == (
        f"error: --split is for a prepared dataset; --data={text} is text files, evaluated "
        f"whole: drop --split"), p.stderr[-2000:]
    p = run_eval(f"--workdir={tmp_path}", f"--data={text}", "--text_column=foo")
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: --text_column=foo names a CSV/TSV column, and the inputs are txt files"
    ), p.stderr[-2000:]
    table = tmp_path / "small.csv"
    table.write_text("foo\nsome text\n")
    p = run_eval(f"--workdir={tmp_path}", f"--data={table}", "--text_column=foo")
    # A CSV's column applies: the error is the (empty) workdir's.
    assert p.returncode == 1 and "--text_column" not in p.stderr, p.stderr[-2000:]
    p = run_eval(f"--workdir={tmp_path}", "--text_field=body")  # the run's prepared dataset
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: --text_field is for text files given as --data; the run's own dataset is a "
        "prepared dataset, its text already tokenized: drop --text_field"), p.stderr[-2000:]


def test_text_too_short_to_score_is_said_in_evals_words(tmp_path):
    """A 1-byte file was "corpus too small: 1 tokens for 1 shards (1 cycle(s) of split
    (1, 0, 0))": preparation's words, of settings eval's user never gave."""
    import pytest
    from lmscale.data.errors import DataError
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    (tmp_path / "one.txt").write_text("x")
    with pytest.raises(DataError, match=r"one.txt holds 1 token\(s\) for this model's tokenizer: "
                                        r"scoring needs at least 2"):
        evaluate_data(random_lm(hidden=16), str(tmp_path / "one.txt"))


def test_a_word_models_text_of_only_line_ends_to_score_is_refused_not_bpc_of_no_byte(tmp_path):
    """A one-word line ("the\\n\\n"): its targets are <eos>, no byte of the text; eval printed
    a finite "bpc" (nats over max(bytes, 1): bits per token) beside "chars": 0."""
    import dataclasses

    import pytest
    from lmscale.data.errors import DataError
    from lmscale.data.words import SPECIALS, WordTokenizer
    from lmscale.models import model_params
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    tok = WordTokenizer([*SPECIALS, "the", "film"], unk_bytes=3)
    lm = random_lm(hidden=16)
    graphdef, params = model_params(lm.config.model, tok.vocab_size, seed=0)
    lm = dataclasses.replace(lm, tokenizer=tok, graphdef=graphdef, params=params)
    (tmp_path / "eos.txt").write_text("the\n\n")
    with pytest.raises(DataError, match=r"eos.txt: its 2 scored token\(s\) are all line ends"):
        evaluate_data(lm, str(tmp_path / "eos.txt"))
    (tmp_path / "words.txt").write_text("the film\n")
    assert evaluate_data(lm, str(tmp_path / "words.txt"))["chars"] == 5  # "film " and <eos>


def test_a_dataset_prepared_with_another_tokenizer_is_refused_naming_both(tmp_path):
    """Raw bytes (openai) where the model reads bytes + 1: every id would be off by one."""
    import pytest
    from lmscale.data.errors import DataError
    from lmscale.data.prepare import prepare_dataset
    from lmscale.data.tokenizer import tokenizer_from_dict
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 40)
    path = prepare_dataset([str(tmp_path / "text.txt")], str(tmp_path / "ds"), split=(1, 0, 0),
                           tokenizer=tokenizer_from_dict({"kind": "byte", "offset": 0,
                                                          "pad_id": None}), progress=False)
    lm = random_lm(hidden=16)
    assert lm.tokenizer.to_dict()["offset"] == 1
    with pytest.raises(DataError, match=r"ds was prepared with the tokenizer \{'kind': 'byte', "
                                        r"'offset': 0.*\}; the model reads \{'kind': 'byte', "
                                        r"'offset': 1.*pass the text files themselves"):
        evaluate_data(lm, path, split="train")
    assert evaluate_data(lm, str(tmp_path / "text.txt"))["tokens"] > 0  # its text is read


def test_split_of_a_dataset_with_a_damaged_metadata_json_says_the_dataset_is_damaged(tmp_path):
    """Read as text files (its metadata.json unreadable), it was told to drop --split."""
    ds = tmp_path / "ds"
    (ds / "val").mkdir(parents=True)
    (ds / "val" / "shard_00000.bin").write_bytes(b"\0" * 8)
    (ds / "metadata.json").write_text("")
    p = run_eval(f"--workdir={tmp_path}", f"--data={ds}", "--split=val")
    assert p.returncode == 1 and "looks like a prepared lmscale dataset" in p.stderr, p.stderr
    assert "drop --split" not in p.stderr


def test_text_shorter_than_one_sequence_is_scored_whole_as_score_does(tmp_path):
    """15 tokens under seq_len 32 were refused ("too few for one sequence of seq_len 32"),
    with no way out named; read whole, they score what LM.score scores."""
    import numpy as np

    from lmscale.api import LM
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    (tmp_path / "short.txt").write_text("short text here")
    for kind in ("mlstm", "transformer"):
        lm = random_lm(kind=kind, hidden=16)
        got = evaluate_data(lm, str(tmp_path / "short.txt"), batch_size=1)
        assert got["tokens"] == 14
        np.testing.assert_allclose(got["bpc"], LM(lm).score(["short text here"])[0], rtol=1e-5)


def test_a_full_temporary_folder_says_tmpdir_and_how_to_prepare_instead(small_disk, tmp_path,
                                                                       monkeypatch):
    """Text files are tokenized into TMPDIR: a full one was "the disk is full" of a folder
    the user never named, with no way around it."""
    import tempfile

    import pytest
    from lmscale.data.errors import DataError
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    text = tmp_path / "big.txt"
    text.write_text("a line of text to tokenize.\n" * 40_000)  # 2.2 MB of uint16 tokens
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    with pytest.raises(DataError, match=r"the disk is full .*tokenized into a temporary folder "
                                        r"\(.*small_disk, TMPDIR\): set TMPDIR .*lmscale.prepare"):
        evaluate_data(random_lm(hidden=16), str(text))
    assert os.listdir(small_disk) == []


def test_a_short_text_is_read_in_rows_of_one_of_the_runs_sequences(tmp_path):
    """With the run's eval_batch_size (no batch_size given), a recurrent model read a text of
    fewer than eval_batch_size x (seq_len + 1) tokens in that many rows of 2 tokens: half of
    its bytes scored, each from one byte of context (a 34-byte sentence: 3.88 bpc over 17
    bytes where LM.score said 2.07). Now in rows of one of the run's sequences at least."""
    import numpy as np

    from lmscale.api import LM
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    lm = random_lm(kind="mlstm", hidden=16)
    lm.config.train.seq_len = 16
    assert lm.config.train.eval_batch_size > 2
    (tmp_path / "short.txt").write_text("short text here")  # 15 tokens: in one row
    got = evaluate_data(lm, str(tmp_path / "short.txt"))
    assert got["tokens"] == 14
    np.testing.assert_allclose(got["bpc"], LM(lm).score(["short text here"])[0], rtol=1e-5)
    text = "a" * 40  # 40 tokens: 2 rows of 20, each row's first token unscored
    (tmp_path / "two.txt").write_text(text)
    for seq_len in (None, 8):  # the rows do not change with --seq_len
        assert evaluate_data(lm, str(tmp_path / "two.txt"), seq_len=seq_len)["tokens"] == 38


def test_the_temporary_folder_of_a_killed_evaluation_is_removed_by_the_next(tmp_path):
    """Text files are tokenized into a folder in TMPDIR, 2 bytes a byte: an evaluation killed
    (SIGKILL, or SIGTERM: eval keeps its default action) left it there, and nothing ever
    removed it (a 33 MB text: 64 MB in /tmp per `timeout`ed lmscale.eval)."""
    import signal
    import tempfile
    import time

    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    text, tmp = tmp_path / "big.txt", tmp_path / "tmp"
    text.write_text("a line of text to tokenize.\n" * 40_000)
    tmp.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; "
         "from lmscale.training.evaluate_trained import evaluate_data; "
         "from tests.transfer.conftest import random_lm; "
         "evaluate_data(random_lm(hidden=16), sys.argv[1])", str(text)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not os.listdir(tmp) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert os.listdir(tmp), "the evaluation ended before its temporary folder was made"
    (tmp_path / "short.txt").write_text("short text here")
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        evaluate_data(random_lm(hidden=16), str(tmp_path / "short.txt"), batch_size=1)
    finally:
        tempfile.tempdir = saved
    assert os.listdir(tmp) == []


def test_text_files_with_a_comma_in_their_path_are_scored(tmp_path):
    """eval --data split the paths at every comma ("no such file or directory: .../run"),
    where training and prepare keep an existing path's commas."""
    from lmscale.training.evaluate_trained import evaluate_data
    from tests.transfer.conftest import random_lm
    (tmp_path / "run, v2").mkdir()
    (tmp_path / "run, v2" / "a.txt").write_text("some text to score here")
    (tmp_path / "b,c.txt").write_text("more text to score")
    lm = random_lm(kind="mlstm", hidden=16)
    got = evaluate_data(lm, f"{tmp_path}/run, v2,{tmp_path}/b,c.txt", batch_size=1)
    assert got["tokens"] == 40  # both texts: 23 and 18 bytes, less the first token


def test_a_loss_that_is_not_finite_is_an_error_not_nan_in_the_json(tmp_path):
    """A float16 evaluation that overflowed printed ``"loss": NaN`` (not JSON: JSON.parse, Go
    and Rust refuse it) and exited 0; classify refuses such probabilities, naming float16."""
    from tests.conftest import tiny_train_command, write_corpus
    corpus = write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    train = subprocess.run(tiny_train_command(run, corpus, **{
        "train.steps": 4, "train.log_every": 2, "checkpoint.every": 4, "optim.lr": 1e30,
        "optim.clip": 0, "optim.warmup_steps": 0, "train.divergence_factor": 0}),
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    p = run_eval(f"--workdir={run}", "--compute=float16", "--max_steps=1")
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr[-2000:])
    assert p.stderr.strip().endswith(
        "is not finite (NaN or inf): the model's forward overflowed (in float16 compute its "
        "range is small: --compute=bfloat16 or float32 reads the same weights)"), p.stderr[-2000:]
