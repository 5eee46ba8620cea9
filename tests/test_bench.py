"""lmscale.bench: the analytic FLOPs formula vs XLA, and one real (tiny) benchmark run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmscale.config import default_config
from lmscale.data.errors import DataError
from lmscale.models.recurrent import scan_options
from lmscale.training import bench
from tests.conftest import fill_disk, meminfo_file

REPO = Path(__file__).resolve().parents[1]


def small_config(kind: str, hidden: int = 512, batch: int = 32, seq: int = 8, **model):
    c = default_config()
    c.model.kind, c.model.hidden, c.model.embed = kind, hidden, 16
    c.model.update(model)
    c.train.batch_size, c.train.seq_len = batch, seq
    c.lock()
    return c


def model_loops(hlo: str) -> list[str]:
    """The compiled program's while loops, less XLA's own loop of a scatter (the gradient of the
    loss's and the embedding's gathers: XLA:CPU without its fusion emitters, the tests' flags,
    adds one row per iteration, no FLOPs worth counting)."""
    return [line for line in hlo.splitlines() if " while(" in line and "scatter" not in line]


@pytest.mark.parametrize("kind,grad", [
    ("mlstm", "custom"),
    pytest.param("lstm", "custom", marks=pytest.mark.slow),
    pytest.param("mlstm", "autodiff", marks=pytest.mark.slow),
    pytest.param("lstm", "autodiff", marks=pytest.mark.slow)])
def test_flops_formula_matches_xla_cost_of_unrolled_step(kind, grad):
    """3 x forward FLOPs per token x tokens is within 10 % of XLA's count of the whole step.

    XLA's cost analysis counts a while-loop body once, so the time loops are fully unrolled
    (scan unroll = seq) for this check; the rest of the XLA count is elementwise work
    (gates, softmax, Adam): it grows like H per token against H^2 for the matmuls, and Adam
    like params per step, so H = 512 and 256 tokens keep it to a few percent.
    """
    c = small_config(kind)
    with scan_options(grad=grad, unroll=c.train.seq_len):
        compiled, *_ = bench.compile_step(c)
    assert not model_loops(compiled.as_text())  # really unrolled: every step counted
    analytic = bench.train_flops_per_token(c.model, bench.BYTE_VOCAB, c.train.seq_len) \
        * c.train.batch_size * c.train.seq_len
    xla = bench.xla_flops(compiled)
    assert abs(xla - analytic) / analytic < 0.10, (xla, analytic)


@pytest.mark.parametrize("kind,grad", [
    ("mlstm", "custom"),
    pytest.param("lstm", "custom", marks=pytest.mark.slow),
    ("mlstm", "autodiff"),
    pytest.param("lstm", "autodiff", marks=pytest.mark.slow),
    ("lstm-stacked", "custom"),
    pytest.param("mlstm-stacked", "custom", marks=pytest.mark.slow)])
def test_flops_with_recompute_match_xla_cost_of_unrolled_remat_step(kind, grad):
    """With remat, XLA's count of the unrolled step is within 10 % of the model's 3 x forward
    plus the layers' forward again (``recompute_flops_per_token``), and over 10 % above the
    model's alone: the recomputation is really executed, on the custom backward's path (its
    segments' loops unrolled too) and on autodiff's (``jax.checkpoint``-ed segments)."""
    # "-stacked": 3 layers as wide as their input (embed = hidden): the input projections, not
    # recomputed, are half the layers' forward (counting them read 11-13 % above XLA's count)
    stacked = kind.endswith("-stacked")
    c = small_config(kind.removesuffix("-stacked"), remat="segments", remat_steps=4,
                     **(dict(embed=512, layers=3) if stacked else {}))  # 2 segments of T = 8
    with scan_options(grad=grad, unroll=c.train.seq_len):
        compiled, *_ = bench.compile_step(c)
    assert not model_loops(compiled.as_text())
    tokens = c.train.batch_size * c.train.seq_len
    model = bench.train_flops_per_token(c.model, bench.BYTE_VOCAB, c.train.seq_len) * tokens
    again = bench.recompute_flops_per_token(c.model, c.train.seq_len) * tokens
    xla = bench.xla_flops(compiled)
    assert abs(xla - (model + again)) / (model + again) < 0.10, (xla, model, again)
    assert xla > 1.10 * model


def test_bench_cli_writes_a_record(tmp_path):
    """A real run of the CLI on a tiny model: table on stdout, one JSON line appended."""
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
           "--config.model.hidden=32", "--config.train.batch_size=4", "--config.train.seq_len=8",
           "--steps=3", "--warmup=1", "--matmul_n=256", f"--out={out}", "--label=test", "--loop",
           f"--workdir={tmp_path / 'work'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "| mlstm hidden 32 embed 64 layers 1 | 4 x 8 | float32 | custom u1 |" in p.stdout
    (line,) = out.read_text().splitlines()
    r = json.loads(line)
    assert r["label"] == "test" and r["tokens_per_step"] == 32 and len(r["step_s_all"]) == 3
    assert r["chars_per_s"] == pytest.approx(32 / r["step_s"]) and r["bytes_per_token"] == 1.0
    assert r["flop_per_s"] == pytest.approx(r["train_flops_per_token"] * 32 / r["step_s"])
    assert r["of_matmul_rate"] == pytest.approx(r["flop_per_s"] / r["matmul"]["flop_per_s"])
    # The peak is measured on every device the step ran on (one device's against 8 GPUs'
    # step would have read 8x too high).
    assert r["matmul"]["devices"] == r["host"]["devices"]
    assert r["memory_bytes"]["peak"] > 0 and r["commit"]
    # Models that --grad/--unroll do not apply to show neither in the table: the kinds whose
    # layers are not the recurrences of models/recurrent.py.
    from lmscale.models.lm import LAYER_TYPES
    from lmscale.models.recurrent import SCANNED_KINDS, LSTMLayer, MLSTMLayer
    assert {k for k, c in LAYER_TYPES.items() if c in (LSTMLayer, MLSTMLayer)} == set(SCANNED_KINDS)
    for kind in ("transformer", "qrnn"):
        row = bench.format_table([{**r, "kind": kind}]).splitlines()[-1]
        assert row.split(" | ")[3] == "-"
    assert r["remat"] == "none" and "remat_steps" not in r
    assert r["recompute_flops_per_token"] == 0 and r["hardware_flop_per_s"] == r["flop_per_s"]
    remat = {**r, "remat": "segments", "remat_steps": 16, "of_matmul_rate": 0.5,
             "recompute_flops_per_token": 1, "hardware_of_matmul_rate": 0.7}
    cells = bench.format_table([remat]).splitlines()[-1].split(" | ")
    assert cells[3] == "custom u1 remat 16" and cells[9] == "50 % (70 % with recompute)"
    loop = r["loop"]  # the real loop on the built-in corpus, its second window of 10 steps
    assert loop["steps"] == 10 and loop["tokens_per_s"] > 0
    assert loop["of_step"] == pytest.approx(loop["chars_per_s"] / r["chars_per_s"])
    assert r["train_flops_per_token"] == 3 * 2 * (64 * 128 + 64 * 32 + 32 * 32 + 32 * 128 + 32 * 257)
    assert r["vocab_size"] == 257
    # The tokenizer's vocabulary is the one timed (it was always the bytes' 257).
    sp = tmp_path / "sp.jsonl"
    p = subprocess.run([*cmd[:9], "--matmul_n=64", f"--out={sp}", "--config.data.tokenizer=sentencepiece",
                        "--config.data.vocab_size=1000"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(sp.read_text())
    assert r["vocab_size"] == 1001
    # A subword token's bytes are unknown without text: tokens/s, and no chars/s made up.
    assert r["chars_per_s"] is None and r["bytes_per_token"] is None
    assert r["tokens_per_s"] == pytest.approx(32 / r["step_s"])
    assert " k tokens | " in p.stdout and "| chars/s | train MFLOP/token |" in p.stdout
    assert r["train_flops_per_token"] == 3 * 2 * (64 * 128 + 64 * 32 + 32 * 32 + 32 * 128 + 32 * 1001)


def test_the_pipeline_reads_the_per_device_batch_times_the_devices(tmp_path):
    """--pipeline timed batches of train.batch_size rows with train.per_device_batch_size set:
    the step read 3 x 2 devices = 6 rows, the pipeline the config's default 128."""
    out = tmp_path / "r.jsonl"
    p = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                        "--config.model.hidden=16", "--config.train.per_device_batch_size=3",
                        "--config.parallel.cpu_devices=2", "--config.train.seq_len=8",
                        "--steps=1", "--warmup=0", "--matmul_n=64", "--pipeline",
                        f"--workdir={tmp_path / 'work'}", f"--out={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["tokens_per_step"] == 6 * 8 and r["pipeline"]["batch_size"] == 6


def test_bad_override_is_one_line_error():
    p = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                        "--config.model.hiden=32", "--out="], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("error: unknown config key")


@pytest.mark.parametrize("data, said", [
    ({"sp_model": "missing.model"}, "SentencePiece model missing.model does not exist"),
    ({"vocab_size": 30}, "data.vocab_size=30 is too small"),
])
def test_a_sentencepiece_vocabulary_error_gives_no_word_advice(data, said):
    """Every vocabulary error was told to set data.word_vocab_size, a word tokenizer's
    setting, which a SentencePiece model's size does not read."""
    config = small_config("mlstm", hidden=32)
    with config.unlocked():
        config.data.tokenizer = "sentencepiece"
        config.data.update(data)
    with pytest.raises(DataError, match=said) as e:
        bench.run_bench(config, steps=1, warmup=0)
    assert "word_vocab_size" not in str(e.value)


def test_a_word_tokenizer_without_a_size_is_told_to_set_it_once():
    config = small_config("mlstm", hidden=32)
    with config.unlocked():
        config.data.tokenizer = "word"
    with pytest.raises(DataError, match=r"or set data.word_vocab_size$") as e:
        bench.run_bench(config, steps=1, warmup=0)
    assert str(e.value).count("word_vocab_size") == 1  # bench said it again


def test_negative_matmul_n_is_one_line_error_before_timing(tmp_path):
    """--matmul_n=-5 was numpy's "negative dimensions" traceback after the timed steps."""
    p = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                        "--config.model.hidden=1000000", "--matmul_n=-5", f"--out={tmp_path / 'r'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == (
        "error: flag --matmul_n=-5: -5 is not a non-negative integer"), p.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def test_an_out_that_cannot_be_written_is_one_line_error_before_timing(tmp_path):
    """--out in a folder that cannot be made (a file in its way) was FileExistsError's traceback
    after the timed steps; --out naming a folder, the whole usage text before the line."""
    (tmp_path / "a_file").write_text("x")
    for out, said in ((tmp_path / "a_file" / "r.jsonl", f"error: cannot write in {tmp_path}/"
                       f"a_file ("), (tmp_path, f"error: --out={tmp_path} is a folder; ")):
        p = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                            "--config.model.hidden=1000000", f"--out={out}"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.startswith(said), p.stderr[-2000:]
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]


def test_no_warmup_and_an_autodiff_record_names_no_loops(tmp_path):
    """--warmup=0 (allowed) raised UnboundLocalError after compiling; an autodiff step's record
    named the hand-written backward's layout and factors it never ran ("batch", "float32")."""
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
           "--config.model.hidden=16", "--config.model.embed=8", "--config.train.batch_size=4",
           "--config.train.seq_len=8", "--steps=2", "--warmup=0", "--matmul_n=128", f"--out={out}",
           "--grad=autodiff", "--layout=batch", "--factors=float32"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["grad"] == "autodiff" and r["layout"] is None and r["factors"] is None


def test_record_of_a_kind_without_the_recurrence_says_autodiff():
    """A transformer's backward is autodiff whatever --grad says (its record said "custom")."""
    r = bench.run_bench(small_config("transformer", hidden=16, batch=2, seq=8, layers=1,
                                     heads=2, max_len=8), steps=1, warmup=0, matmul_n=64)
    assert r["grad"] == "autodiff" and r["layout"] is None and r["factors"] is None


def test_grad_accum_record_counts_rows_not_segments():
    """With train.grad_accum_steps = k a row holds k segments: the record's batch is the rows
    (the config's batch), not rows x k, and tokens per step are rows x k x seq_len."""
    c = small_config("mlstm", hidden=16, batch=4, seq=8)
    c.unlock()
    c.train.grad_accum_steps = 2
    c.lock()
    r = bench.run_bench(c, steps=1, warmup=0, matmul_n=64)
    assert r["batch"] == 4 and r["grad_accum_steps"] == 2
    assert r["tokens_per_step"] == 4 * 2 * 8
    assert "| 4 x 2x8 |" in bench.format_table([r])


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_commit_of_an_installed_lmscale_is_not_the_surrounding_projects(tmp_path, monkeypatch):
    """lmscale installed (not editable) into a virtualenv inside the user's own repository, its
    ``.venv`` ignored there: the records named the user's project's commit as lmscale's."""
    import importlib.util
    project = tmp_path / "project"
    installed = project / ".venv" / "lib" / "site-packages" / "lmscale" / "training"
    installed.mkdir(parents=True)
    (installed / "bench.py").write_text(Path(bench.__file__).read_text())
    (project / ".gitignore").write_text(".venv\n")
    _git(project, "init", "-q")
    _git(project, "add", ".gitignore")
    _git(project, "-c", "user.email=u@example.com", "-c", "user.name=u", "commit", "-q", "-m", "x")
    theirs = _git(project, "rev-parse", "--short", "HEAD")
    spec = importlib.util.spec_from_file_location("installed_bench", installed / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "installed_commit", lambda: "", raising=False)
    assert module.git_commit() == ""
    assert not module.git_commit().startswith(theirs)
    # lmscale's own checkout (this one, where this file is tracked) still names its commit.
    if (REPO / ".git").exists():
        assert bench.git_commit().startswith(_git(REPO, "rev-parse", "--short", "HEAD"))


def test_installed_commit_reads_pips_record_of_a_git_install(monkeypatch):
    from importlib import metadata

    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    sha = "0123456789abcdef0123456789abcdef01234567"
    record = {"url": "https://github.com/x/lmscale", "vcs_info": {"vcs": "git", "commit_id": sha}}
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist(json.dumps(record)))
    assert bench.installed_commit() == sha[:7]
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist('{"url": "file:///x", "dir_info": {}}'))
    assert bench.installed_commit() == ""
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist(None))
    assert bench.installed_commit() == ""


def test_out_that_is_a_folder_is_refused_before_the_bench(tmp_path):
    """--out naming a folder: the whole bench ran, then IsADirectoryError's traceback."""
    proc = subprocess.run([sys.executable, "-m", "lmscale.bench", "--config=configs/quickstart.py",
                           f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"--out={tmp_path} is a folder" in proc.stderr


def test_a_step_too_large_for_the_host_is_refused_before_it_is_timed(tmp_path, monkeypatch):
    """lmscale.bench of the paper's global batch (32768 x 256) on a CPU host was ended by the
    kernel's OOM killer, a bare "Killed" (its 8.6 GB of logits): the step is checked as the
    training loop checks it, one error before it runs."""
    from lmscale.config import ConfigError
    from lmscale.training import fits
    # 2 MiB: the state fits, the step not
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 2048))
    with pytest.raises(ConfigError, match=r"the training step needs .* is available"):
        bench.time_step(small_config("mlstm", hidden=32, batch=64, seq=64), steps=1, warmup=0)


def test_a_state_too_large_for_the_host_is_refused_before_it_is_made(tmp_path, monkeypatch):
    """The model's parameters and optimizer moments are checked before they are allocated, as
    the training loop checks them: a GPU config's state was the OOM killer's "Killed"."""
    from lmscale.config import ConfigError
    from lmscale.training import fits
    monkeypatch.setattr(fits, "MEMINFO", meminfo_file(tmp_path, 16))  # 16 KiB: not the state
    with pytest.raises(ConfigError, match=r"the model's training state .* is available"):
        bench.time_step(small_config("mlstm", hidden=32), steps=1, warmup=0)


def test_a_record_appended_on_a_full_disk_is_whole_or_absent(small_disk):
    """A full disk mid-line left a torn record without its newline (the next run's record
    joined it: both unreadable), and the OSError named no file (a traceback in lmscale.bench)."""
    import errno
    out = small_disk / "results.jsonl"
    out.write_text('{"a": 1}\n' + "x" * 4000 + "\n")  # its last page has ~86 bytes left
    before = out.read_bytes()
    fill_disk(small_disk)  # the rest of the disk
    with pytest.raises(OSError) as e:
        bench.append_jsonl({"text": "y" * 1000}, str(out))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert out.read_bytes() == before
