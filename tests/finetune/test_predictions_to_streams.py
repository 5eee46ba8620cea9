"""Predictions to standard output or a device: ``-`` writes the CSV to stdout, and a device or
pipe (/dev/stdout, /dev/null, a shell's ``>(gzip)``) is written in place. Renaming a
temporary file over /dev/stdout replaced the link itself (as root) with a file of
predictions, and ``-`` made a file named "-"; a link to a file became a plain file."""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from lmscale.atomic import atomic_write, is_special
from lmscale.finetuning.predict import write_predictions


def test_special_paths(tmp_path):
    assert is_special("-") and is_special("/dev/stdout") and is_special("/dev/null")
    assert is_special("/proc/self/fd/1")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert is_special(str(fifo))
    assert not is_special(str(tmp_path / "p.csv"))  # not there yet: a file to be
    assert not is_special("/dev/shm/p.csv")  # a tmpfs of files
    (tmp_path / "p.csv").write_text("old")
    assert not is_special(str(tmp_path / "p.csv")) and not is_special(str(tmp_path))


def test_dash_writes_the_csv_to_stdout_and_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_predictions("-", ["a, b", "c\nd"], np.array([[0.25, 0.75], [0.5, 0.5]]),
                      np.array([1, 0]), ["neg", "pos"], multilabel=False)
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert rows == [["text", "p_neg", "p_pos", "predicted"],
                    ["a, b", "0.250000", "0.750000", "pos"],
                    ["c\nd", "0.500000", "0.500000", "neg"]]
    assert os.listdir(tmp_path) == []


def test_devices_are_written_in_place_and_kept(monkeypatch):
    """/dev/null and /dev/stdout written in place, never replaced. os.replace is guarded: a
    regression fails here instead of renaming a file over /dev/null as root (a mutation run
    of the unguarded test left the machine's /dev/null a regular file)."""
    real_replace = os.replace

    def guarded(src, dst, *args, **kwargs):
        assert not os.path.realpath(dst).startswith(("/dev/", "/proc/")), f"renamed over {dst}"
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", guarded)
    before = os.lstat("/dev/null"), os.path.islink("/dev/stdout")
    write_predictions("/dev/null", ["a"], np.array([[0.5, 0.5]]), np.array([0]), ["0", "1"], False)
    with atomic_write("/dev/stdout") as f:  # a link into /proc: never renamed over
        f.write("")
    assert (os.lstat("/dev/null").st_rdev, os.path.islink("/dev/stdout")) == (before[0].st_rdev,
                                                                               before[1])
    assert not [n for n in os.listdir("/dev") if ".tmp-" in n]


def test_a_pipe_is_written_in_place(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_predictions(str(fifo), ["a"], np.array([[0.5, 0.5]]), np.array([1]), ["0", "1"],
                          False)
        assert os.read(reader, 4096).decode().splitlines()[1] == "a,0.500000,0.500000,1"
    finally:
        os.close(reader)
    assert fifo.is_fifo()


def test_a_link_keeps_pointing_at_the_rewritten_file(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_predictions(str(link), ["a"], np.array([[0.5, 0.5]]), np.array([0]), ["0", "1"], False)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("text,p_0,p_1,predicted")


def _transfer_classifier(sst_run: str, tmp_path) -> tuple[str, str]:
    """A 12-row labeled CSV in tmp_path and a transfer classifier fit on it: (csv, output)."""
    from lmscale.transfer.run import run_transfer
    rows = ["sentence,label"] + [f"{'good' if i % 2 else 'bad'} movie {i},{i % 2}"
                                 for i in range(12)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    csv_path, out = str(tmp_path / "t.csv"), str(tmp_path / "tr")
    run_transfer(sst_run, csv_path, csv_path, output=out, baseline="none", Cs=[1.0], examples=1,
                 features_dir="")
    return csv_path, out


def test_classify_to_standard_output(sst_run, tmp_path):
    """``classify --output=- --labels=...``: stdout holds the CSV alone (what is said, the
    metrics table included, goes to stderr), and no file is written."""
    import subprocess
    import sys

    csv_path, out = _transfer_classifier(sst_run, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lmscale.classify", f"--workdir={out}",
                           f"--input={csv_path}", "--text_column=sentence", "--labels=label",
                           "--output=-"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = list(csv.DictReader(io.StringIO(proc.stdout, newline="")))
    rows = open(csv_path).read().splitlines()
    assert [r["text"] for r in got] == [r.split(",")[0] for r in rows[1:]]
    assert [r["gold"] for r in got] == [str(i % 2) for i in range(12)]
    assert "12 texts classified; predictions in standard output" in proc.stderr
    assert "accuracy" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "tr"]


def test_dev_stdout_redirected_to_a_file_keeps_its_earlier_lines(tmp_path):
    """``cmd --output=/dev/stdout >> log``: /dev/stdout is then the log, a regular file;
    opened with "w" it was truncated (the log's earlier lines and the run's own printed lines
    lost). Written through sys.stdout, nothing before it is lost and later prints follow."""
    import subprocess
    import sys

    from tests.conftest import REPO
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    code = ("print('said before', flush=True)\n"
            "from lmscale.atomic import write_json\n"
            "write_json('/dev/stdout', {'a': 1})\n"
            "print('\\nsaid after')\n")
    with open(log, "a") as out:
        subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=out, check=True,
                       timeout=120)
    assert log.read_text() == 'earlier line\nsaid before\n{"a": 1}\nsaid after\n'


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path):
    """``classify --output=- | head``: once head exits, the rest of a CSV larger than a pipe's
    buffer raised BrokenPipeError through the CLI's error handling (a traceback, exit 1)."""
    import subprocess
    import sys

    from tests.conftest import REPO
    code = ("import numpy as np\nfrom lmscale.cli import run_cli\n"
            "from lmscale.finetuning.predict import write_predictions\nn = 100000\n"
            "run_cli(lambda: write_predictions('-', [f't{i}' for i in range(n)], "
            "np.full((n, 2), 0.5), np.zeros(n, int), ['neg', 'pos'], False))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"text,p_neg,p_pos,predicted\r\n"
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err[-2000:]


def test_classify_to_a_closed_standard_output_is_one_line(sst_run, tmp_path):
    """``classify --output=- >&-``: every text was classified, then an AttributeError traceback
    (Python's sys.stdout is None when fd 1 is closed)."""
    import subprocess
    import sys

    csv_path, out = _transfer_classifier(sst_run, tmp_path)
    # closed by the shell (a preexec_fn runs Python in the forked child of a JAX process)
    proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "bash", sys.executable, "-m",
                           "lmscale.classify", f"--workdir={out}", f"--input={csv_path}",
                           "--text_column=sentence", "--output=-"],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=600)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "error: standard output is closed (>&-) and --output=- writes the predictions there: "
        "pass --output=FILE"), proc.stderr[-2000:]
