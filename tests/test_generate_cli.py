"""The generate tool end to end on a (tiny) trained LM: samples, a held neuron, its heatmap."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import matplotlib.image
import pytest

from tests.conftest import REPO


def test_generate_greedy_in_bfloat16_with_a_held_neuron(sst_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={sst_run}", "--prompt=The movie",
         "--length=24", "--temperature=0", "--samples=2", "--neuron=3", "--neuron_value=1.5",
         "--compute=bfloat16", f"--output={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "samples.json").read_text())
    assert record["compute"] == "bfloat16" and record["neuron"] == 3
    from lmscale.training.restore import load_trained, weights_fingerprint
    lm = load_trained(sst_run)  # which weights wrote the samples (it named none)
    assert record["lm"] == {"workdir": str(sst_run), "step": lm.step,
                            "weights": weights_fingerprint(lm),
                            "model": {"kind": "mlstm", **{k: lm.config.model[k] for k in
                                                          record["lm"]["model"] if k != "kind"}}}
    assert "d_model" not in record["lm"]["model"]  # not every kind's defaults
    first, second = record["samples"]
    assert first == second  # greedy: both samples alike
    assert first.startswith("The movie") and len(first.encode()) >= len("The movie") + 24
    assert first in proc.stdout
    image = matplotlib.image.imread(tmp_path / "heatmap.png")  # the held unit's trace
    assert image.ndim == 3 and image.shape[0] > 50
    assert "<span title=" in (tmp_path / "heatmap.html").read_text()


def test_the_default_heatmap_reads_the_neuron_in_the_state_the_transfer_used(sst_run, tmp_path):
    """A transfer run with --state=hidden found unit 3: generate's heatmap shows unit 3 of the
    hidden state (it read the cell state, the model's default)."""
    import re
    import shutil

    import numpy as np

    from lmscale.training.restore import load_trained
    from lmscale.transfer.featurize import unit_trace
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    (workdir / "transfer").mkdir()
    (workdir / "transfer" / "results.json").write_text(json.dumps(
        {"neuron": {"index": 3, "sign": 1}, "features": {"state": "hidden", "all_layers": False}}))
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--prompt=The movie",
         "--length=4", "--temperature=0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = [float(v) for v in re.findall(r"title='([-0-9.]+)'",
                                          (workdir / "generate" / "heatmap.html").read_text())][:9]
    lm = load_trained(str(workdir))
    hidden, cell = (unit_trace(lm, "The movie", 3, state=s)[:9] for s in ("hidden", "cell"))
    np.testing.assert_allclose(shown, hidden, atol=2e-3)
    assert not np.allclose(shown, cell, atol=2e-3)


def test_a_damaged_transfer_results_file_is_a_note_not_a_traceback(sst_run, tmp_path):
    """A torn or emptied WORKDIR/transfer/results.json made every generate of the workdir
    (no --neuron either) a JSONDecodeError traceback; --neuron_polarity says it found none."""
    import shutil
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    (workdir / "transfer").mkdir()
    results = workdir / "transfer" / "results.json"
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--prompt=Hi",
         "--length=2", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    for damaged in ("", '{"neuron": {"ind', "[1, 2]"):
        results.write_text(damaged)
        proc = run()
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"note: {results} cannot be read (" in proc.stderr
    proc = run("--neuron=3", "--neuron_polarity")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "found no neuron of this LM" in proc.stderr.splitlines()[-1]


def test_a_second_call_leaves_no_stale_heatmap_and_records_its_settings(sst_run, tmp_path):
    import shutil
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--length=4", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run("--prompt=Hello", "--neuron=3", "--neuron_value=1").returncode == 0
    out = workdir / "generate"
    assert (out / "heatmap.png").exists() and (out / "heatmap.html").exists()
    proc = run("--prompt=Goodbye", "--seed=5")  # no unit to show: the old heatmap goes
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "heatmap.png").exists() and not (out / "heatmap.html").exists()
    record = json.loads((out / "samples.json").read_text())
    assert record["seed"] == 5 and record["length"] == 4 and record["neuron"] is None


def test_an_openai_models_heatmap_shows_the_framed_text_it_read(sst_run, tmp_path):
    """An imported OpenAI model's preprocessing gives bytes ("\\n " + prompt, UTF-8): the
    heatmap crashed on them after samples.json ('int' object has no attribute 'encode')."""
    import re
    import shutil
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    config = json.loads((workdir / "config.json").read_text())
    config["derived"]["preprocess"] = "openai"
    (workdir / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--prompt=Très bon",
         "--length=6", "--temperature=0", "--neuron=3", "--neuron_value=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (workdir / "generate" / "heatmap.html").read_text(encoding="utf-8")
    shown = "".join(re.findall(r"<span [^>]*>([^<]*)</span>", page))
    assert shown.startswith("\n Très bon")
    assert (workdir / "generate" / "heatmap.png").exists()


def test_the_transfers_neuron_is_held_in_its_state_and_a_stale_transfer_is_not_used(sst_run, tmp_path):
    """A transfer that read unit 3 of the hidden state: ``--neuron=3`` held unit 3 of the cell
    state (the model's default) while the heatmap took the hidden state's sign; and a transfer
    of the LM at another step (retrained since) gave the heatmap its unit silently."""
    import shutil

    from lmscale.generation import generate
    from lmscale.training.restore import load_trained
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    lm = load_trained(str(workdir))
    (workdir / "transfer").mkdir()
    results = {"neuron": {"index": 3, "sign": -1}, "lm": {"step": lm.step},
               "features": {"state": "hidden", "all_layers": False}}
    (workdir / "transfer" / "results.json").write_text(json.dumps(results))
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--prompt=The movie",
         "--length=12", "--temperature=0", *args], cwd=REPO, capture_output=True, text=True,
        timeout=600)
    proc = run("--neuron=3", "--neuron_value=0.9")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((workdir / "generate" / "samples.json").read_text())
    held = {s: generate(lm, "The movie", 12, temperature=0.0, neuron=3, neuron_value=0.9,
                        neuron_state=s)[0] for s in ("hidden", "cell")}
    assert held["hidden"] != held["cell"]
    assert record["samples"] == [held["hidden"]] and record["neuron_state"] == "hidden"
    assert run("--neuron=3", "--neuron_value=0.9", "--neuron_state=cell").returncode == 0
    assert json.loads((workdir / "generate" / "samples.json").read_text())["samples"] == [held["cell"]]
    # --neuron_polarity: the value times the unit's sign (-1 here), as sentiment-discovery's
    # generate.py signs --overwrite; a unit the transfer did not find is refused
    proc = run("--neuron=3", "--neuron_value=0.9", "--neuron_polarity")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((workdir / "generate" / "samples.json").read_text())
    assert record["neuron_value"] == -0.9 and record["neuron_polarity"] is True
    assert record["samples"] == generate(lm, "The movie", 12, temperature=0.0, neuron=3,
                                         neuron_value=-0.9, neuron_state="hidden")
    proc = run("--neuron=4", "--neuron_value=0.9", "--neuron_polarity")
    assert proc.returncode != 0 and "--neuron_polarity takes the sign lmscale.transfer found for " \
        "--neuron=4" in proc.stderr and "found unit 3 of the last layer (hidden state)" in proc.stderr, \
        proc.stderr[-2000:]
    # the held run's HTML heatmap says it traces the sample read back unheld (the PNG did)
    assert "as the LM reads the sample back, unheld" in (
        workdir / "generate" / "heatmap.html").read_text(encoding="utf-8")
    # the Python API signs the value too (it had no neuron_polarity: a TypeError)
    import lmscale
    api_lm = lmscale.load_lm(str(workdir))
    assert api_lm.generate("The movie", 12, temperature=0.0, neuron=3, neuron_value=0.9,
                           neuron_polarity=True) == record["samples"]
    from lmscale.data.errors import DataError
    with pytest.raises(DataError, match="neuron_polarity takes the sign .* found unit 3"):
        api_lm.generate("The movie", 12, neuron=4, neuron_value=0.9, neuron_polarity=True)

    results["lm"]["step"] = lm.step + 100  # the LM was retrained after the transfer
    (workdir / "transfer" / "results.json").write_text(json.dumps(results))
    proc = run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"is of the LM at step {lm.step + 100}, not this one's {lm.step}" in proc.stderr
    assert not (workdir / "generate" / "heatmap.png").exists()  # no unit of this LM known


def test_neuron_flags_without_their_unit_and_a_multilabel_transfer(sst_run, tmp_path):
    """--neuron_value and --neuron_state without --neuron were ignored (samples identical,
    samples.json recording the value); a bad --heatmap_unit was said after sampling; a
    multi-label transfer in WORKDIR/transfer (no neuron) made every call a KeyError."""
    import shutil
    run = lambda workdir, *flags: subprocess.run(
        [sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}", "--length=4",
         "--temperature=0", f"--output={tmp_path / 'out'}", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    for flags, message in ((["--neuron_value=5"], "--neuron_value holds the unit --neuron names"),
                           (["--neuron_state=hidden"], "--neuron_state is the state of --neuron"),
                           (["--neuron_polarity"], "--neuron_polarity signs the value --neuron"),
                           (["--heatmap_unit=999"], "--heatmap_unit=999 is outside the last "
                                                    "layer's 32 units (0..31)")):
        proc = run(sst_run, *flags)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "out" / "samples.json").exists()  # nothing sampled first
    workdir = tmp_path / "lm"
    shutil.copytree(sst_run, workdir, ignore=shutil.ignore_patterns("transfer", "generate"))
    (workdir / "transfer").mkdir()
    (workdir / "transfer" / "results.json").write_text(json.dumps(
        {"multilabel": True, "labels": ["a", "b"], "features": {"state": "cell"}}))
    proc = run(workdir, "--heatmap_unit=2", "--neuron_state=hidden")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "heatmap.png").exists()


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, str]:
    """Workdirs of a QRNN and a transformer trained for 2 steps (kind -> workdir)."""
    from lmscale.training.loop import train
    from tests.conftest import TINY_TRANSFORMER, tiny_config, write_corpus
    root = tmp_path_factory.mktemp("gen_runs")
    corpus = write_corpus(root / "corpus")
    runs = {}
    for kind, overrides in (("qrnn", {"model.kind": "qrnn"}), ("transformer", TINY_TRANSFORMER)):
        runs[kind] = str(root / kind)
        train(tiny_config(corpus, **overrides, **{"train.steps": 2, "checkpoint.every": 2}),
              runs[kind])
    return runs


def _generate(workdir: str, *flags: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmscale.generate", f"--workdir={workdir}",
                           "--length=5", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_qrnns_hidden_state_is_refused_before_sampling(tiny_runs, tmp_path):
    """A QRNN carries only c: --neuron_state=hidden was a 13-frame ValueError traceback."""
    proc = _generate(tiny_runs["qrnn"], "--neuron=1", "--neuron_state=hidden",
                     f"--output={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: neuron_state must be one of ['cell'] for a qrnn model (the states a neuron can "
        "be held in), got 'hidden'"], proc.stderr[-2000:]
    assert not (tmp_path / "samples.json").exists()
    proc = _generate(tiny_runs["qrnn"], "--neuron=1", "--neuron_state=cell", f"--output={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_heatmap_state_the_model_lacks_is_refused_before_sampling(tiny_runs, tmp_path):
    """A transformer's --neuron_state=cell for the heatmap was said after sampling (and
    writing samples.json), the samples never printed."""
    proc = _generate(tiny_runs["transformer"], "--neuron_state=cell", "--heatmap_unit=1",
                     f"--output={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: --neuron_state must be one of ['hidden'] for a transformer model, got 'cell'"
    ], proc.stderr[-2000:]
    assert not (tmp_path / "samples.json").exists()


def test_a_transformers_default_length_stays_within_its_trained_positions(tiny_runs, tmp_path):
    """max_len 32 trained at seq_len 16: the default was max_len // 2 = 16 tokens after the
    prompt, reading positions training never reached."""
    proc = subprocess.run([sys.executable, "-m", "lmscale.generate",
                           f"--workdir={tiny_runs['transformer']}", f"--output={tmp_path}",
                           "--temperature=0"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "samples.json").read_text())["length"] == 8
    assert "never trained" not in proc.stderr
    proc = _generate(tiny_runs["transformer"], "--length=20", f"--output={tmp_path}")
    assert proc.returncode == 0 and "the prompt's 1 token and the 20 generated run past the 16 " \
        "positions this LM was trained at" in proc.stderr, proc.stderr[-2000:]


def test_a_prompt_that_is_not_utf8_is_refused_in_one_line(tiny_runs, tmp_path):
    """A byte the terminal's encoding cannot decode (Python's surrogate escape) was a raw
    UnicodeEncodeError from the tokenizer."""
    proc = _generate(tiny_runs["qrnn"], b"--prompt=ab\xffc", f"--output={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: the prompt is not valid UTF-8 at character 2: byte 0xff, which the terminal's "
        "encoding could not decode"], proc.stderr[-2000:]


def test_ctrl_c_stops_a_long_generation_in_one_line(tiny_runs, tmp_path):
    """The progress bar shows a long generation (on stderr); Ctrl-C stops it within a window
    with one line and exit 130, writing nothing (it waited for every token, then printed a
    traceback through JAX's frames)."""
    import fcntl
    import pty
    import struct
    import termios
    terminal, stderr = pty.openpty()  # the bar is drawn on a terminal only, here 24 x 80
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "lmscale.generate",
                             f"--workdir={tiny_runs['qrnn']}", "--length=2000000",
                             f"--output={tmp_path}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=stderr)
    os.close(stderr)
    try:
        seen = b""
        while not re.search(rb"\d+/2000000 \[", seen):  # the bar: sampling is under way
            chunk = os.read(terminal, 4096)
            assert chunk, seen.decode(errors="replace")[-2000:]  # ended without a bar
            seen += chunk
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        waited = time.perf_counter() - sent
        err = b""
        while True:  # the rest of stderr (a pty's read fails with EIO once the writer is gone)
            try:
                chunk = os.read(terminal, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        proc.kill()
        os.close(terminal)
    err = err.decode().replace("\r\n", "\n")
    assert proc.returncode == 130, (seen.decode(errors="replace") + err)[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in err, err
    # within a window and the exit (0.3-1.9 s here under load): 2,000,000 tokens take ~40 s
    assert waited < 15, waited
    assert not (tmp_path / "samples.json").exists()


def test_the_heatmap_of_a_long_sample_shows_its_first_characters(tiny_runs, tmp_path):
    """A heatmap drew every character of every sample: 300,000 tokens x 2 samples ran for 11
    minutes in 13 GB without finishing the PNG. It shows each sample's first HEATMAP_CHARS
    characters (said in a note); the samples themselves are whole."""
    from lmscale.generate import HEATMAP_CHARS
    length = HEATMAP_CHARS + 500
    proc = _generate(tiny_runs["qrnn"], f"--length={length}", "--heatmap_unit=1",
                     "--prompt=ab", f"--output={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"note: the heatmap shows the first {HEATMAP_CHARS} characters of each sample" \
        in proc.stderr
    assert len(json.loads((tmp_path / "samples.json").read_text())["samples"][0]) > HEATMAP_CHARS
    page = (tmp_path / "heatmap.html").read_text()
    assert page.count("<span title=") == HEATMAP_CHARS
    assert (tmp_path / "heatmap.png").exists()


def test_a_non_ascii_sample_prints_on_an_ascii_stdout(tiny_runs, tmp_path):
    """Under PYTHONIOENCODING=ascii (or LC_ALL=C with PYTHONUTF8=0) printing a sample with
    "é" was a UnicodeEncodeError traceback and exit 1, its samples file already written: the
    characters are escaped on the terminal, the file keeps them."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "lmscale.generate",
                           f"--workdir={tiny_runs['qrnn']}", "--length=3", "--prompt=caf\u00e9 ",
                           f"--output={tmp_path}"], cwd=REPO, capture_output=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"caf\\xe9 " in proc.stdout
    saved = json.loads((tmp_path / "samples.json").read_text(encoding="utf-8"))
    assert "caf\u00e9 " in json.dumps(saved, ensure_ascii=False)


def test_a_link_out_of_the_output_folder_is_refused_not_written_through(tiny_runs, tmp_path):
    """WORKDIR/generate/samples.json -> ~/.bashrc in a run folder from elsewhere: the samples
    (the prompt and the model's text, "$(...)" run by a shell) replaced the user's file."""
    outside, out = tmp_path / "bashrc", tmp_path / "out"
    outside.write_text("# the user's own\n")
    out.mkdir()
    os.symlink(outside, out / "samples.json")
    proc = _generate(tiny_runs["qrnn"], f"--output={out}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {out}/samples.json is a symbolic link to {outside}, outside {out}: writing it "
        f"would write that file (a run folder from elsewhere may carry such links); remove the "
        f"link, or copy the file in its place"], proc.stderr[-2000:]
    assert outside.read_text() == "# the user's own\n"


def test_links_in_the_output_folders_subfolders_are_not_refused(tiny_runs, tmp_path):
    """--output=. in a project beside its .venv (bin/python -> /usr/bin/python3, a link out)
    was refused naming .venv/bin/python, a file generate never writes, after a walk of the
    whole tree: only the folder's own files are the tool's."""
    outside, out = tmp_path / "python3", tmp_path / "project"
    outside.write_text("")
    (out / ".venv" / "bin").mkdir(parents=True)
    os.symlink(outside, out / ".venv" / "bin" / "python")
    proc = _generate(tiny_runs["qrnn"], f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "samples.json").is_file() and outside.read_text() == ""


@pytest.mark.parametrize("tool", ["generate", "eval"])
def test_a_reader_that_left_is_no_traceback(tiny_runs, tmp_path, tool):
    """``lmscale.generate ... | head -c 10``, ``lmscale.eval ... | true``: the result printed
    after the work met a closed pipe, a BrokenPipeError traceback and exit status 1 (the
    samples' files written); ``classify --output=-`` already ended its output quietly."""
    flags = ["--length=5", f"--output={tmp_path}"] if tool == "generate" else []
    # stdout block-buffered, as a user's is (PYTHONUNBUFFERED=1 let the print itself fail):
    # the result is still in the buffer, which the interpreter's flush at exit tried again
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-m", f"lmscale.{tool}",
                             f"--workdir={tiny_runs['qrnn']}", *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader left before the result: `| true`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0 and "Traceback" not in err, err[-2000:]
